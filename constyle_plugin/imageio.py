"""Image files: the one reader (and writer) of the plugin, for restore and for the datasets.

numpy and OpenCV only (core dependencies); importing this module does not happen on
``import constyle_plugin``.
"""
from __future__ import annotations

import os
from typing import Union

import cv2
import numpy as np

from .errors import ImageReadError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "encode_png", "read_image"]

# The image files the plugin reads (restore inputs, dataset folders): what OpenCV decodes.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file as ``H x W x 3`` float32 RGB in [0, 1].

    Grey is replicated to RGB, alpha dropped, 8- and 16-bit files are scaled by their full range.
    Paths with any characters work (the bytes are read by numpy and decoded by OpenCV).

    Raises:
        ImageReadError: the file cannot be read or decoded (a :class:`~constyle_plugin.errors.ConStyleError`
            and an ``OSError``), naming the file.
    """
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.strerror or exc})") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if buf.size else None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (cannot decode it)")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / _SCALES.get(img.dtype, 1.0)
    return np.clip(img, 0.0, 1.0)


def encode_png(img: np.ndarray, path: Union[str, os.PathLike] = "image") -> bytes:
    """``H x W x 3`` RGB in [0, 1] as the bytes of an 8-bit PNG (``path`` only names it in errors)."""
    bgr = cv2.cvtColor((np.clip(img, 0, 1) * 255.0).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return buf.tobytes()

