"""A vanilla convolutional U-Net, the plain-CNN baseline for the plugin."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..core.init_args import remember_init_args
from ..core.padding import check_input, check_pad_mode, pad_to_multiple
from ..errors import ConStyleError

__all__ = ["ConvUNet", "conv_block"]

_ACTS = {"relu": lambda: nn.ReLU(), "lrelu": lambda: nn.LeakyReLU(0.2)}


def _act(name: str) -> nn.Module:
    if name not in _ACTS:
        raise ConStyleError(f"ConvUNet: act must be one of {sorted(_ACTS)}, got {name!r}")
    return _ACTS[name]()


def conv_block(in_channels: int, out_channels: int, num_convs: int, act: str = "lrelu") -> nn.Sequential:
    """``num_convs`` x (3x3 conv + activation), the first mapping in -> out channels; keeps H x W."""
    layers = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), _act(act)]
    return nn.Sequential(*layers)


@remember_init_args
class ConvUNet(nn.Module):
    """Plain conv U-Net: B x in_channels x H x W -> B x out_channels x H x W, for any H and W.

    Level i (0 .. depth-1) works at 1/2**i with ``width * 2**i`` channels.

    - ``intro``: 3x3 conv + activation to ``width``;
    - ``encoders[i]``: ``blocks_per_level`` x (3x3 conv + activation);
    - ``downs[i]``: 2x2 stride-2 conv doubling the channels + activation (output at 1/2**(i+1));
    - ``bottleneck``: ``blocks_per_level`` x (3x3 conv + activation) at 1/2**depth;
    - ``ups[i]`` (coarsest first): 2x2 stride-2 transposed conv halving the channels;
    - ``decoders[i]``: the skip concatenated, then ``blocks_per_level`` x (3x3 conv + activation),
      the first reducing 2C -> C;
    - ``ending``: 3x3 conv to ``out_channels``, plus the input when in_channels == out_channels.

    The input is padded at the bottom/right (``pad_mode``, reflect by default) to a multiple of
    ``size_multiple`` = 2**depth and the output is cropped back to H x W.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 32, depth: int = 4,
                 blocks_per_level: int = 2, act: str = "lrelu", pad_mode: str = "reflect"):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or width < 1:
            raise ConStyleError(f"ConvUNet: in_channels, out_channels and width must be positive "
                             f"(got {in_channels}, {out_channels}, {width})")
        if depth < 0 or blocks_per_level < 1:
            raise ConStyleError(f"ConvUNet: need depth >= 0 and blocks_per_level >= 1 "
                             f"(got depth={depth}, blocks_per_level={blocks_per_level})")
        _act(act)
        self.in_channels = in_channels
        self.global_residual = in_channels == out_channels
        self.pad_mode = check_pad_mode(pad_mode, "ConvUNet")
        self.size_multiple = 2 ** depth

        self.intro = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), _act(act))
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for _ in range(depth):
            self.encoders.append(conv_block(chan, chan, blocks_per_level, act))
            self.downs.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 2, stride=2), _act(act)))
            chan *= 2
        self.bottleneck = conv_block(chan, chan, blocks_per_level, act)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for _ in range(depth):
            self.ups.append(nn.ConvTranspose2d(chan, chan // 2, 2, stride=2))
            chan //= 2
            self.decoders.append(conv_block(chan * 2, chan, blocks_per_level, act))
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, inp: Tensor) -> Tensor:
        """B x in_channels x H x W -> B x out_channels x H x W."""
        check_input(inp, self.in_channels, "ConvUNet")
        h, w = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.size_multiple, self.pad_mode)
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        x = self.ending(x)
        if self.global_residual:
            x = x + inp
        return x[:, :, :h, :w]
