"""MAXIM-1S (Tu et al., "MAXIM: Multi-Axis MLP for Image Processing", CVPR 2022), written from the paper.

A single-stage MAXIM: a U-Net of multi-axis gated-MLP blocks. Every block splits its channels into
two heads: a *block* head that mixes the tokens inside each non-overlapping ``b x b`` block (local)
and a *grid* head that mixes tokens across a fixed ``g x g`` grid laid over the whole image (global,
dilated), each with a gMLP spatial gating unit whose weights depend only on ``b`` / ``g`` (so any
image size works). The blocks work channels-last inside (as the authors' JAX code does) and take and
return ``B x C x H x W`` maps.

- Input: the image and its 1/2, 1/4 (... ) versions (bilinear): each level starts from its own scale.
- Encoder level i (``encoders[i]``, scale 1/2**i, ``width * 2**i`` channels): 1x1 conv of
  concat(image features, previous level's downsampled output) -> ``num_groups`` x (multi-axis gMLP
  layer + residual channel-attention block) + long residual -> returns ``(downsampled, skip)``
  (4x4 stride-2 conv). The downsampled outputs are at 1/2, 1/4, 1/8: the ConStyle hook points.
- Bottleneck (``bottleneck``, 1/2**depth): ``num_bottleneck_blocks`` such blocks.
- Skips (``skip_gates[i]``): every level's skip resized to level i (``UpSampleRatio``: bilinear
  resize + 1x1 conv) and concatenated, then a cross-gating block with the bottleneck feature
  resized to level i: each side gates the other through multi-axis spatial weights.
- Decoder level i (``decoders``, coarsest first): 2x2 transposed conv from the level below, concat
  with every gated skip resized to level i, 1x1 conv, the same blocks; ``ending``: 3x3 conv + input.

Any input size: padded at the bottom/right to ``size_multiple`` (each level's size must be a multiple
of its block and grid sizes) and cropped back.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import LayerNorm2d
from torch import Tensor

from ..core.init_args import remember_init_args
from ..core.padding import check_input, check_pad_mode, pad_to_multiple
from ..errors import ConStyleError

__all__ = ["MAXIM", "MultiAxisGmlpLayer", "RCAB", "CrossGatingBlock"]

Size2 = Tuple[int, int]


def _pair(v) -> Size2:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ConStyleError(f"MAXIM: expected a size or an (h, w) pair, got {v}")
    return v


def halve_antialiased(x: Tensor) -> Tensor:
    """B x C x H x W -> B x C x floor(H/2) x floor(W/2): ``F.interpolate(x, scale_factor=0.5,
    mode="bilinear", antialias=True)`` written as convolutions, so that it exports to ONNX.

    At scale 1/2 the antialiased bilinear filter is the separable kernel [1, 3, 3, 1] / 8 at stride 2;
    at the borders the taps outside the image are dropped and the rest renormalised, which is the
    zero-padded convolution divided by the same convolution of a map of ones.
    """
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (taps[:, None] * taps[None, :])[None, None]
    b, c, h, w = x.shape
    num = F.conv2d(F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1)), kernel, stride=2)
    den = F.conv2d(F.pad(torch.ones_like(x[:1, :1]), (1, 1, 1, 1)), kernel, stride=2)
    return (num / den).reshape(b, c, num.shape[-2], num.shape[-1])


class _AxisMix(nn.Module):
    """Dense layer over the tokens of each block (``mode="block"``, fixed ``b x b`` windows) or of the
    fixed ``g x g`` grid (``mode="grid"``, tokens ``H/g`` apart). Channels-last: B x H x W x C."""

    def __init__(self, size: Size2, mode: str) -> None:
        super().__init__()
        self.size, self.mode = size, mode
        self.dense = nn.Linear(size[0] * size[1], size[0] * size[1])

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.size
        if self.mode == "block":  # mixing inside each a x b block
            pattern, axes = "n (gh fh) (gw fw) c -> n gh gw c (fh fw)", dict(fh=a, fw=b)
            back = "n gh gw c (fh fw) -> n (gh fh) (gw fw) c"
        else:  # mixing across the a x b grid: tokens at the same place in every cell
            pattern, axes = "n (gh fh) (gw fw) c -> n fh fw c (gh gw)", dict(gh=a, gw=b)
            back = "n fh fw c (gh gw) -> n (gh fh) (gw fw) c"
        h, w = x.shape[1:3]
        y = self.dense(rearrange(x, pattern, **axes))
        if self.mode == "block":
            return rearrange(y, back, fh=a, fw=b)
        return rearrange(y, back, gh=a, gw=b)


class _GatedAxisMLP(nn.Module):
    """gMLP on one axis (block or grid): LN -> Linear(c, 2c) -> GELU -> spatial gating unit (one half,
    normalised and token-mixed, gates the other: ``u * (mix(v) + 1)``) -> Linear(c, c), residual."""

    def __init__(self, c: int, size: Size2, mode: str, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc_in = nn.Linear(c, 2 * c)
        self.gate_norm = nn.LayerNorm(c)
        self.mix = _AxisMix(size, mode)
        self.fc_out = nn.Linear(c, c)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        u, v = F.gelu(self.fc_in(self.norm(x))).chunk(2, dim=-1)
        v = self.mix(self.gate_norm(v))
        return x + self.drop(self.fc_out(u * (v + 1.0)))


class MultiAxisGmlpLayer(nn.Module):
    """Residual split-head multi-axis gMLP: B x C x H x W -> B x C x H x W (channels-last inside).

    LN -> Linear(c, 2c) -> GELU -> split: one head through the grid gMLP, the other through the block
    gMLP -> concat -> Linear(2c, c) -> + input.
    """

    def __init__(self, c: int, block: Size2, grid: Size2, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc_in = nn.Linear(c, 2 * c)
        self.grid = _GatedAxisMLP(c, grid, "grid", drop)
        self.block = _GatedAxisMLP(c, block, "block", drop)
        self.fc_out = nn.Linear(2 * c, c)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        y = x.permute(0, 2, 3, 1)
        u, v = F.gelu(self.fc_in(self.norm(y))).chunk(2, dim=-1)
        y = y + self.drop(self.fc_out(torch.cat([self.grid(u), self.block(v)], dim=-1)))
        return y.permute(0, 3, 1, 2)


class RCAB(nn.Module):
    """Residual channel-attention block: LN2d -> 3x3 conv -> LeakyReLU(0.2) -> 3x3 conv -> channel
    attention (global pool, 1x1 reduce, ReLU, 1x1, sigmoid, scale) -> + input. B x C x H x W."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.norm = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        hidden = max(1, c // reduction)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(hidden, c, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(self.norm(x)), 0.2))
        return x + y * self.attention(y)


class _MultiAxisBlocks(nn.Module):
    """1x1 conv (cin -> c), then ``groups`` x (multi-axis gMLP layer + RCAB), plus a long residual."""

    def __init__(self, cin: int, c: int, block: Size2, grid: Size2, groups: int, reduction: int,
                 drop: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, c, 1)
        self.body = nn.Sequential(*[m for _ in range(groups)
                                    for m in (MultiAxisGmlpLayer(c, block, grid, drop), RCAB(c, reduction))])

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return x + self.body(x)


class EncoderBlock(nn.Module):
    """Encoder level: blocks on concat(x, skip), then ``(downsampled, skip)`` (4x4 stride-2 conv)."""

    def __init__(self, cin: int, c: int, block: Size2, grid: Size2, groups: int, reduction: int,
                 drop: float) -> None:
        super().__init__()
        self.blocks = _MultiAxisBlocks(cin, c, block, grid, groups, reduction, drop)
        self.down = nn.Conv2d(c, c, 4, stride=2, padding=1)

    def forward(self, x: Tensor, skip: Tensor = None) -> Tuple[Tensor, Tensor]:
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.blocks(x)
        return self.down(x), x


class DecoderBlock(nn.Module):
    """Decoder level: 2x2 transposed conv (x2), concat the bridge, blocks. B x cin x h x w -> B x c x 2h x 2w."""

    def __init__(self, cin: int, cbridge: int, c: int, block: Size2, grid: Size2, groups: int, reduction: int,
                 drop: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, c, 2, stride=2)
        self.blocks = _MultiAxisBlocks(c + cbridge, c, block, grid, groups, reduction, drop)

    def forward(self, x: Tensor, bridge: Tensor) -> Tensor:
        return self.blocks(torch.cat([self.up(x), bridge], dim=1))


class UpSampleRatio(nn.Module):
    """Resize to ``size`` (bilinear, up or down), then a 1x1 conv to ``cout`` channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, size: Size2) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(x)


class _SpatialGatingWeights(nn.Module):
    """Multi-axis spatial weights (channels-last): LN -> Linear(c, 2c) -> GELU -> grid mix | block mix
    -> concat -> Linear(2c, c)."""

    def __init__(self, c: int, block: Size2, grid: Size2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc_in = nn.Linear(c, 2 * c)
        self.grid = _AxisMix(grid, "grid")
        self.block = _AxisMix(block, "block")
        self.fc_out = nn.Linear(2 * c, c)

    def forward(self, x: Tensor) -> Tensor:
        u, v = F.gelu(self.fc_in(self.norm(x))).chunk(2, dim=-1)
        return self.fc_out(torch.cat([self.grid(u), self.block(v)], dim=-1))


class CrossGatingBlock(nn.Module):
    """Cross-gating block: two inputs gate each other through multi-axis spatial weights.

    x: B x cx x H x W, y: B x cy x H x W -> (x', y'), both B x c x H x W.
    """

    def __init__(self, cx: int, cy: int, c: int, block: Size2, grid: Size2, drop: float = 0.0) -> None:
        super().__init__()
        self.proj_x, self.proj_y = nn.Conv2d(cx, c, 1), nn.Conv2d(cy, c, 1)
        self.norm_x, self.norm_y = nn.LayerNorm(c), nn.LayerNorm(c)
        self.fc_x, self.fc_y = nn.Linear(c, c), nn.Linear(c, c)
        self.weights_x = _SpatialGatingWeights(c, block, grid)
        self.weights_y = _SpatialGatingWeights(c, block, grid)
        self.out_x, self.out_y = nn.Linear(c, c), nn.Linear(c, c)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.proj_x(x).permute(0, 2, 3, 1)
        y = self.proj_y(y).permute(0, 2, 3, 1)
        gx = self.weights_x(F.gelu(self.fc_x(self.norm_x(x))))
        gy = self.weights_y(F.gelu(self.fc_y(self.norm_y(y))))
        y_out = y + self.drop(self.out_y(y * gx))
        x_out = x + y_out + self.drop(self.out_x(x * gy))
        return x_out.permute(0, 3, 1, 2), y_out.permute(0, 3, 1, 2)


@remember_init_args
class MAXIM(nn.Module):
    """MAXIM-1S: B x img_channel x H x W -> B x img_channel x H x W, for any H and W.

    Args (keywords only):
        img_channel: image channels.
        width: channels at full resolution (level i has ``width * 2**i``).
        depth: encoder levels (the encoder outputs are at 1/2 .. 1/2**depth).
        num_groups: (gMLP layer + RCAB) pairs per encoder / decoder level.
        num_bottleneck_blocks: such blocks at the bottleneck.
        block_size_hr, grid_size_hr: block / grid sizes of the first ``high_res_levels`` levels;
        block_size_lr, grid_size_lr: of the deeper levels and the bottleneck.
        reduction: channel-attention reduction; drop_rate: dropout in the MLPs; pad_mode: see
            ``archs._padding``.

    Defaults (width 32, depth 3, two groups, two bottleneck blocks, 16/8 block and grid sizes): 7.10 M
    parameters and 21.2 GMACs at 2 x 3 x 128 x 128; wrapped with the prompter (1.19 M without its
    classifier, 0.35 GMACs per 128 px image) and its adapters, 8.3 M / 21.9 G, near the authors'
    ConStyle-MAXIM (8.10 M parameters / 25.58 GFLOPs, thop, SPEC section 5).
    """

    def __init__(self, *, img_channel: int = 3, width: int = 32, depth: int = 3, num_groups: int = 2,
                 num_bottleneck_blocks: int = 2, block_size_hr: Sequence[int] = (16, 16),
                 grid_size_hr: Sequence[int] = (16, 16), block_size_lr: Sequence[int] = (8, 8),
                 grid_size_lr: Sequence[int] = (8, 8), high_res_levels: int = 2, reduction: int = 4,
                 drop_rate: float = 0.0, pad_mode: str = "reflect") -> None:
        super().__init__()
        if img_channel < 1 or width < 1 or depth < 1 or num_groups < 0 or num_bottleneck_blocks < 0:
            raise ConStyleError(f"MAXIM: img_channel, width and depth must be >= 1 and block counts >= 0 (got "
                             f"img_channel={img_channel}, width={width}, depth={depth}, num_groups={num_groups}, "
                             f"num_bottleneck_blocks={num_bottleneck_blocks})")
        hr = (_pair(block_size_hr), _pair(grid_size_hr))
        lr = (_pair(block_size_lr), _pair(grid_size_lr))
        if min(min(s) for s in hr + lr) < 1:
            raise ConStyleError("MAXIM: block and grid sizes must be >= 1")
        self.img_channel, self.depth = img_channel, depth
        self.pad_mode = check_pad_mode(pad_mode, "MAXIM")
        chans = [width * 2 ** i for i in range(depth)]
        sizes = [hr if i < high_res_levels else lr for i in range(depth)]
        args = dict(groups=num_groups, reduction=reduction, drop=drop_rate)

        self.inputs = nn.ModuleList(nn.Conv2d(img_channel, c, 3, padding=1) for c in chans)
        self.encoders = nn.ModuleList(
            EncoderBlock(chans[i] + (chans[i - 1] if i else 0), chans[i], *sizes[i], **args) for i in range(depth))
        c_mid = chans[-1]
        self.bottleneck = nn.Sequential(*[_MultiAxisBlocks(c_mid, c_mid, *lr, **args)
                                          for _ in range(num_bottleneck_blocks)])
        # cross-scale skips: every skip to every level, and the bottleneck to every level, cross-gated
        self.skip_resamplers = nn.ModuleList(
            nn.ModuleList(UpSampleRatio(chans[j], chans[i]) for j in range(depth)) for i in range(depth))
        self.global_resamplers = nn.ModuleList(UpSampleRatio(c_mid, chans[i]) for i in range(depth))
        self.skip_gates = nn.ModuleList(CrossGatingBlock(depth * chans[i], chans[i], chans[i], *sizes[i], drop_rate)
                                        for i in range(depth))
        # decoder, coarsest level first
        self.bridge_resamplers = nn.ModuleList(
            nn.ModuleList(UpSampleRatio(chans[j], chans[i]) for j in range(depth)) for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(
            DecoderBlock(c_mid if i == depth - 1 else chans[i + 1], depth * chans[i], chans[i], *sizes[i], **args)
            for i in reversed(range(depth)))
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)

        multiple = 2 ** depth * math.lcm(*lr[0], *lr[1])
        for i, (block, grid) in enumerate(sizes):
            multiple = math.lcm(multiple, 2 ** i * math.lcm(*block, *grid))
        self.size_multiple = multiple

    def forward(self, inp: Tensor) -> Tensor:
        """B x img_channel x H x W -> B x img_channel x H x W."""
        check_input(inp, self.img_channel, "MAXIM")
        h, w = inp.shape[-2:]
        x = pad_to_multiple(inp, self.size_multiple, self.pad_mode)
        pyramid = [x]
        for _ in range(1, self.depth):
            pyramid.append(halve_antialiased(pyramid[-1]))
        skips, down = [], None
        for level, (conv, encoder) in enumerate(zip(self.inputs, self.encoders)):
            down, skip = encoder(conv(pyramid[level]), down)
            skips.append(skip)
        y = self.bottleneck(down)
        sizes = [tuple(s.shape[-2:]) for s in skips]
        gated = []
        for i in range(self.depth):
            signal = torch.cat([r(s, sizes[i]) for r, s in zip(self.skip_resamplers[i], skips)], dim=1)
            gated.append(self.skip_gates[i](signal, self.global_resamplers[i](y, sizes[i]))[0])
        for k, decoder in enumerate(self.decoders):
            i = self.depth - 1 - k
            bridge = torch.cat([r(g, sizes[i]) for r, g in zip(self.bridge_resamplers[k], gated)], dim=1)
            y = decoder(y, bridge)
        return (self.ending(y) + x)[:, :, :h, :w]
