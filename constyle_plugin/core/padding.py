"""Padding to a size multiple (bottom and right), shared by the reference U-Nets, the MMEngine
data preprocessor and tiled inference, and the size multiple a network asks for (:func:`size_multiple_of`).
Torch only."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConStyleError

__all__ = ["PAD_MODES", "check_input", "check_pad_mode", "pad_bottom_right", "pad_to_multiple", "size_multiple_of"]

PAD_MODES = ("zeros", "reflect", "replicate")


def check_pad_mode(mode: str, owner: str) -> str:
    """``mode`` if it is one of :data:`PAD_MODES`, else a ValueError naming ``owner``."""
    if mode not in PAD_MODES:
        raise ConStyleError(f"{owner}: pad_mode must be one of {PAD_MODES}, got {mode!r}")
    return mode


def check_input(x: Tensor, channels: int, owner: str) -> None:
    """Raise a clear error for anything but a B x channels x H x W floating-point tensor."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConStyleError(f"{owner}: input must be B x {channels} x H x W, got {shape}")


def pad_bottom_right(x: Tensor, height: int, width: int, mode: str = "zeros") -> Tensor:
    """Pad ``x`` (``... x H x W``, 3-D or 4-D) at the bottom and right to ``height x width``.

    ``mode`` is ``"zeros"``, ``"reflect"`` or ``"replicate"``. Reflection needs the pad to be smaller
    than the side it mirrors; for tiny inputs where it is not, ``"reflect"`` falls back to
    ``"replicate"`` so that every size stays legal.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if pad_h < 0 or pad_w < 0:
        raise ConStyleError(f"pad_bottom_right: {h} x {w} is larger than {height} x {width}")
    if pad_h == 0 and pad_w == 0 and not torch.jit.is_tracing():  # a traced graph (ONNX) pads at any size
        return x
    if mode == "zeros":
        return F.pad(x, (0, pad_w, 0, pad_h))
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    batched = x if x.dim() == 4 else x[None]  # reflect / replicate want a batch dimension
    out = F.pad(batched, (0, pad_w, 0, pad_h), mode=mode)
    return out if x.dim() == 4 else out[0]


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "zeros") -> Tensor:
    """Pad ``x`` (B x C x H x W) at the bottom and right so that H and W are multiples of ``multiple``
    (see :func:`pad_bottom_right` for ``mode``)."""
    h, w = x.shape[-2:]
    return pad_bottom_right(x, h + (-h) % multiple, w + (-w) % multiple, mode)


def size_multiple_of(net: nn.Module) -> int:
    """The input-size multiple a network needs: ``size_multiple`` of the network or its backbone, else 1."""
    for module in (net, getattr(net, "backbone", None), getattr(net, "module", None)):
        value = getattr(module, "size_multiple", None)
        if isinstance(value, int) and value > 0:
            return value
    return 1
