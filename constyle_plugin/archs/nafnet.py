"""NAFNet (Chen, Chu, Zhang, Sun 2022, "Simple Baselines for Image Restoration"), from the paper.

Parameter names follow the layout of the authors' released checkpoints (``encoders.0.0.conv1.weight``,
``middle_blks.0.beta``, ``ups.0.0.weight`` ...), so their ``params`` state dicts load unchanged.

The channel LayerNorm is timm's ``LayerNorm2d``: it normalises over C at every pixel with the biased
variance and a per-channel affine, with eps 1e-6, which is what the paper's LayerNorm2d does (same
eps, same ``weight`` / ``bias`` parameter names).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torch import Tensor

from ..core.init_args import remember_init_args
from ..core.padding import check_input, check_pad_mode, pad_to_multiple
from ..errors import ConStyleError

__all__ = ["NAFBlock", "NAFNet", "simple_gate"]


def simple_gate(x: Tensor) -> Tensor:
    """SimpleGate: split B x 2C x H x W into two halves along C and multiply them (B x C x H x W)."""
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFBlock(nn.Module):
    """The nonlinear-activation-free block; B x c x H x W -> B x c x H x W.

    Spatial half: LayerNorm2d -> 1x1 conv (c -> dw_expand*c) -> 3x3 depthwise conv -> SimpleGate
    -> simplified channel attention (global average pool, 1x1 conv, channel-wise product) -> 1x1 conv
    back to c -> dropout, added to the input scaled by the learnable ``beta`` (zero-initialised).
    Channel half: LayerNorm2d -> 1x1 conv (c -> ffn_expand*c) -> SimpleGate -> 1x1 conv -> dropout,
    added scaled by ``gamma`` (zero-initialised). A fresh block is therefore the identity.
    """

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        if c < 1 or dw_expand * c % 2 or ffn_expand * c % 2:
            raise ConStyleError(f"NAFBlock: c * dw_expand and c * ffn_expand must be even and positive "
                             f"(c={c}, dw_expand={dw_expand}, ffn_expand={ffn_expand})")
        dw_channel = c * dw_expand
        ffn_channel = c * ffn_expand
        self.conv1 = nn.Conv2d(c, dw_channel, 1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, padding=1, groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, 1, bias=True)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw_channel // 2, dw_channel // 2, 1, bias=True))
        self.conv4 = nn.Conv2d(c, ffn_channel, 1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, 1, bias=True)
        self.norm1 = LayerNorm2d(c, eps=1e-6)
        self.norm2 = LayerNorm2d(c, eps=1e-6)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = simple_gate(x)
        x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = inp + x * self.beta
        x = simple_gate(self.conv4(self.norm2(y)))
        x = self.dropout2(self.conv5(x))
        return y + x * self.gamma


@remember_init_args
class NAFNet(nn.Module):
    """NAFNet U-Net: B x img_channel x H x W -> B x img_channel x H x W, for any H and W.

    ``intro`` (3x3 conv to ``width``) -> for each level: ``encoders[i]`` (NAFBlocks) then ``downs[i]``
    (2x2 stride-2 conv, channels doubled) -> ``middle_blks`` -> for each level, coarsest first:
    ``ups[i]`` (1x1 conv doubling channels + PixelShuffle(2), so channels halve and size doubles), the
    encoder skip added, ``decoders[i]`` -> ``ending`` (3x3 conv) + the input (global residual).

    The input is zero-padded at the bottom/right to a multiple of ``size_multiple`` = 2**len(enc_blk_nums)
    (as the authors' ``check_image_size`` does) and the output is cropped back to H x W.

    Defaults are the paper's NAFNet-GoPro-width32 (17.11 M parameters).
    """

    def __init__(self, img_channel: int = 3, width: int = 32, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (1, 1, 1, 28), dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
                 drop_out_rate: float = 0.0, dw_expand: int = 2, ffn_expand: int = 2, pad_mode: str = "zeros"):
        super().__init__()
        enc_blk_nums, dec_blk_nums = list(enc_blk_nums), list(dec_blk_nums)
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ConStyleError(f"NAFNet: enc_blk_nums {enc_blk_nums} and dec_blk_nums {dec_blk_nums} must have "
                             f"the same length (one entry per level)")
        if any(n < 0 for n in enc_blk_nums + dec_blk_nums) or middle_blk_num < 0:
            raise ConStyleError("NAFNet: block counts must be >= 0")
        if img_channel < 1 or width < 1:
            raise ConStyleError(f"NAFNet: img_channel and width must be positive (got {img_channel}, {width})")
        self.img_channel = img_channel
        self.pad_mode = check_pad_mode(pad_mode, "NAFNet")
        block_args = dict(dw_expand=dw_expand, ffn_expand=ffn_expand, drop_out_rate=drop_out_rate)

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1, bias=True)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan, **block_args) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan, **block_args) for _ in range(middle_blk_num)])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, **block_args) for _ in range(num)]))
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1, bias=True)
        self.size_multiple = 2 ** len(self.encoders)

    def forward(self, inp: Tensor) -> Tensor:
        """B x img_channel x H x W -> B x img_channel x H x W."""
        check_input(inp, self.img_channel, "NAFNet")
        h, w = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.size_multiple, self.pad_mode)
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return x[:, :, :h, :w]
