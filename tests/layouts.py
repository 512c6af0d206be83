"""Miniature copies of the all-in-one benchmark layouts, for tests.

Built from the offline sample photos (scikit-image / matplotlib, :mod:`constyle_plugin.data.samples`), cropped
to 96-160 px, degraded with the plugin's own degradations (:mod:`constyle_plugin.data.degradations`) and saved
under the real file names (see ``constyle_plugin/data/benchmark_layouts.py`` and docs/allinone-benchmarks.md):

- :func:`make_three_task` / :func:`make_five_task` -> ``(root/Train, root/test)``, plus PromptIR's list
  files naming every training file in ``root/data_dir`` (``noisy/denoise.txt``, ``rainy/rainTrain.txt``,
  ``hazy/hazy_outside.txt``);
- :func:`make_constyle_v2_suite` -> ``root/Test_small``.

Every task gets ``n`` pictures (dehazing training: two hazy images per clear one, in ``part1`` and
``part2``, as RESIDE OTS has several). Test images have sides that are not multiples of 16 or 32 so the
settings' crops show; some training images are smaller than a 128 px patch. The same arguments build the
same files (fixed seeds). Building a layout takes well under a second.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import numpy as np

from constyle_plugin.data import degradations as deg
from constyle_plugin.data.samples import sample_photos

__all__ = ["PHOTOS", "SIZES", "make_constyle_v2_suite", "make_five_task", "make_three_task", "picture", "write"]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle", "hubble_deep_field", "brick")
# (height, width) of the k-th picture: none a multiple of 16; the first is shorter than a 128 px patch.
SIZES = ((100, 131), (150, 118), (137, 160), (121, 141), (158, 99), (109, 153))


def picture(k: int, size: Tuple[int, int] = None) -> np.ndarray:
    """The k-th test picture: ``H x W x 3`` float32 RGB in [0, 1], a crop of a downscaled sample photo,
    exactly representable in 8 bit (so a PNG round-trip is lossless)."""
    name = PHOTOS[k % len(PHOTOS)]
    photo = dict(sample_photos([name]))[name]
    h, w = size or SIZES[k % len(SIZES)]
    factor = max(1.0, min(photo.shape[0] / (1.6 * h), photo.shape[1] / (1.6 * w)))
    small = cv2.resize(photo, (round(photo.shape[1] / factor), round(photo.shape[0] / factor)),
                       interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(1000 + k)
    top = int(rng.integers(0, small.shape[0] - h + 1))
    left = int(rng.integers(0, small.shape[1] - w + 1))
    return small[top:top + h, left:left + w].astype(np.float32) / 255.0


def write(path: Path, img: np.ndarray, quality: int = 95) -> Path:
    """Save ``H x W x 3`` RGB in [0, 1] at ``path`` (format from the suffix; JPEG at ``quality``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(np.clip(np.round(img * 255), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"cannot write {path}")
    return path


def _degrade(name: str, **params) -> Callable[[np.ndarray, int], np.ndarray]:
    fn = deg.ALL_IN_ONE[name] if name in deg.ALL_IN_ONE else getattr(deg, name)
    return lambda img, seed: fn(img, np.random.default_rng(seed), **params)


RAIN = _degrade("rain", density=0.006)
HAZE = _degrade("haze", beta=1.0)
MOTION = _degrade("motion_blur", radius=5.0)
DEFOCUS = _degrade("defocus_blur", radius=3.0)
LOW = _degrade("low_light")
SNOW = _degrade("snow", severity=2)


def _pairs(lq_dir: Path, gt_dir: Path, names: List[Tuple[str, str]], degrade, first: int) -> None:
    for i, (lq_name, gt_name) in enumerate(names):
        clean = picture(first + i)
        write(gt_dir / gt_name, clean)
        write(lq_dir / lq_name, degrade(clean, first + i))


def _train(root: Path, n: int, five: bool) -> Path:
    train = root / "Train"
    lists = root / "data_dir"
    denoise = [f"{i + 1:03d}{('.png', '.jpg', '.bmp')[i % 3]}" for i in range(n)]
    for i, name in enumerate(denoise):
        write(train / "Denoise" / name, picture(i), quality=100)
    rain = [(f"rain-{i + 1}.png", f"norain-{i + 1}.png") for i in range(n)]
    _pairs(train / "Derain" / "rainy", train / "Derain" / "gt", rain, RAIN, 10)
    hazy = []
    for i in range(n):
        clean = picture(20 + i)
        write(train / "Dehaze" / "original" / f"{i + 1:04d}.jpg", clean, quality=100)
        for part, (a, beta) in ((1, ("0.8", "0.1")), (2, ("1", "0.16"))):
            rel = f"synthetic/part{part}/{i + 1:04d}_{a}_{beta}.jpg"
            write(train / "Dehaze" / rel, HAZE(clean, 100 * part + i))
            hazy.append(rel)
    if five:
        blur = [(f"GOPR0372_07_00_{i:06d}.png",) * 2 for i in range(n)]
        _pairs(train / "Deblur" / "blur", train / "Deblur" / "sharp", blur, MOTION, 30)
        low = [(f"{i + 2}.png",) * 2 for i in range(n)]
        _pairs(train / "Enhance" / "low", train / "Enhance" / "gt", low, LOW, 40)
    for rel, lines in (("noisy/denoise.txt", denoise), ("rainy/rainTrain.txt", [f"rainy/{q}" for q, _ in rain]),
                       ("hazy/hazy_outside.txt", hazy)):
        (lists / rel).parent.mkdir(parents=True, exist_ok=True)
        (lists / rel).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return train


def _test(root: Path, n: int, five: bool) -> Path:
    test = root / "test"
    for i in range(n):
        write(test / "denoise" / "bsd68" / f"{i + 1:03d}.png", picture(50 + i))
    rain = [(f"rain-{i + 1:03d}.png",) * 2 for i in range(n)]
    _pairs(test / "derain" / "Rain100L" / "input", test / "derain" / "Rain100L" / "target", rain, RAIN, 60)
    haze = [(f"{i + 1:04d}_0.8_0.2.jpg", f"{i + 1:04d}.png") for i in range(n)]
    _pairs(test / "dehaze" / "input", test / "dehaze" / "target", haze, HAZE, 70)
    if five:
        blur = [(f"GOPR0384_11_00_{i:06d}.png",) * 2 for i in range(n)]
        _pairs(test / "deblur" / "gopro" / "input", test / "deblur" / "gopro" / "target", blur, MOTION, 80)
        low = [(f"{i + 1}.png",) * 2 for i in range(n)]
        _pairs(test / "enhance" / "lol" / "input", test / "enhance" / "lol" / "target", low, LOW, 90)
    return test


def make_three_task(root, n: int = 2) -> Tuple[Path, Path]:
    """A three-task training root and test root under ``root``: ``(root/Train, root/test)``."""
    root = Path(root)
    return _train(root, n, five=False), _test(root, n, five=False)


def make_five_task(root, n: int = 2) -> Tuple[Path, Path]:
    """A five-task training root and test root under ``root``: ``(root/Train, root/test)``."""
    root = Path(root)
    return _train(root, n, five=True), _test(root, n, five=True)


def make_constyle_v2_suite(root, n: int = 2) -> Path:
    """The ConStyle v2 authors' test suite under ``root``: returns ``root/Test_small``."""
    suite = Path(root) / "Test_small"

    def folder(name: str, names: List[Tuple[str, str]], degrade, first: int) -> None:
        _pairs(suite / name / "lq", suite / name / "hq", names, degrade, first)

    folder("blur_small", [(f"GOPR0410_11_00_{i:06d}.png",) * 2 for i in range(n)], MOTION, 100)
    folder("haze_small", [(f"{i + 1:04d}_0.8_0.2.jpg", f"{i + 1:04d}.png") for i in range(n)], HAZE, 110)
    folder("rain_small", [(f"{i + 1}.png",) * 2 for i in range(n)], RAIN, 120)
    for i in range(n):
        write(suite / "noise_small" / f"{i + 1:02d}.png", picture(130 + i))
    for i in range(n):  # LIVE1: clean .bmp, JPEG q20 .jpg (OpenCV's encoder, as degradations.jpeg uses)
        clean = picture(140 + i)
        write(suite / "jpeg_full" / "hq" / f"photo{i + 1}.bmp", clean)
        write(suite / "jpeg_full" / "lq" / "20" / f"photo{i + 1}.jpg", clean, quality=20)
    folder("enhancement_full_lol1", [(f"{i + 1}.png",) * 2 for i in range(n)], LOW, 150)
    folder("defocus_small", [(f"{i + 1:03d}_blurred.png", f"{i + 1:03d}_sharp.png") for i in range(n)], DEFOCUS, 160)
    folder("snow_small", [(f"snow_{i + 1:05d}.jpg",) * 2 for i in range(n)], SNOW, 170)
    return suite
