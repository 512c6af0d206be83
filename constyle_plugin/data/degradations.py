"""Degradations for stage 1 (the prompter's query view) and for the all-in-one training data.

Three groups:

* :class:`RealESRGANDegradation`: the Real-ESRGAN second-order pipeline on a batch (its own module,
  :mod:`.realesrgan`; importable from here too).
* Weather on the CPU (H x W x 3 float32 numpy images in [0, 1]): ImageNet-C style
  :func:`contrast` and :func:`snow`, and :func:`weather` (contrast 1, snow 1, snow 2, the
  authors' order). The snow layer's motion blur uses :func:`line_kernel`, not ImageMagick.
* The all-in-one degradations, ``ALL_IN_ONE[name](img, rng) -> img`` with
  ``rng`` a ``numpy.random.Generator``: noise, jpeg, motion_blur, defocus_blur, haze, rain, snow,
  low_light. Each returns a new float32 H x W x 3 image in [0, 1] of the input's size.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import cv2
import numpy as np

from ..errors import ConStyleError, ConStyleRuntimeError
from .realesrgan import PARAM_BATCH_KEYS, PARAM_SAMPLE_KEYS, RealESRGANDegradation


__all__ = [
    "RealESRGANDegradation", "PARAM_SAMPLE_KEYS", "PARAM_BATCH_KEYS", "line_kernel", "disk_kernel",
    "contrast", "snow", "weather",
    "gaussian_noise", "jpeg", "motion_blur", "defocus_blur", "haze", "rain", "snow_degradation",
    "low_light", "ALL_IN_ONE", "CONTRAST_LEVELS", "SNOW_PARAMS", "IMAGENET_C_SNOW_PARAMS",
]

Image = np.ndarray  # H x W x 3 float32 in [0, 1]


def _check_image(img: np.ndarray, name: str = "img") -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ConStyleError(f"{name}: expected an H x W x 3 image, got shape {img.shape}")
    return img.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

def line_kernel(radius: float, angle: float, sigma: Optional[float] = None,
                one_sided: bool = False, samples_per_pixel: int = 4) -> np.ndarray:
    """A motion-blur kernel: a line through the centre, ``(2R+1) x (2R+1)``, ``R = ceil(radius)``.

    ``angle`` in degrees, direction ``(cos a, sin a)`` in pixel coordinates (x right, y down):
    0 is horizontal, 90 vertical. The line runs from ``-radius`` to ``radius`` along that
    direction, or from 0 to ``radius`` when ``one_sided`` (a trail, as ImageMagick's
    ``-motion-blur`` makes). Weights along the line are uniform, or ``exp(-t^2 / (2 sigma^2))``
    at distance ``t`` from the centre when ``sigma`` is given. Points are splatted bilinearly
    (anti-aliased). Returns a float32 kernel that sums to 1.
    """
    if radius < 0:
        raise ConStyleError(f"line_kernel: radius must be >= 0, got {radius}")
    r = int(math.ceil(radius))
    size = 2 * r + 1
    kernel = np.zeros((size, size), np.float64)
    if r == 0:
        kernel[0, 0] = 1.0
        return kernel.astype(np.float32)
    n = max(2, int(math.ceil(radius * samples_per_pixel)) + 1)
    t = np.linspace(0.0 if one_sided else -radius, radius, n * (1 if one_sided else 2))
    weight = np.ones_like(t) if sigma is None else np.exp(-t ** 2 / (2.0 * sigma ** 2))
    a = math.radians(angle)
    xs, ys = r + t * math.cos(a), r + t * math.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = np.clip(x0 + dx, 0, size - 1), np.clip(y0 + dy, 0, size - 1)
        np.add.at(kernel, (yi, xi), weight * wgt)
    return (kernel / kernel.sum()).astype(np.float32)


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """An anti-aliased disk (defocus) kernel of the given radius in pixels, summing to 1."""
    if radius <= 0:
        raise ConStyleError(f"disk_kernel: radius must be > 0, got {radius}")
    r = int(math.ceil(radius))
    size = 2 * r + 1
    offs = (np.arange(size * supersample) + 0.5) / supersample - (r + 0.5)
    yy, xx = np.meshgrid(offs, offs, indexing="ij")
    inside = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    kernel = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


# --------------------------------------------------------------------------------------------
# Weather (ImageNet-C style)
# --------------------------------------------------------------------------------------------

# ImageNet-C contrast factors for severities 1..5
CONTRAST_LEVELS = (0.4, 0.3, 0.2, 0.1, 0.05)

# Snow: (mean, std of the snow layer, zoom, threshold, blur radius, blur sigma, image weight) per
# severity 1..5. SNOW_PARAMS is the table the ConStyle v2 authors' code uses (ImageNet-C's
# table for Tiny-ImageNet sized pictures); IMAGENET_C_SNOW_PARAMS is the one for 224 px ImageNet.
SNOW_PARAMS = (
    (0.1, 0.2, 1.0, 0.6, 8, 3, 0.8),
    (0.1, 0.2, 1.0, 0.5, 10, 4, 0.8),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
)
IMAGENET_C_SNOW_PARAMS = (
    (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)


def _severity(severity: int) -> int:
    if int(severity) != severity or not 1 <= severity <= 5:
        raise ConStyleError(f"severity must be an integer in 1..5, got {severity}")
    return int(severity)


def contrast(img: Image, severity: int = 1) -> Image:
    """ImageNet-C contrast: ``clip((x - mean) * c + mean, 0, 1)``, per-channel spatial mean.

    ``img``: H x W x 3 float in [0, 1]; ``c = CONTRAST_LEVELS[severity - 1]``.
    """
    x = _check_image(img)
    c = CONTRAST_LEVELS[_severity(severity) - 1]
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * c + mean, 0, 1).astype(np.float32)


def _clipped_zoom(layer: np.ndarray, zoom: float) -> np.ndarray:
    """Zoom into the centre by ``zoom`` (>= 1) and keep the original size."""
    h, w = layer.shape
    if zoom <= 1.0:
        return layer
    ch, cw = max(1, int(math.ceil(h / zoom))), max(1, int(math.ceil(w / zoom)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(layer[top:top + ch, left:left + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def snow(img: Image, severity: int = 1, rng: Optional[np.random.Generator] = None,
         params: Sequence[Sequence[float]] = SNOW_PARAMS) -> Image:
    """ImageNet-C style snow on an H x W x 3 float image in [0, 1].

    A snow layer drawn from N(mean, std) per pixel is zoomed, thresholded, motion-blurred along
    a random direction in [-135, -45] degrees with a one-sided Gaussian line kernel
    (:func:`line_kernel`, ImageMagick's ``-motion-blur radius x sigma`` trail of ``2 radius + 1``
    taps), then the image is blended with a brightened grey copy and the layer is added twice
    (as drawn and rotated by 180 degrees). ``params``: the per-severity table
    (:data:`SNOW_PARAMS`, the authors' choice, by default).
    """
    x = _check_image(img)
    rng = np.random.default_rng() if rng is None else rng
    mean, std, zoom, threshold, radius, sigma, weight = params[_severity(severity) - 1]
    h, w = x.shape[:2]
    layer = rng.normal(loc=mean, scale=std, size=(h, w)).astype(np.float32)
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    # ImageMagick works on an 8-bit PNG of the layer; keep that quantisation
    layer = np.round(layer * 255) / 255
    kernel = line_kernel(2 * radius, float(rng.uniform(-135, -45)), sigma=sigma, one_sided=True)
    layer = _convolve(layer.astype(np.float32), kernel)[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = weight * x + (1 - weight) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1).astype(np.float32)


def weather(img: Image, rng: Optional[np.random.Generator] = None) -> Image:
    """The authors' stage-1 weather: contrast (severity 1), snow (1), then snow (2)."""
    rng = np.random.default_rng() if rng is None else rng
    out = contrast(img, 1)
    out = snow(out, 1, rng)
    return snow(out, 2, rng)


# --------------------------------------------------------------------------------------------
# All-in-one degradations: f(img H x W x 3 float32 [0, 1], rng) -> same
# --------------------------------------------------------------------------------------------

def gaussian_noise(img: Image, rng: np.random.Generator, sigma: Optional[float] = None) -> Image:
    """Additive white Gaussian noise, ``sigma ~ U(10, 50)`` on the 0-255 scale, clipped."""
    x = _check_image(img)
    sigma = float(rng.uniform(10, 50)) if sigma is None else float(sigma)
    noisy = x + rng.normal(0.0, sigma / 255.0, size=x.shape).astype(np.float32)
    return np.clip(noisy, 0, 1).astype(np.float32)


def jpeg(img: Image, rng: np.random.Generator, quality: Optional[int] = None, shift_y: int = 0,
         shift_x: int = 0) -> Image:
    """JPEG compression through OpenCV, ``quality ~ randint(10, 50)`` (both ends included).

    ``shift_y`` / ``shift_x`` (0 to 7): the 8 x 8 block grid starts this many pixels above / left of
    the image's corner (the image is reflect-padded, encoded, and cut back), as in a crop taken from
    a larger JPEG; 0 puts the grid at the corner.
    """
    x = _check_image(img)
    quality = int(rng.integers(10, 51)) if quality is None else int(quality)
    sy, sx = int(shift_y), int(shift_x)
    if not (0 <= sy < 8 and 0 <= sx < 8):
        raise ConStyleError(f"jpeg: shift_y and shift_x must be in 0..7, got {shift_y}, {shift_x}")
    if sy or sx:
        x = np.pad(x, ((sy, 0), (sx, 0), (0, 0)), mode="reflect" if min(x.shape[:2]) > max(sy, sx) else "edge")
    u8 = cv2.cvtColor(np.clip(np.round(x * 255), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", u8, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ConStyleRuntimeError(f"jpeg: OpenCV could not encode an image of shape {x.shape}")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[sy:, sx:]
    return (cv2.cvtColor(dec, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)


def motion_blur(img: Image, rng: np.random.Generator, radius: Optional[float] = None,
                angle: Optional[float] = None) -> Image:
    """Linear motion blur: uniform line kernel, ``radius ~ U(3, 12)`` px, angle ``~ U(0, 180)``."""
    x = _check_image(img)
    radius = float(rng.uniform(3, 12)) if radius is None else float(radius)
    angle = float(rng.uniform(0, 180)) if angle is None else float(angle)
    return np.clip(_convolve(x, line_kernel(radius, angle)), 0, 1).astype(np.float32)


def defocus_blur(img: Image, rng: np.random.Generator, radius: Optional[float] = None) -> Image:
    """Defocus blur with an anti-aliased disk kernel, ``radius ~ U(2, 7)`` px."""
    x = _check_image(img)
    radius = float(rng.uniform(2, 7)) if radius is None else float(radius)
    return np.clip(_convolve(x, disk_kernel(radius)), 0, 1).astype(np.float32)


def _smooth_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth synthetic depth map in [0, 1]: a tilted ramp (far at the top) + coarse noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = float(rng.uniform(-0.5, 0.5))
    ramp = (1.0 - yy / max(h - 1, 1)) + tilt * (xx / max(w - 1, 1) - 0.5)
    coarse = rng.random((4, 4)).astype(np.float32)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    depth = 0.7 * ramp + 0.3 * coarse
    depth -= depth.min()
    return depth / max(float(depth.max()), 1e-6)


def haze(img: Image, rng: np.random.Generator, beta: Optional[float] = None,
         airlight: Optional[float] = None) -> Image:
    """Haze by the atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``d`` is a smooth synthetic depth map in [0.2, 1] (far at the top), ``beta ~ U(0.8, 2.5)``,
    the airlight ``A ~ U(0.7, 1.0)`` (grey, with a small per-channel tint).
    """
    x = _check_image(img)
    h, w = x.shape[:2]
    beta = float(rng.uniform(0.8, 2.5)) if beta is None else float(beta)
    a = float(rng.uniform(0.7, 1.0)) if airlight is None else float(airlight)
    tint = rng.uniform(-0.03, 0.03, size=3) if airlight is None else np.zeros(3)
    airlight_rgb = np.clip(a + tint, 0, 1).reshape(1, 1, 3).astype(np.float32)
    depth = 0.2 + 0.8 * _smooth_depth(h, w, rng)
    t = np.exp(-beta * depth)[..., None].astype(np.float32)
    return np.clip(x * t + airlight_rgb * (1 - t), 0, 1).astype(np.float32)


def rain(img: Image, rng: np.random.Generator, density: Optional[float] = None,
         length: Optional[float] = None, angle: Optional[float] = None,
         strength: Optional[float] = None) -> Image:
    """Synthetic rain streaks added to the image.

    Sparse drops (``density ~ U(0.002, 0.01)`` of the pixels) are smeared along a slanted
    near-vertical line (``angle ~ 90 +- U(-25, 25)`` degrees, half-length ``~ U(6, 18)`` px),
    slightly thickened, and added with strength ``~ U(0.5, 0.9)``.
    """
    x = _check_image(img)
    h, w = x.shape[:2]
    density = float(rng.uniform(0.002, 0.01)) if density is None else float(density)
    length = float(rng.uniform(6, 18)) if length is None else float(length)
    angle = float(90 + rng.uniform(-25, 25)) if angle is None else float(angle)
    drops = (rng.random((h, w)) < density).astype(np.float32)
    drops *= rng.uniform(0.6, 1.0, size=(h, w)).astype(np.float32)
    kernel = line_kernel(length, angle)
    # the kernel averages over the line; rescale so a streak keeps its drop's brightness
    streaks = _convolve(drops, kernel) * (2 * length + 1)
    streaks = cv2.GaussianBlur(streaks, (3, 3), 0.6)
    strength = float(rng.uniform(0.5, 0.9)) if strength is None else float(strength)
    return np.clip(x + strength * np.clip(streaks, 0, 1)[..., None], 0, 1).astype(np.float32)


def snow_degradation(img: Image, rng: np.random.Generator,
                     severity: Optional[int] = None) -> Image:
    """Snow for the all-in-one set: :func:`snow` at a severity drawn from 1..3."""
    severity = int(rng.integers(1, 4)) if severity is None else int(severity)
    return snow(img, severity, rng)


def low_light(img: Image, rng: np.random.Generator, gamma: Optional[float] = None,
              scale: Optional[float] = None, noise: Optional[float] = None) -> Image:
    """Low light: ``scale * x ** gamma`` plus a little Gaussian noise, clipped.

    ``gamma ~ U(1.5, 3)``, ``scale ~ U(0.15, 0.5)``, noise std ``~ U(0.002, 0.015)``.
    """
    x = _check_image(img)
    gamma = float(rng.uniform(1.5, 3.0)) if gamma is None else float(gamma)
    scale = float(rng.uniform(0.15, 0.5)) if scale is None else float(scale)
    noise = float(rng.uniform(0.002, 0.015)) if noise is None else float(noise)
    dark = scale * np.power(np.clip(x, 0, 1), gamma)
    dark = dark + rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return np.clip(dark, 0, 1).astype(np.float32)


ALL_IN_ONE: Dict[str, Callable[[Image, np.random.Generator], Image]] = {
    "noise": gaussian_noise,
    "jpeg": jpeg,
    "motion_blur": motion_blur,
    "defocus_blur": defocus_blur,
    "haze": haze,
    "rain": rain,
    "snow": snow_degradation,
    "low_light": low_light,
}
