"""Image files: the one reader (and writer) of the plugin, for restore and for the datasets.

numpy and OpenCV only (core dependencies); importing this module does not happen on
``import constyle_plugin``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from ..errors import ImageReadError, ImageWriteError

__all__ = ["IMAGE_EXTENSIONS", "ImageFile", "ImageReadError", "encode_png", "read_image", "read_image_file"]

# The image files the plugin reads (restore inputs, dataset folders): what OpenCV decodes.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _file_bytes(path: Union[str, os.PathLike]) -> np.ndarray:
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own log lines off (``[ WARN] ... PNG input buffer is incomplete``, ``[ERROR] ... IHDR``):
    a file that does not decode is reported once, by the caller's error. The level is put back after."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    before = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(before)


def _decode(buf: np.ndarray, flags: int) -> Optional[np.ndarray]:
    if not buf.size:
        return None
    with _opencv_quiet():
        return cv2.imdecode(buf, flags)


@dataclass
class ImageFile:
    """An image file as the network sees it (``rgb``) and what the network does not touch.

    ``rgb``: ``H x W x 3`` float32 RGB in [0, 1]; ``alpha``: the file's alpha channel as stored
    (``H x W``, its own dtype) or None; ``bits``: 16 for 16-bit files, else 8; ``stored``: the file's
    sample type (``uint8``, ``uint16``, ``float32`` ...).
    """

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    bits: int
    stored: str


def read_image_file(path: Union[str, os.PathLike]) -> ImageFile:
    """An image file with its alpha channel and bit depth (see :class:`ImageFile`); errors as :func:`read_image`."""
    buf = _file_bytes(path)
    raw = _decode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageReadError(f"{path}: not a readable image (cannot decode it)")
    alpha = None
    if raw.ndim == 3 and raw.shape[2] in (2, 4):
        alpha = raw[..., -1].copy()
        colour = raw[..., :-1]
        colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB) if colour.shape[2] == 3 else np.repeat(colour, 3, axis=2)
    else:  # decoded again as the datasets do, so that JPEG orientation and palettes are applied alike
        colour = read_image(path) if raw.dtype == np.uint8 or raw.dtype == np.uint16 else None
        if colour is not None:
            return ImageFile(colour, None, 16 if raw.dtype == np.uint16 else 8, str(raw.dtype))
        colour = raw if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=2)
        colour = cv2.cvtColor(colour[..., :3], cv2.COLOR_BGR2RGB)
    rgb = np.clip(colour.astype(np.float32) / _SCALES.get(colour.dtype, 1.0), 0.0, 1.0)
    return ImageFile(rgb, alpha, 8 if raw.dtype == np.uint8 else 16, str(raw.dtype))


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file as ``H x W x 3`` float32 RGB in [0, 1].

    Grey is replicated to RGB, alpha dropped, 8- and 16-bit files are scaled by their full range.
    Paths with any characters work (the bytes are read by numpy and decoded by OpenCV).

    Raises:
        ImageReadError: the file cannot be read or decoded (a :class:`~constyle_plugin.errors.ConStyleError`
            and an ``OSError``), naming the file.
    """
    buf = _file_bytes(path)
    img = _decode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (cannot decode it)")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / _SCALES.get(img.dtype, 1.0)
    return np.clip(img, 0.0, 1.0)


def encode_png(img: np.ndarray, path: Union[str, os.PathLike] = "image", bits: int = 8,
               alpha: Optional[np.ndarray] = None) -> bytes:
    """``H x W x 3`` RGB in [0, 1] as the bytes of a PNG (``path`` only names it in errors).

    ``bits``: 8 or 16. ``alpha``: an ``H x W`` channel appended as it is when its dtype matches the
    depth (``uint8`` / ``uint16``), else rescaled to it.
    """
    dtype = np.uint16 if bits == 16 else np.uint8
    top = float(np.iinfo(dtype).max)
    bgr = cv2.cvtColor((np.clip(img, 0, 1) * top).round().astype(dtype), cv2.COLOR_RGB2BGR)
    if alpha is not None:
        if alpha.dtype != dtype:
            source = float(np.iinfo(alpha.dtype).max) if alpha.dtype.kind in "ui" else 1.0
            alpha = (np.clip(alpha.astype(np.float64) / source, 0, 1) * top).round().astype(dtype)
        bgr = np.concatenate([bgr, alpha[..., None]], axis=2)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageWriteError(f"{path}: PNG encoding failed")
    return buf.tobytes()

