"""``constyle inspect``: what the prompter sees in a set of images.

For each image: the latent prompt ``z2`` of the prompter, the degradation types its pre-training head
finds most likely (when the prompter ships one, see :mod:`constyle_plugin.core.degradation_head`), and whether
``z2`` lies near a cluster of the package's own reference degradations: the eight generators of
:data:`~constyle_plugin.data.degradations.ALL_IN_ONE` applied to a few clean references (dead-leaves images,
and offline sample photos when scikit-image is installed), plus the clean references themselves.

- :func:`reference_set`: the references' latents, types and sources.
- :func:`inspect_images`: an :class:`Inspection` of image files (table: :func:`format_table`, JSON:
  :meth:`Inspection.to_json`, picture: :func:`~constyle_plugin.tools.inspection_plot.draw_projection`).

The projection is a PCA (numpy SVD) fitted on the references only: the map is the same whatever images
are inspected, and its axes are the directions along which the trained degradations differ. Images
are projected onto it; the table's "near" column is measured in the full 128-D space, so an image the
plane shows on top of a cluster but that lies far from it along other directions is still reported far.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..core.degradation_head import DegradationHead, head_path, load_degradation_head
from ..data.degradations import ALL_IN_ONE
from ..errors import ImageReadError, InspectError
from ..data.imageio import IMAGE_EXTENSIONS, read_image
from ..core.prompter import ConStyleV2, default_prompter_path
from ..data.samples import dead_leaves

__all__ = ["CLEAN", "DEFAULT_SIZE", "Inspection", "References", "find_inspect_images", "format_table",
           "inspect_images", "reference_set"]

PathLike = Union[str, os.PathLike]
CLEAN = "clean"
# Longer side the prompter sees: larger images are shrunk to it, smaller ones seen whole (docs/inspect.md:
# shrinking averages noise, JPEG blocks and blur away, so the field's test images are kept at their pixels).
DEFAULT_SIZE = 1024
REFERENCE_SIZE = 256  # the references' side, whatever --size (measured: 512 px references change little)
REFERENCE_PHOTOS = ("astronaut", "rocket", "brick", "coins")
REFERENCE_DEAD_LEAVES = 4
NO_HEAD_NOTE = ("note: {path} carries no degradation head (no {sidecar}); the table gives the nearest "
                "reference types (distance to each type's centroid, in units of its radius) instead of probabilities")


# ------------------------------------------------------------------------------------------ images
def find_inspect_images(inputs: Sequence[PathLike]) -> List[Path]:
    """The image files of ``inputs`` (files, or folders searched recursively), sorted per folder, each
    once. Raises :class:`~constyle_plugin.errors.InspectError` for a path that does not exist or a folder
    without images."""
    if not inputs:
        raise InspectError("IMAGE: give at least one image file or folder")
    found: List[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise InspectError(f"{item}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            found.extend(files)
        else:
            raise InspectError(f"{item}: no such file or folder")
    seen, unique = set(), []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def fit_size(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` shrunk (area interpolation) so its longer side is ``size``; unchanged when it is not longer,
    or when ``size`` is 0 (the whole image)."""
    h, w = img.shape[:2]
    if size <= 0 or max(h, w) <= size:
        return img
    scale = size / max(h, w)
    return cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def latent(prompter: ConStyleV2, img: np.ndarray, device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """The latent prompt ``z2`` (128 floats) of one ``H x W x 3`` image in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
    return prompter(x).latent[0].float().cpu().numpy()


# ------------------------------------------------------------------------------------------ references
@dataclass
class References:
    """The package's reference degradations as the prompter sees them.

    latents: ``N x 128``; types: ``N`` names (:data:`CLEAN` or a name of ``ALL_IN_ONE``); sources: ``N``
    names of the clean picture each was made from; size: the longer side they were rendered at.
    """

    latents: np.ndarray
    types: List[str]
    sources: List[str]
    size: int

    def type_names(self) -> List[str]:
        """The reference types in a fixed order: ``clean``, then ``ALL_IN_ONE``'s order."""
        return [t for t in [CLEAN, *ALL_IN_ONE] if t in self.types]

    def clusters(self) -> Tuple[List[str], np.ndarray, np.ndarray]:
        """``(types, T x 128 centroids, T radii)``: a type's radius is the largest distance of its
        references from their centroid (at least 1e-6)."""
        names = self.type_names()
        types = np.array(self.types)
        centroids = np.stack([self.latents[types == t].mean(0) for t in names])
        radii = np.array([max(float(np.linalg.norm(self.latents[types == t] - c, axis=1).max()), 1e-6)
                          for t, c in zip(names, centroids)])
        return names, centroids, radii


def reference_pictures(size: Optional[int] = None, photos: bool = True,
                       dead_leaves_count: Optional[int] = None) -> List[Tuple[str, np.ndarray]]:
    """The clean references: ``dead_leaves_count`` (default :data:`REFERENCE_DEAD_LEAVES`) dead-leaves
    images of ``size`` px (default :data:`REFERENCE_SIZE`; seeded) and, when ``photos`` and scikit-image is
    installed, the sample photos :data:`REFERENCE_PHOTOS` shrunk to ``size``;
    ``[(name, H x W x 3 float32 in [0, 1])]``."""
    size = REFERENCE_SIZE if size is None else size
    dead_leaves_count = REFERENCE_DEAD_LEAVES if dead_leaves_count is None else dead_leaves_count
    pictures = [(f"dead_leaves_{i}", dead_leaves(size, np.random.default_rng([7, i])).astype(np.float32) / 255.0)
                for i in range(dead_leaves_count)]
    if photos and _has_skimage():
        from ..data.samples import SamplePhotoWarning, sample_photos

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SamplePhotoWarning)
            for name, rgb in sample_photos(REFERENCE_PHOTOS):
                pictures.append((name, fit_size(rgb.astype(np.float32) / 255.0, size)))
    return pictures


def _has_skimage() -> bool:
    import importlib.util

    return importlib.util.find_spec("skimage") is not None


def reference_set(prompter: ConStyleV2, size: Optional[int] = None, photos: bool = True,
                  dead_leaves_count: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                  seed: int = 0) -> References:
    """Each clean reference of :func:`reference_pictures` as it is and degraded by each generator of
    ``ALL_IN_ONE`` (parameters drawn from a generator seeded by ``(seed, picture, type)``: the same set on
    every run), encoded by ``prompter``."""
    latents, types, sources = [], [], []
    for i, (name, clean) in enumerate(reference_pictures(size, photos, dead_leaves_count)):
        for k, kind in enumerate([CLEAN, *ALL_IN_ONE]):
            img = clean if kind == CLEAN else ALL_IN_ONE[kind](clean, np.random.default_rng([seed, i, k]))
            latents.append(latent(prompter, img, device))
            types.append(kind)
            sources.append(name)
    return References(np.stack(latents), types, sources, REFERENCE_SIZE if size is None else size)


# ------------------------------------------------------------------------------------------ projection
@dataclass
class Projection:
    """A 2-D PCA: ``xy = (z - mean) @ components.T``; ``explained``: the share of the fitted points'
    variance along each axis."""

    mean: np.ndarray
    components: np.ndarray  # 2 x 128
    explained: np.ndarray  # 2

    @classmethod
    def fit(cls, points: np.ndarray) -> "Projection":
        mean = points.mean(0)
        _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
        var = s ** 2
        explained = var[:2] / max(float(var.sum()), 1e-12)
        components = vt[:2]
        if components.shape[0] < 2:  # fewer than two distinct directions: pad with a zero axis
            components = np.vstack([components, np.zeros((2 - components.shape[0], points.shape[1]))])
            explained = np.pad(explained, (0, 2 - explained.shape[0]))
        return cls(mean, components, explained)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(points) - self.mean) @ self.components.T


# ------------------------------------------------------------------------------------------ the result
@dataclass
class ImageResult:
    """One image: where it came from, what the prompter saw, what the head (if any) and the references
    say. ``top``: ``[(type, probability)]`` best first (``None`` without a head); ``nearest``:
    ``[(type, distance / radius)]`` over all reference types, nearest first; ``xy``: its projection."""

    path: Path
    shape: Tuple[int, int]  # H x W the prompter saw
    latent: np.ndarray
    top: Optional[List[Tuple[str, float]]]
    nearest: List[Tuple[str, float]]
    xy: np.ndarray

    @property
    def predicted(self) -> str:
        """The head's most likely type, or the nearest reference type without a head."""
        return self.top[0][0] if self.top else self.nearest[0][0]

    @property
    def near(self) -> bool:
        """Whether the latent lies within the radius of the nearest reference cluster."""
        return self.nearest[0][1] <= 1.0


@dataclass
class Inspection:
    """What :func:`inspect_images` found (see :meth:`to_json` for the fields)."""

    prompter: str
    head: Optional[DegradationHead]
    size: int
    references: References
    projection: Projection
    images: List[ImageResult] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    root: Optional[Path] = None

    def name(self, path: Path) -> str:
        """How the table names an image: relative to the folder inspected when there is one."""
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return str(path)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: the prompter, whether it has a head, its classes, the size, the projection
        and, per image, the top types with probabilities (``null`` without a head), the nearest reference
        types with their distance in cluster radii, whether it is near one, and its 2-D point; the
        references' points and types too."""
        ref_xy = self.projection(self.references.latents)
        return {
            "prompter": self.prompter,
            "head": None if self.head is None else {"classes": list(self.head.classes)},
            "size": self.size,
            "projection": {"fitted_on": "references", "explained_variance": [round(float(v), 4)
                                                                              for v in self.projection.explained]},
            "images": [{
                "path": str(r.path), "name": self.name(r.path), "size_seen": list(r.shape),
                "predicted": r.predicted,
                "top": None if r.top is None else [{"type": t, "probability": round(p, 4)} for t, p in r.top],
                "nearest_references": [{"type": t, "distance_in_radii": round(d, 3)} for t, d in r.nearest],
                "near_reference": r.near, "xy": [round(float(v), 4) for v in r.xy],
            } for r in self.images],
            "skipped": [{"path": str(p), "reason": why} for p, why in self.skipped],
            "references": [{"type": t, "source": s, "xy": [round(float(v), 4) for v in xy]}
                           for t, s, xy in zip(self.references.types, self.references.sources, ref_xy)],
        }


def load_prompter(path: Optional[PathLike]) -> Tuple[ConStyleV2, Path]:
    """The prompter to inspect with (default: the packaged one), refused with an InspectError naming the
    file when there is none."""
    if path is None:
        path = default_prompter_path()
        if path is None:
            raise InspectError("--prompter: this installation packages no prompter; pass --prompter PATH")
    path = Path(path)
    if not path.is_file():
        raise InspectError(f"--prompter: {path} " + ("is a folder, not a prompter file" if path.is_dir()
                                                     else "does not exist"))
    return ConStyleV2.from_pretrained(path), path


def inspect_images(inputs: Sequence[PathLike], prompter: Optional[PathLike] = None, size: int = DEFAULT_SIZE,
                   top: int = 3, device: Union[str, torch.device] = "cpu", references: Optional[References] = None,
                   show_progress: Optional[bool] = None) -> Inspection:
    """Inspect image files and folders (``inputs``) with the prompter at ``prompter`` (default: the
    packaged one).

    ``size``: the longer side the prompter sees (larger images are shrunk to it, smaller ones seen whole;
    0: every image whole). ``top``: how many types per image. ``references``: a :class:`References` made with this prompter (default: :func:`reference_set`).
    ``show_progress``: a progress bar over the images (``None``: when stderr is a terminal). An unreadable
    file inside a folder is skipped and listed in ``skipped``; one named directly raises
    :class:`~constyle_plugin.errors.ImageReadError`.
    """
    if not isinstance(size, int) or size < 0 or 0 < size < 16:
        raise InspectError(f"--size: expected 0 (whole images) or a side of at least 16 px, got {size!r}")
    paths = find_inspect_images(inputs)
    named = {Path(p).resolve() for p in inputs if Path(p).is_file()}
    net, prompter_path = load_prompter(prompter)
    net = net.to(device)
    head = load_degradation_head(prompter_path, net, classes=list(ALL_IN_ONE))
    limit = len(head.classes) if head is not None else 1 + len(ALL_IN_ONE)  # the references: clean and each type
    if not isinstance(top, int) or not 1 <= top <= limit:
        raise InspectError(f"--top: expected 1 to {limit} (the types the " +
                           ("head names" if head is not None else "references hold") + f"), got {top!r}")
    if references is None:
        references = reference_set(net, device=device)
    types, centroids, radii = references.clusters()
    projection = Projection.fit(references.latents)
    dirs = [Path(p) for p in inputs if Path(p).is_dir()]
    result = Inspection(str(prompter_path), head, size, references, projection,
                        root=dirs[0] if len(inputs) == 1 and dirs else None)
    if head is not None:
        head = head.to(device)
    for path in tqdm(paths, desc="inspect", unit="img", disable=None if show_progress is None else not show_progress):
        try:
            img = fit_size(read_image(path), size)
        except ImageReadError as exc:
            if path.resolve() in named:
                raise
            result.skipped.append((path, str(exc)))
            continue
        z = latent(net, img, device)
        ratios = np.linalg.norm(centroids - z, axis=1) / radii
        nearest = sorted(zip(types, map(float, ratios)), key=lambda item: item[1])
        ranked = None
        if head is not None:
            probs = head.probabilities(torch.from_numpy(z)[None].to(device))[0].cpu().numpy()
            order = np.argsort(-probs)[:top]
            ranked = [(head.classes[i], float(probs[i])) for i in order]
        result.images.append(ImageResult(path, img.shape[:2], z, ranked, nearest, projection(z)[0]))
    if not result.images:
        raise InspectError(f"IMAGE: none of the {len(paths)} file(s) could be read (first: {result.skipped[0][1]})")
    return result


# ------------------------------------------------------------------------------------------ the table
def format_table(result: Inspection, top: int = 3) -> str:
    """The table ``constyle inspect`` prints: image, its ``top`` types (with the head: probability in %;
    without: distance to the type's references in cluster radii), and whether it is near a reference
    cluster (``yes (type)``, or ``no (type at 2.3x)``: its distance to the nearest one, in that
    cluster's radius)."""
    if result.head is not None:
        title = f"most likely degradations (top {top})"
        cells = [" | ".join(f"{t} {100 * p:.0f}%" for t, p in r.top[:top]) for r in result.images]
    else:
        title = f"nearest reference types (top {top}; distance in cluster radii)"
        cells = [" | ".join(f"{t} {d:.1f}x" for t, d in r.nearest[:top]) for r in result.images]
    near = [f"yes ({r.nearest[0][0]})" if r.near else f"no ({r.nearest[0][0]} at {r.nearest[0][1]:.2f}x)"
            for r in result.images]
    names = [result.name(r.path) for r in result.images]
    header = ("image", title, "near a reference cluster")
    widths = [max(len(header[0]), *map(len, names)), max(len(header[1]), *map(len, cells)), len(header[2])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in zip(names, cells, near)]
    return "\n".join(lines)
