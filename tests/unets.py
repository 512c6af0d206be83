"""Small U-Nets written in different styles, for testing wrap_unet on code it has never seen."""
from __future__ import annotations

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
