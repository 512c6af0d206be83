"""The records of a benchmark's data (:class:`TestImage`, which loads and crops its pair, :class:`TestTask`,
:class:`TrainPair`) and the image operations the settings define: the crop to a multiple and PromptIR /
AdaIR's synthetic noise. :mod:`.benchmark_layouts` finds them in the data folders. The standard library,
numpy and :mod:`.imageio` only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import ConStyleError, LayoutError
from .imageio import read_image

__all__ = ["TestImage", "TestTask", "TrainPair", "crop_to_multiple", "synthetic_noise"]


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestImage:
    """One test image of a benchmark task.

    ``gt``: the clean file; ``lq``: the degraded file, or None when the degraded input is synthesised
    (``synthesis``: ``(model, sigma, seed)``, model ``'uint8'`` (PromptIR / AdaIR) or ``'float'`` (ConStyle v2
    authors), sigma on the 0-255 scale); ``crop_multiple`` / ``crop_mode``: both images are cropped to a
    multiple of it (``'center'`` or ``'top-left'``).
    """

    __test__ = False  # not a pytest class, despite its name

    name: str
    gt: Path
    lq: Optional[Path]
    synthesis: Optional[tuple]
    crop_multiple: int
    crop_mode: str

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(lq, gt)``: ``H x W x 3`` float32 RGB, cropped as the setting does, of the same size.

        ``gt`` is in [0, 1]; so is ``lq`` except for the ConStyle v2 noise model, which is not clipped.
        A synthesised ``lq`` is the same on every call.

        Raises:
            LayoutError: ``lq`` and ``gt`` differ in size after cropping, or are smaller than the multiple.
            ImageReadError: a file cannot be decoded.
        """
        gt = read_image(self.gt)
        if self.synthesis is None:
            lq = crop_to_multiple(read_image(self.lq), self.crop_multiple, self.crop_mode)
            gt = crop_to_multiple(gt, self.crop_multiple, self.crop_mode)
        else:
            model, sigma, seed = self.synthesis
            if model == "float":  # noise on the whole image, then the crop (the authors' order)
                lq = gt + np.random.RandomState(int(seed)).normal(0.0, sigma / 255.0, gt.shape)
                lq = crop_to_multiple(lq, self.crop_multiple, self.crop_mode)
                gt = crop_to_multiple(gt, self.crop_multiple, self.crop_mode)
            else:
                gt = crop_to_multiple(gt, self.crop_multiple, self.crop_mode)
                lq = synthetic_noise(gt, sigma, np.random.RandomState(int(seed)))
        where = f"{self.lq} and {self.gt}" if self.lq is not None else str(self.gt)
        if lq.shape != gt.shape:
            raise LayoutError(f"{self.lq} ({lq.shape[0]} x {lq.shape[1]}) and {self.gt} ({gt.shape[0]} x "
                              f"{gt.shape[1]}) differ in size after cropping to a multiple of {self.crop_multiple}")
        if gt.shape[0] == 0 or gt.shape[1] == 0:
            raise LayoutError(f"{where}: smaller than {self.crop_multiple} px, the multiple test images are "
                              f"cropped to")
        return np.ascontiguousarray(lq, dtype=np.float32), np.ascontiguousarray(gt, dtype=np.float32)


@dataclass(frozen=True)
class TestTask:
    """A benchmark task's test set: ``key`` (:data:`TEST_TASKS`), ``column`` (the table's header) and
    its images in sorted order."""

    __test__ = False

    key: str
    column: str
    images: Tuple[TestImage, ...]


@dataclass(frozen=True)
class TrainPair:
    """A training pair: ``gt`` the clean file, ``lq`` the degraded one (None for denoising: the noise
    is added on the fly)."""

    gt: Path
    lq: Optional[Path] = None


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------
def crop_to_multiple(img: np.ndarray, multiple: int, mode: str = "center") -> np.ndarray:
    """``img`` (``H x W x C``) cropped so both sides are multiples of ``multiple``.

    ``mode``: ``'center'`` drops ``(h % m) // 2`` rows at the top and the rest at the bottom (PromptIR's
    ``crop_img``), likewise for columns; ``'top-left'`` keeps rows and columns ``[0, h - h % m)``.
    """
    if mode not in ("center", "top-left"):
        raise ConStyleError(f"crop mode must be 'center' or 'top-left', got {mode!r}")
    h, w = img.shape[:2]
    dh, dw = h % multiple, w % multiple
    top, left = (dh // 2, dw // 2) if mode == "center" else (0, 0)
    return img[top:h - dh + top, left:w - dw + left]


def synthetic_noise(gt: np.ndarray, sigma: float, rng) -> np.ndarray:
    """PromptIR / AdaIR's noisy input: ``gt`` (``H x W x 3`` in [0, 1]) as 8 bit, plus ``N(0, sigma)``
    (``sigma`` on the 0-255 scale) drawn by ``rng.standard_normal`` (a ``numpy.random.Generator`` or
    ``RandomState``), clipped to [0, 255], truncated to 8 bit; returned as float32 in [0, 1]."""
    clean = np.round(np.clip(gt, 0.0, 1.0) * 255.0)
    noisy = np.clip(clean + rng.standard_normal(gt.shape) * float(sigma), 0, 255).astype(np.uint8)
    return noisy.astype(np.float32) / 255.0
