"""The modules a hook adds to a U-Net stage. Each keeps the stage's shape and starts as identity."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureInjector", "LatentModulator", "LatentFiLM"]


def _zero_conv1x1(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FeatureInjector(nn.Module):
    """Encoder stage: ``x + fuse(concat(x, LeakyReLU(proj(f))))``.

    x: ``B x C x h x w`` (the stage's output); f: ``B x Cp x h' x w'`` (a prompter feature map, resized
    to ``h x w`` when rounding differs). ``proj`` is the paper's 1x1 conv (no bias) + LeakyReLU(0.1);
    ``fuse`` is a zero-initialised 1x1 conv, so the injector is the identity until it trains.
    """

    def __init__(self, prompt_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(prompt_channels, channels, 1, bias=False)
        self.act = nn.LeakyReLU(0.1)
        self.fuse = _zero_conv1x1(2 * channels, channels)

    def forward(self, x: Tensor, feature: Tensor) -> Tensor:
        p = self.act(self.proj(feature.to(dtype=x.dtype)))
        if p.shape[-2:] != x.shape[-2:] or torch.jit.is_tracing():  # a traced graph (ONNX) resizes at any size
            p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + self.fuse(torch.cat([x, p], dim=1))


class LatentModulator(nn.Module):
    """Bottleneck: ``x + fuse(concat(x, x * Linear(z)))`` with a zero-initialised 1x1 ``fuse``.

    x: ``B x C x h x w``; z: ``B x 128`` (the latent prompt).
    """

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_dim, channels)
        self.fuse = _zero_conv1x1(2 * channels, channels)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        scale = self.linear(z.to(dtype=x.dtype))[:, :, None, None]
        return x + self.fuse(torch.cat([x, x * scale], dim=1))


class LatentFiLM(nn.Module):
    """Decoder stage: ``x * (1 + gamma(z)) + beta(z)`` with a zero-initialised Linear.

    x: ``B x C x h x w``; z: ``B x 128``.
    """

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        gamma, beta = self.linear(z.to(dtype=x.dtype))[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta
