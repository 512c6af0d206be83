"""Restormer (Zamir et al. 2022, "Restormer: Efficient Transformer for High-Resolution Image
Restoration"), from the paper.

Parameter names follow the layout of the authors' released checkpoints (``encoder_level1.0.attn.qkv``,
``latent.0.norm1.body.weight``, ``up4_3.body.0.weight`` ...), so their ``params`` state dicts load
unchanged. The 'WithBias' channel LayerNorm is timm's ``LayerNorm2d`` with the paper's eps 1e-5.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import LayerNorm2d
from torch import Tensor

from ..core.init_args import remember_init_args
from ..core.padding import check_input, check_pad_mode, pad_to_multiple
from ..errors import ConStyleError

__all__ = ["BiasFreeLayerNorm2d", "ChannelLayerNorm", "Downsample", "GDFN", "MDTA", "OverlapPatchEmbed",
           "Restormer", "TransformerBlock", "Upsample"]


class BiasFreeLayerNorm2d(nn.Module):
    """Restormer's 'BiasFree' LayerNorm over C at each pixel: x / sqrt(var_C(x) + eps) * weight.

    The variance is centred but the mean is not subtracted from x, and there is no bias.
    B x C x H x W -> B x C x H x W.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + self.eps) * self.weight[None, :, None, None]


class ChannelLayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels, ``'WithBias'`` (standard) or ``'BiasFree'``; B x C x H x W."""

    def __init__(self, dim: int, LayerNorm_type: str = "WithBias"):
        super().__init__()
        if LayerNorm_type == "BiasFree":
            self.body = BiasFreeLayerNorm2d(dim)
        elif LayerNorm_type == "WithBias":
            self.body = LayerNorm2d(dim, eps=1e-5)
        else:
            raise ConStyleError(f"Restormer: LayerNorm_type must be 'WithBias' or 'BiasFree', got {LayerNorm_type!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MDTA(nn.Module):
    """Multi-Dconv head Transposed Attention; B x dim x H x W -> B x dim x H x W.

    q, k, v come from a 1x1 conv followed by a 3x3 depthwise conv. Attention is across channels
    (a (dim/heads) x (dim/heads) map per head), computed from L2-normalised q and k and scaled by a
    learnable per-head ``temperature``, so its cost is linear in H*W.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ConStyleError(f"Restormer: channels {dim} must be divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (head c) h w -> b head c (h w)", head=self.num_heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        out = rearrange(attn @ v, "b head c (h w) -> b (head c) h w", h=h, w=w)
        return self.project_out(out)


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network; B x dim x H x W -> B x dim x H x W.

    1x1 conv to 2*hidden, 3x3 depthwise conv, split in two, GELU(first) * second, 1x1 conv back,
    with hidden = int(dim * ffn_expansion_factor).
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x)); B x dim x H x W -> B x dim x H x W."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias"):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    """3x3 conv embedding; B x in_c x H x W -> B x embed_dim x H x W."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3x3 conv C -> C/2, then PixelUnshuffle(2); B x C x H x W -> B x 2C x H/2 x W/2."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3x3 conv C -> 2C, then PixelShuffle(2); B x C x H x W -> B x C/2 x 2H x 2W."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@remember_init_args
class Restormer(nn.Module):
    """Restormer: B x inp_channels x H x W -> B x out_channels x H x W, for any H and W.

    ``patch_embed`` -> ``encoder_level1`` (dim) -> ``down1_2`` (1/2) -> ``encoder_level2`` (2 dim)
    -> ``down2_3`` (1/4) -> ``encoder_level3`` (4 dim) -> ``down3_4`` (1/8) -> ``latent`` (8 dim)
    -> ``up4_3`` (1/4), concat skip, ``reduce_chan_level3`` -> ``decoder_level3`` -> ``up3_2`` (1/2),
    concat skip, ``reduce_chan_level2`` -> ``decoder_level2`` -> ``up2_1`` (1/1), concat skip (2 dim,
    no reduction) -> ``decoder_level1`` -> ``refinement`` -> ``output`` (3x3 conv) + the input.
    With ``dual_pixel_task`` (6-channel dual-pixel input) there is no global residual; a 1x1
    ``skip_conv`` of the level-1 features is added before ``output`` instead.

    The input is reflect-padded at the bottom/right to a multiple of ``size_multiple`` = 8 (as the
    authors' test scripts do) and the output is cropped back to H x W.

    Defaults are the paper's (26.13 M parameters).
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias", dual_pixel_task: bool = False, pad_mode: str = "reflect"):
        super().__init__()
        num_blocks, heads = list(num_blocks), list(heads)
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ConStyleError(f"Restormer: num_blocks and heads need 4 entries (levels 1-3 and latent), "
                             f"got {num_blocks} and {heads}")
        if dim < 1 or dim % 2:
            raise ConStyleError(f"Restormer: dim must be a positive even number, got {dim}")
        if not dual_pixel_task and inp_channels != out_channels:
            raise ConStyleError(f"Restormer: the global residual needs inp_channels == out_channels "
                             f"(got {inp_channels} and {out_channels}); set dual_pixel_task=True for no residual")
        self.inp_channels = inp_channels
        self.dual_pixel_task = dual_pixel_task
        self.pad_mode = check_pad_mode(pad_mode, "Restormer")
        self.size_multiple = 8

        def level(channels: int, n: int, n_heads: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(channels, n_heads, ffn_expansion_factor, bias, LayerNorm_type)
                                   for _ in range(n)])

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(dim, num_blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = level(dim * 2, num_blocks[0], heads[0])
        self.refinement = level(dim * 2, num_refinement_blocks, heads[0])
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img: Tensor) -> Tensor:
        """B x inp_channels x H x W -> B x out_channels x H x W."""
        check_input(inp_img, self.inp_channels, "Restormer")
        h, w = inp_img.shape[-2:]
        inp_img = pad_to_multiple(inp_img, self.size_multiple, self.pad_mode)
        inp_enc1 = self.patch_embed(inp_img)
        out_enc1 = self.encoder_level1(inp_enc1)
        out_enc2 = self.encoder_level2(self.down1_2(out_enc1))
        out_enc3 = self.encoder_level3(self.down2_3(out_enc2))
        latent = self.latent(self.down3_4(out_enc3))

        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc3], dim=1))
        x = self.decoder_level3(x)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), out_enc2], dim=1))
        x = self.decoder_level2(x)
        x = torch.cat([self.up2_1(x), out_enc1], dim=1)
        x = self.refinement(self.decoder_level1(x))
        if self.dual_pixel_task:
            x = self.output(x + self.skip_conv(inp_enc1))
        else:
            x = self.output(x) + inp_img
        return x[:, :, :h, :w]
