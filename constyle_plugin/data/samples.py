"""Offline sample photos: real pictures that ship with scikit-image and matplotlib.

They let every option file, test and benchmark of the plugin run without downloading a data set:
``export_sample_photos(folder)`` writes them as PNG files that the datasets of
:mod:`constyle_plugin.data.datasets` read like any other image folder, and
``export_sample_classes(folder)`` writes an ImageFolder-style class tree (one class per photo)
for the stage-1 pre-training dataset.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..files import atomic_write
from ..errors import ConStyleError, ConStyleTypeError, ImageReadError, ImageWriteError

PathLike = Union[str, "os.PathLike[str]"]

# The explicit list, checked against scikit-image 0.26 offline (its bundled files).
# Left out on purpose: ``cat`` (the same picture as ``chelsea``), ``microaneurysms`` (102 x 102),
# the synthetic or binary ones (``checkerboard``, ``logo``, ``horse``, ``binary_blobs``,
# ``shepp_logan_phantom``) and the ones scikit-image fetches from the network through pooch
# (``eagle``, ``kidney``, ``lily``, ``skin``, ``brain``, ...).
SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "colorwheel", "motorcycle")
SKIMAGE_GRAY = ("camera", "brick", "grass", "gravel", "moon", "text", "coins", "page", "clock",
                "cell")
MATPLOTLIB = ("grace_hopper",)
SAMPLE_NAMES: Tuple[str, ...] = SKIMAGE_COLOR + SKIMAGE_GRAY + MATPLOTLIB


class SamplePhotoWarning(UserWarning):
    """A listed sample photo could not be loaded in this environment."""


def _load_skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":  # left view of the stereo pair
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _load_matplotlib(name: str) -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data(f"{name}.jpg", asfileobj=False)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(f"cannot decode {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _to_rgb_uint8(name: str, img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ConStyleTypeError(f"sample photo {name!r}: expected uint8, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ConStyleError(f"sample photo {name!r}: unexpected shape {img.shape}")
    return np.ascontiguousarray(img)


@functools.lru_cache(maxsize=1)
def _all_photos() -> Tuple[Tuple[str, np.ndarray], ...]:
    loaders: Dict[str, Callable[[str], np.ndarray]] = {}
    for n in SKIMAGE_COLOR + SKIMAGE_GRAY:
        loaders[n] = _load_skimage
    for n in MATPLOTLIB:
        loaders[n] = _load_matplotlib
    out = []
    for name in SAMPLE_NAMES:
        try:
            img = _to_rgb_uint8(name, loaders[name](name))
        except Exception as exc:  # missing optional package or data file: say which, keep going
            warnings.warn(f"sample photo {name!r} is not available here and is left out "
                          f"({type(exc).__name__}: {exc})", SamplePhotoWarning, stacklevel=3)
            continue
        img.setflags(write=False)  # cached: callers get read-only arrays, copy to modify
        out.append((name, img))
    return tuple(out)


def sample_photos(names: Optional[Iterable[str]] = None) -> List[Tuple[str, np.ndarray]]:
    """The offline sample photos as ``[(name, H x W x 3 uint8 RGB array), ...]``.

    Grayscale pictures are repeated to three channels. The arrays are cached and read-only.
    ``names`` picks a subset (in the given order); an unknown name raises ``ValueError``.
    A listed photo that cannot be loaded here (an optional package missing) is left out with a
    :class:`SamplePhotoWarning` naming it.
    """
    photos = _all_photos()
    if names is None:
        return list(photos)
    table = dict(photos)
    names = list(names)
    unknown = [n for n in names if n not in SAMPLE_NAMES]
    if unknown:
        raise ConStyleError(f"unknown sample photo(s) {unknown}; available: {list(SAMPLE_NAMES)}")
    return [(n, table[n]) for n in names if n in table]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageWriteError(f"cannot encode {path} as PNG")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(buf.tobytes())

    atomic_write(path, write)


def export_sample_photos(folder: PathLike, names: Optional[Iterable[str]] = None) -> List[Path]:
    """Write the sample photos as ``folder/<name>.png`` and return their paths.

    Idempotent: a file that already exists is kept as it is. Each write is atomic, so parallel
    processes (several dataloader workers, several ranks) can call this at the same time.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in sample_photos(names):
        path = folder / f"{name}.png"
        if not path.exists():
            _write_png(path, img)
        paths.append(path)
    return paths


def export_sample_classes(folder: PathLike, crops_per_photo: int = 8, crop_size: int = 256,
                          names: Optional[Iterable[str]] = None, seed: int = 0) -> List[Path]:
    """Write an ImageFolder-style tree ``folder/<photo name>/<i>.png``: one class per photo.

    Each class holds ``crops_per_photo`` square crops of side ``crop_size`` (or the photo's
    shorter side, when smaller) at positions drawn from a generator seeded by ``seed`` and the
    photo's name, so the tree is the same on every machine. Idempotent and atomic like
    :func:`export_sample_photos`. Returns the paths of all crops.
    """
    if crops_per_photo < 1 or crop_size < 1:
        raise ConStyleError(f"crops_per_photo ({crops_per_photo}) and crop_size ({crop_size}) "
                         "must be positive")
    folder = Path(folder)
    paths = []
    for name, img in sample_photos(names):
        rng = np.random.default_rng([seed, *name.encode()])
        h, w = img.shape[:2]
        s = min(crop_size, h, w)
        for i in range(crops_per_photo):
            top = int(rng.integers(0, h - s + 1))
            left = int(rng.integers(0, w - s + 1))
            path = folder / name / f"{i}.png"
            if not path.exists():
                _write_png(path, img[top:top + s, left:left + s])
            paths.append(path)
    return paths


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 2.0, r_max: float = 64.0,
                disks: Optional[int] = None) -> np.ndarray:
    """A dead-leaves image: ``size x size x 3`` uint8 RGB, occluding disks of random colour.

    Radii follow the scale-invariant law ``p(r) ~ r^-3`` on ``[r_min, r_max]`` px, which gives the
    power spectrum and edge statistics of natural images (the dead-leaves model used in the
    restoration literature to train without photos); each disk is drawn over the earlier ones
    until ``disks`` (default: enough to cover the canvas several times) have fallen.
    """
    if size < 8 or not 0 < r_min < r_max:
        raise ConStyleError(f"dead_leaves: need size >= 8 and 0 < r_min < r_max, got size={size}, "
                         f"r_min={r_min}, r_max={r_max}")
    if disks is None:
        disks = int(12 * size * size / (np.pi * r_min * r_max))
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = rng.integers(0, 256, size=3)
    # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    u = rng.uniform(size=disks)
    radii = (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5
    centres = rng.integers(-int(r_max) // 2, size + int(r_max) // 2, size=(disks, 2))
    colours = rng.integers(0, 256, size=(disks, 3))
    for (x, y), r, c in zip(centres, radii, colours):
        cv2.circle(canvas, (int(x), int(y)), int(round(r)), tuple(int(v) for v in c), -1,
                   lineType=cv2.LINE_AA)
    return canvas


def export_dead_leaves(folder: PathLike, count: int, size: int = 256, seed: int = 0) -> List[Path]:
    """Write ``count`` dead-leaves images (:func:`dead_leaves`) as an ImageFolder-style tree,
    ``folder/dead_leaves_<i>/0.png``, one class each. Image ``i`` is drawn from a generator seeded
    by ``(seed, i)``, so the tree is the same on every machine; idempotent and atomic like
    :func:`export_sample_photos`."""
    if count < 0 or size < 8:
        raise ConStyleError(f"export_dead_leaves: count ({count}) must be >= 0 and size ({size}) >= 8")
    folder = Path(folder)
    paths = []
    for i in range(count):
        path = folder / f"dead_leaves_{i:04d}" / "0.png"
        if not path.exists():
            _write_png(path, dead_leaves(size, np.random.default_rng([seed, i])))
        paths.append(path)
    return paths


def split_by_photo(names: Sequence[str], val_fraction: float = 0.2,
                   seed: int = 0) -> Tuple[List[str], List[str]]:
    """Split photo names into ``(train, val)`` with no photo in both.

    Deterministic for a given set of names and ``seed`` (the input order does not matter).
    ``val`` gets ``round(val_fraction * n)`` photos, at least one when ``val_fraction > 0``,
    and ``train`` keeps at least one. Duplicated names count once.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConStyleError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(names))
    if not unique:
        raise ConStyleError("split_by_photo: no photo names given")
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0:
        n_val = max(1, n_val)
    n_val = min(n_val, len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    val = sorted(unique[i] for i in order[:n_val])
    train = sorted(unique[i] for i in order[n_val:])
    return train, val
