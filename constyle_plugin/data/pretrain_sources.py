"""Stage-1 content and degradations from real images, for :class:`~constyle_plugin.data.datasets.ConStylePretrainDataset`.

Three pieces, each read from one dataset option:

* :func:`photo_folder_images` (``photo_folders``, ``holdout_every``, ``split``): folders of real
  photos (BSD400, say), every image its own class, with a deterministic held-out part for
  development (every N-th image in sorted order).
* :class:`RealDegraded` (``real_degraded``, ``real_degraded_prob``): images that really carry a
  degradation (rainy frames, camera noise, ...), by type: a query of that type is, with the given
  probability, a crop of one of them instead of a generator's output.
* :class:`DegradationRanges` (``degradation_ranges``): the parameter ranges the eight generators of
  :data:`~constyle_plugin.data.degradations.ALL_IN_ONE` draw from in stage 1, where the generators'
  defaults do not cover what real images show (light rain, for example).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import degradations as deg
from ..errors import OptionError, did_you_mean

__all__ = ["DegradationRanges", "RealDegraded", "holdout_split", "photo_folder_images"]

Scanner = Callable[[Path, str], List[Path]]

SPLITS = ("train", "holdout", "all")


def holdout_split(paths: Sequence[Path], every: int, split: str) -> List[Path]:
    """``paths`` (sorted) cut into a training and a held-out part: every ``every``-th file (the
    first, the ``every + 1``-th, ...) is held out. ``split``: ``'train'``, ``'holdout'`` or ``'all'``;
    ``every`` 0 holds nothing out."""
    ordered = sorted(paths)
    if split == "all" or every == 0:
        return ordered if split != "holdout" else []
    held = [i % every == 0 for i in range(len(ordered))]
    return [p for p, h in zip(ordered, held) if h == (split == "holdout")]


def _folders(value, option: str) -> List[Path]:
    if isinstance(value, (str, Path)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, Path)) for v in value):
        raise OptionError(option, f"expected a folder or a list of folders, got {value!r}")
    return [Path(v).expanduser() for v in value]


def split_options(opt: Mapping) -> Tuple[int, str]:
    """``holdout_every`` (an integer >= 0, default 0) and ``split`` (default ``'train'``), checked."""
    every = opt.get("holdout_every", 0) or 0
    if isinstance(every, bool) or not isinstance(every, int) or every < 0 or every == 1:
        raise OptionError("holdout_every", f"expected 0 (hold nothing out) or an integer >= 2, got {every!r}")
    split = opt.get("split", "train")
    if split not in SPLITS:
        hint = did_you_mean(split, SPLITS)
        raise OptionError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}"
                          + (f"; {hint}" if hint else ""))
    return every, split


def photo_folder_images(value, scan: Scanner, every: int, split: str) -> List[Path]:
    """The images of the folders named by the ``photo_folders`` option, searched recursively with
    ``scan(folder, option)``, in this split. Raises :class:`OptionError` for a folder without
    images."""
    found: List[Path] = []
    for folder in _folders(value, "photo_folders"):
        images = scan(folder, "photo_folders")
        if not images:
            raise OptionError("photo_folders", f"{folder} holds no readable image")
        found += holdout_split(images, every, split)
    return found


class RealDegraded:
    """Real degraded images by degradation type, from ``{type: folder or [folders]}``.

    Types are names of :data:`~constyle_plugin.data.degradations.ALL_IN_ONE` (others are refused with a
    did-you-mean). ``paths[type]`` lists the images of that type in this split;
    :meth:`pick` draws one with probability ``prob``.
    """

    def __init__(self, spec: Optional[Mapping], prob: float, scan: Scanner, every: int, split: str):
        self.paths: Dict[str, List[Path]] = {}
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise OptionError("real_degraded", f"expected {{type: folder or [folders]}}, got {spec!r}")
        for name, folders in spec.items():
            if name not in deg.ALL_IN_ONE:
                hint = did_you_mean(name, deg.ALL_IN_ONE)
                raise OptionError(f"real_degraded.{name}", "not a degradation type (one of "
                                  f"{', '.join(deg.ALL_IN_ONE)})" + (f"; {hint}" if hint else ""))
            images: List[Path] = []
            for folder in _folders(folders, f"real_degraded.{name}"):
                listed = scan(folder, f"real_degraded.{name}")
                if not listed:
                    raise OptionError(f"real_degraded.{name}", f"{folder} holds no readable image")
                images += holdout_split(listed, every, split)
            if images:
                self.paths[name] = images
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise OptionError("real_degraded_prob", f"expected a probability in [0, 1], got {prob!r}")
        self.prob = float(prob)

    def all_paths(self) -> List[Tuple[str, Path]]:
        return [(name, p) for name, paths in self.paths.items() for p in paths]

    def pick(self, name: str, rng: np.random.Generator) -> Optional[int]:
        """The index (into ``paths[name]``) of a real image to use for a query of type ``name``, or
        ``None`` (use the generator): drawn with probability ``prob`` when images of that type exist."""
        paths = self.paths.get(name)
        if not paths or rng.uniform() >= self.prob:
            return None
        return int(rng.integers(len(paths)))


Range = Union[Tuple[float, float], Tuple[int, int]]


class DegradationRanges:
    """Stage-1 parameter ranges of the all-in-one generators: ``{type: {parameter: [low, high]}}``.

    Parameters are the keyword arguments of the generator (``rain``: ``density``, ``length``,
    ``angle``, ``strength``; ``noise``: ``sigma``; ``jpeg``: ``quality``; ...); each is drawn
    uniformly from its range (integers, both ends included, when both bounds are integers), and
    parameters not named keep the generator's own default distribution.
    """

    def __init__(self, spec: Optional[Mapping] = None):
        self.ranges: Dict[str, Dict[str, Range]] = {}
        if spec is None:
            return
        if not isinstance(spec, Mapping):
            raise OptionError("degradation_ranges", f"expected {{type: {{parameter: [low, high]}}}}, got {spec!r}")
        for name, params in spec.items():
            key = f"degradation_ranges.{name}"
            if name not in deg.ALL_IN_ONE:
                hint = did_you_mean(name, deg.ALL_IN_ONE)
                raise OptionError(key, f"not a degradation type (one of {', '.join(deg.ALL_IN_ONE)})"
                                  + (f"; {hint}" if hint else ""))
            if not isinstance(params, Mapping):
                raise OptionError(key, f"expected {{parameter: [low, high]}}, got {params!r}")
            accepted = [p for p in inspect.signature(deg.ALL_IN_ONE[name]).parameters if p not in ("img", "rng")]
            checked: Dict[str, Range] = {}
            for param, bounds in params.items():
                if param not in accepted:
                    hint = did_you_mean(param, accepted)
                    raise OptionError(f"{key}.{param}", f"{name} takes {', '.join(accepted)}"
                                      + (f"; {hint}" if hint else ""))
                ok = (isinstance(bounds, (list, tuple)) and len(bounds) == 2
                      and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                      and bounds[0] <= bounds[1])
                if not ok:
                    raise OptionError(f"{key}.{param}", f"expected [low, high] with low <= high, got {bounds!r}")
                checked[param] = (bounds[0], bounds[1])
            self.ranges[name] = checked

    def draw(self, name: str, rng: np.random.Generator) -> Dict[str, float]:
        """Keyword arguments for generator ``name``: one value per parameter with a range."""
        out: Dict[str, float] = {}
        for param, (low, high) in self.ranges.get(name, {}).items():
            if isinstance(low, int) and isinstance(high, int):
                out[param] = int(rng.integers(low, high + 1))
            else:
                out[param] = float(rng.uniform(low, high))
        return out
