"""Small U-Nets written in different styles, for testing wrap_unet on code it has never seen."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class ModuleListUNet(nn.Module):
    """ModuleLists of levels, strided-conv downsampling, transposed-conv upsampling, 3 levels."""

    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.enc = nn.ModuleList(block(c, c) for c in chans[:-1])
        self.down = nn.ModuleList(nn.Conv2d(c, 2 * c, 2, stride=2) for c in chans[:-1])
        self.mid = block(chans[-1], chans[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in reversed(chans[:-1]))
        self.dec = nn.ModuleList(block(2 * c, c) for c in reversed(chans[:-1]))
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        self.multiple = 2 ** depth

    def forward(self, x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        y = self.head(F.pad(x, (0, pw, 0, ph), mode="reflect"))
        skips = []
        for enc, down in zip(self.enc, self.down):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = self.mid(y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        return (self.tail(y) + F.pad(x, (0, pw, 0, ph), mode="reflect"))[..., :h, :w]


class SequentialUNet(nn.Module):
    """Sequential levels (conv + BatchNorm, max-pool inside the level), nn.Upsample decoder, 4 levels."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = [width, width * 2, width * 4, width * 8, width * 8]
        self.inc = nn.Sequential(nn.Conv2d(3, c[0], 3, padding=1), nn.BatchNorm2d(c[0]), nn.ReLU())
        self.downs = nn.Sequential(*[
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c[i], c[i + 1], 3, padding=1), nn.BatchNorm2d(c[i + 1]),
                          nn.ReLU()) for i in range(4)])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                          nn.Conv2d(c[i + 1], c[i], 1)) for i in reversed(range(4)))
        self.fuse = nn.ModuleList(block(2 * c[i], c[i]) for i in reversed(range(4)))
        self.out = nn.Conv2d(c[0], 3, 1)

    def forward(self, x):
        feats = [self.inc(x)]
        for level in self.downs:
            feats.append(level(feats[-1]))
        y = feats.pop()
        for up, fuse in zip(self.ups, self.fuse):
            y = fuse(torch.cat([up(y), feats.pop()], dim=1))
        return self.out(y)


class FunctionalUNet(nn.Module):
    """A functional forward: F.max_pool2d down, F.interpolate up, skip list; any input size."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = block(3, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.d2, self.d1 = block(6 * width, 2 * width), block(3 * width, width)
        self.out = nn.Conv2d(width, 3, 1)

    def forward(self, x):
        skips = [self.e1(x)]
        skips.append(self.e2(F.max_pool2d(skips[-1], 2, ceil_mode=True)))
        y = self.e3(F.max_pool2d(skips[-1], 2, ceil_mode=True))
        for dec in (self.d2, self.d1):
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = dec(torch.cat([y, skip], dim=1))
        return x + self.out(y)


class TupleDownUNet(nn.Module):
    """Down blocks that return (pooled, skip) tuples, and a shared activation module used everywhere."""

    class Down(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
            self.pool = nn.AvgPool2d(2)

        def forward(self, x, act):
            skip = act(self.conv(x))
            return self.pool(skip), skip

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.act = nn.LeakyReLU(0.2)  # shared: runs many times, never a hook point
        self.d1, self.d2, self.d3 = self.Down(3, width), self.Down(width, 2 * width), self.Down(2 * width, 4 * width)
        self.mid = nn.Conv2d(4 * width, 4 * width, 3, padding=1)
        self.u3 = nn.ConvTranspose2d(4 * width, 4 * width, 2, stride=2)
        self.u2 = nn.ConvTranspose2d(8 * width, 2 * width, 2, stride=2)
        self.u1 = nn.ConvTranspose2d(4 * width, width, 2, stride=2)
        self.out = nn.Conv2d(2 * width, 3, 3, padding=1)

    def forward(self, x):
        y, s1 = self.d1(x, self.act)
        y, s2 = self.d2(y, self.act)
        y, s3 = self.d3(y, self.act)
        y = self.act(self.mid(y))
        y = self.act(self.u3(y))
        y = self.act(self.u2(torch.cat([y, s3], 1)))
        y = self.act(self.u1(torch.cat([y, s2], 1)))
        return self.out(torch.cat([y, s1], 1))


class PlainCNN(nn.Module):
    """No downsampling at all (DnCNN-like): not a U-Net."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(block(3, 8), block(8, 8), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class EncoderOnly(nn.Module):
    """Goes down and never comes back (a feature extractor)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1))

    def forward(self, x):
        return self.body(x)


# ---------------------------------------------------------------------------- MLP and transformer U-Nets
class _ChannelsLastMLP(nn.Module):
    """A gated MLP that works channels-last inside: B x C x H x W -> (B x H x W x C) -> B x C x H x W."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(c, c)

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        u, v = self.fc1(self.norm(y)).chunk(2, dim=-1)
        return x + self.fc2(F.gelu(u) * v).permute(0, 3, 1, 2)


class _MixEncoderBlock(nn.Module):
    """MAXIM-style encoder block: channels-last gMLP, then returns (downsampled, skip)."""

    def __init__(self, cin: int, cout: int, cnext: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)
        self.mlp = _ChannelsLastMLP(cout)
        self.down = nn.Conv2d(cout, cnext, 4, stride=2, padding=1)

    def forward(self, x):
        skip = self.mlp(self.proj(x))
        return self.down(skip), skip


class _Resample(nn.Module):
    """A small resampling module on a skip: 1x1 conv, then resize by 2**ratio (functional)."""

    def __init__(self, cin: int, cout: int, ratio: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.ratio = ratio

    def forward(self, x):
        x = self.conv(x)
        if self.ratio == 0:
            return x
        return F.interpolate(x, scale_factor=2.0 ** self.ratio, mode="bilinear", align_corners=False)


class MixerUNet(nn.Module):
    """A MAXIM-style MLP U-Net written as such networks are: tuple-returning encoder blocks, blocks that
    permute to B x H x W x C inside, an input pyramid made with F.interpolate, and many small resampling
    modules on the skips (cross-scale skip fusion between the bottleneck and the decoder).

    Encoder outputs at 1/2, 1/4, 1/8 (``enc0-2``, element 0), bottleneck ``bottleneck`` at 1/8,
    decoder ``dec2``, ``dec1``, ``dec0`` (each fed by the previous one). Inputs: multiples of 8.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        c = [width, 2 * width, 4 * width]
        self.conv_in = nn.ModuleList(nn.Conv2d(3, c[i], 3, padding=1) for i in range(3))
        self.fuse_in = nn.ModuleList(nn.Conv2d(2 * c[i], c[i], 1) for i in range(1, 3))
        self.enc0, self.enc1 = _MixEncoderBlock(c[0], c[0], c[1]), _MixEncoderBlock(c[1], c[1], c[2])
        self.enc2 = _MixEncoderBlock(c[2], c[2], 8 * width)
        self.bottleneck = nn.Sequential(nn.Conv2d(8 * width, 8 * width, 1), _ChannelsLastMLP(8 * width))
        # every skip resized to every level, and the bottleneck to every level
        self.resample = nn.ModuleDict({f"{j}to{i}": _Resample(c[j], c[i], j - i) for i in range(3) for j in range(3)})
        self.global_up = nn.ModuleList(_Resample(8 * width, c[i], 3 - i) for i in range(3))
        self.gate = nn.ModuleList(nn.Conv2d(4 * c[i], c[i], 1) for i in range(3))
        self.dec2 = nn.ConvTranspose2d(8 * width, c[2], 2, stride=2)
        self.dec1 = nn.ConvTranspose2d(2 * c[2], c[1], 2, stride=2)
        self.dec0 = nn.ConvTranspose2d(2 * c[1], c[0], 2, stride=2)
        self.out = nn.Conv2d(2 * c[0], 3, 3, padding=1)

    def forward(self, x):
        pyramid = [x, F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False),
                   F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)]
        y, s0 = self.enc0(self.conv_in[0](pyramid[0]))
        y, s1 = self.enc1(self.fuse_in[0](torch.cat([self.conv_in[1](pyramid[1]), y], 1)))
        y, s2 = self.enc2(self.fuse_in[1](torch.cat([self.conv_in[2](pyramid[2]), y], 1)))
        y = self.bottleneck(y)
        skips = [s0, s1, s2]
        gated = []
        for i in range(3):
            signal = [self.resample[f"{j}to{i}"](skips[j]) for j in range(3)] + [self.global_up[i](y)]
            gated.append(self.gate[i](torch.cat(signal, 1)))
        d = self.dec2(y)
        d = self.dec1(torch.cat([d, gated[2]], 1))
        d = self.dec0(torch.cat([d, gated[1]], 1))
        return x + self.out(torch.cat([d, gated[0]], 1))


class _TokenLeFF(nn.Module):
    """Uformer's locally-enhanced feed-forward: tokens -> square map (h = w = sqrt(L)) -> dwconv -> tokens."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c), nn.GELU())
        self.linear2 = nn.Linear(4 * c, c)

    def forward(self, x):
        b, length, _ = x.shape
        side = int(math.sqrt(length))
        y = self.linear1(x).transpose(1, 2).reshape(b, -1, side, side)  # raises for non-square inputs
        return self.linear2(self.dwconv(y).flatten(2).transpose(1, 2))


class _TokenBlock(nn.Module):
    """Pre-norm self-attention inside 4 x 4 windows of the square token grid, then LeFF; B x L x C."""

    win = 4

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, 1, batch_first=True)
        self.mlp = _TokenLeFF(c)

    def forward(self, x):
        b, length, c = x.shape
        side, k = int(math.sqrt(length)), min(self.win, int(math.sqrt(length)))
        y = self.norm1(x).reshape(b, side // k, k, side // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k, c)
        y = self.attn(y, y, y, need_weights=False)[0]  # (B * windows) x k*k x C: no map
        y = y.reshape(b, side // k, side // k, k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, length, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class _TokenLayer(nn.Module):
    def __init__(self, c: int, depth: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_TokenBlock(c) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class _TokenDown(nn.Module):
    """Tokens -> square map -> 4x4 stride-2 conv -> tokens at half the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x):
        b, length, c = x.shape
        side = int(math.sqrt(length))
        return self.conv(x.transpose(1, 2).reshape(b, c, side, side)).flatten(2).transpose(1, 2)


class _TokenUp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, x):
        b, length, c = x.shape
        side = int(math.sqrt(length))
        return self.deconv(x.transpose(1, 2).reshape(b, c, side, side)).flatten(2).transpose(1, 2)


class TokenUNet(nn.Module):
    """A Uformer-style transformer U-Net on B x L x C tokens, square inputs only (h = w = sqrt(L)).

    ``input_proj`` -> ``encoderlayer_i`` + ``dowsample_i`` (i = 0..3, tokens at 1/2 .. 1/16) -> ``conv``
    (the bottleneck layer, 1/16) -> ``upsample_i`` + ``decoderlayer_i`` -> ``output_proj`` + input.
    """

    def __init__(self, width: int = 8, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        self.input_proj = nn.Conv2d(3, width, 3, padding=1)
        c = [width * 2 ** i for i in range(levels + 1)]
        for i in range(levels):
            setattr(self, f"encoderlayer_{i}", _TokenLayer(c[i]))
            setattr(self, f"dowsample_{i}", _TokenDown(c[i], c[i + 1]))
        self.conv = _TokenLayer(c[levels])
        for k, i in enumerate(reversed(range(levels))):
            setattr(self, f"upsample_{k}", _TokenUp(c[i + 1] if k == 0 else 2 * c[i + 1], c[i]))
            setattr(self, f"decoderlayer_{k}", _TokenLayer(2 * c[i]))
        self.output_proj = nn.Conv2d(2 * width, 3, 3, padding=1)

    def forward(self, x):
        b, _, h, w = x.shape
        y = self.input_proj(x).flatten(2).transpose(1, 2)
        skips = []
        for i in range(self.levels):
            y = getattr(self, f"encoderlayer_{i}")(y)
            skips.append(y)
            y = getattr(self, f"dowsample_{i}")(y)
        y = self.conv(y)
        for k in range(self.levels):
            y = getattr(self, f"upsample_{k}")(y)
            y = getattr(self, f"decoderlayer_{k}")(torch.cat([y, skips.pop()], -1))
        return x + self.output_proj(y.transpose(1, 2).reshape(b, -1, h, w))


class SwinStyleUNet(nn.Module):
    """Stages that hand B x H x W x C (channels-last) maps on, as Swin-style code does."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 3, padding=1)
        self.merges = nn.ModuleList(nn.Linear(4 * width * 2 ** i, width * 2 ** (i + 1)) for i in range(3))
        self.mlp = nn.Sequential(nn.LayerNorm(8 * width), nn.Linear(8 * width, 8 * width))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(width * 2 ** (i + 1), width * 2 ** i, 2, stride=2)
                                 for i in reversed(range(3)))
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    @staticmethod
    def merge(x):  # B x H x W x C -> B x H/2 x W/2 x 4C
        return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)

    def forward(self, x):
        y = self.embed(x).permute(0, 2, 3, 1)
        for merge in self.merges:
            y = merge(self.merge(y))
        y = y + self.mlp(y)
        y = y.permute(0, 3, 1, 2)
        for up in self.ups:
            y = up(y)
        return x + self.head(y)


def live_adapters(net: nn.Module, seed: int = 1, scale: float = 0.1) -> nn.Module:
    """Move a wrapped net's adapters off their zero initialisation (normal noise times ``scale``), so
    that the prompt really changes the output and the gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.injections.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


def as_trained(net: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """A wrapped net's weights (backbone and injections, not the prompter) moved off their initialisation
    by normal noise times ``scale``, as after training; in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.startswith("prompter."):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()
