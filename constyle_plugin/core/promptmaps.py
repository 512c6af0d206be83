"""The prompt's resolution: the resized copy of the image the prompter sees (``prompt_size``), and the
window of an image's prompt that belongs to one tile of it.

The prompt is mostly global (``z2`` is one vector per image; the injectors resize ``f1..f3`` to each
stage), so the prompter can run on a smaller copy of the image: its longer side at most
``prompt_size`` pixels, downscaled with an antialiasing filter, never upscaled.

Tiled inference computes one prompt for the whole image and gives each tile the part of the feature
maps that covers it (:func:`crop_prompt`) and the image's ``z2``, so that tiles agree.

Imports only torch.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import OptionError
from .prompter import Prompt

__all__ = ["MIN_PROMPT_SIZE", "check_prompt_size", "crop_prompt", "parse_prompt_size", "prompter_input_size",
           "resize_for_prompter"]

MIN_PROMPT_SIZE = 16  # the prompter halves its input four times


def check_prompt_size(value: Any, key: str = "prompt_size") -> Optional[int]:
    """``value`` if it is a valid ``prompt_size`` (``None``: full resolution, or an int >= 16), else
    :class:`~constyle_plugin.errors.OptionError` naming ``key``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(key, f"expected the longer side the prompter sees, in pixels (an int), or None for "
                               f"full resolution; got {value!r}")
    if value < MIN_PROMPT_SIZE:
        raise OptionError(key, f"must be at least {MIN_PROMPT_SIZE} (the prompter halves its input four times) "
                               f"or None for full resolution; got {value}")
    return value


def parse_prompt_size(text: Any, key: str = "--prompt-size") -> Optional[int]:
    """A prompt size as typed on a command line: ``full`` (``None``) or a number of pixels, checked by
    :func:`check_prompt_size` (:class:`~constyle_plugin.errors.OptionError` naming ``key``)."""
    value = str(text).strip().lower()
    if value == "full":
        return None
    return check_prompt_size(int(value) if value.isdigit() else value, key)


def prompter_input_size(height: Any, width: Any, prompt_size: Optional[int]) -> Tuple[Any, Any]:
    """``(h, w)`` of the prompter's input for an ``height x width`` image: the longer side
    ``min(prompt_size, itself)``, the other in proportion (rounded half up, at least 1).

    Integer arithmetic only, so the same code gives the same sizes on Python ints and, under
    ``torch.jit.trace``, on the traced size tensors (the ONNX graph computes them at run time).
    """
    if prompt_size is None:
        return height, width
    if isinstance(height, Tensor) or isinstance(width, Tensor):
        height, width = torch.as_tensor(height), torch.as_tensor(width)
        longer = torch.maximum(height, width)
        side = torch.clamp(longer, max=prompt_size)
        h = torch.clamp(torch.div(2 * height * side + longer, 2 * longer, rounding_mode="floor"), min=1)
        w = torch.clamp(torch.div(2 * width * side + longer, 2 * longer, rounding_mode="floor"), min=1)
        return h, w
    longer = max(height, width)
    side = min(prompt_size, longer)
    return max(1, (2 * height * side + longer) // (2 * longer)), max(1, (2 * width * side + longer) // (2 * longer))


def _antialias_matrix(n_in: Tensor, n_out: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``n_out x n_in`` weights of PyTorch's antialiased bilinear downscale along one axis (a triangle
    filter as wide as the scale, rows normalised), built from tensor sizes so that a traced graph keeps
    them dynamic."""
    scale = n_in.to(torch.float64) / n_out.to(torch.float64)
    centres = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * scale
    sources = torch.arange(n_in, device=device, dtype=torch.float64) + 0.5
    weights = torch.clamp(1 - (sources[None, :] - centres[:, None]).abs() / scale, min=0)
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)


def resize_for_prompter(image: Tensor, prompt_size: Optional[int]) -> Tensor:
    """``image`` (``B x C x H x W``) with its longer side at most ``prompt_size`` (see
    :func:`prompter_input_size`), downscaled by antialiased bilinear interpolation; unchanged when it
    is no larger or ``prompt_size`` is ``None``.

    Under ``torch.jit.trace`` (ONNX export) the same filter runs as two matrix products, exported with
    sizes computed from the input at run time (the exporters have no antialiased resize).
    """
    if prompt_size is None:
        return image
    if torch.jit.is_tracing():
        height, width = torch.as_tensor(image.shape[-2]), torch.as_tensor(image.shape[-1])
        h, w = prompter_input_size(height, width, prompt_size)
        rows = _antialias_matrix(height, h, image.dtype, image.device)
        cols = _antialias_matrix(width, w, image.dtype, image.device)
        return torch.matmul(torch.matmul(rows, image), cols.transpose(0, 1))
    height, width = image.shape[-2:]
    size = prompter_input_size(height, width, prompt_size)
    if tuple(size) == (height, width):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def _stride2(n: int, times: int) -> int:
    for _ in range(times):
        n = -(-n // 2)
    return n


def crop_prompt(prompt: Prompt, image_size: Sequence[int], box: Sequence[int]) -> Prompt:
    """The part of an image's prompt that covers ``box`` of it.

    Args:
        prompt: the prompt of the whole ``image_size`` image (at any prompt resolution), batch ``B``.
        image_size: ``(H, W)`` of that image, in pixels.
        box: ``(top, left, height, width)`` of the window in the image's pixels; it may reach past the
            image's bottom and right edges (a tile padded to the network's size multiple), where the
            maps' edge values continue.

    Returns a :class:`Prompt` with the image's ``latent`` and feature maps ``f1, f2, f3`` of
    ``B x C x h_k x w_k`` (``h_k = ceil(height / 2**k)``, as the prompter gives for a ``height x width``
    input), sampled bilinearly from the image's maps where the window's cells lie; resizing them to a
    stage gives what resizing the whole image's maps to its stage and cutting out the window gives.
    """
    height, width = (int(v) for v in image_size)
    top, left, box_h, box_w = (int(v) for v in box)
    features = []
    for k, feature in enumerate(prompt.features, start=1):
        n_h, n_w = _stride2(box_h, k), _stride2(box_w, k)
        dtype = feature.dtype if feature.is_floating_point() else torch.float32
        ys = top + (torch.arange(n_h, device=feature.device, dtype=torch.float64) + 0.5) * box_h / n_h
        xs = left + (torch.arange(n_w, device=feature.device, dtype=torch.float64) + 0.5) * box_w / n_w
        grid = torch.stack(torch.meshgrid(2 * xs / width - 1, 2 * ys / height - 1, indexing="xy"), dim=-1)
        grid = grid.to(dtype)[None].expand(feature.shape[0], -1, -1, -1)
        features.append(F.grid_sample(feature.to(dtype), grid, mode="bilinear", padding_mode="border",
                                      align_corners=False))
    return Prompt(prompt.latent, tuple(features))
