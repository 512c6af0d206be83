"""Datasets for both training stages, BasicSR style (one ``opt`` dict argument).

* :class:`MixDegradationDataset` (stage 2): clean images degraded on the fly by one of the
  all-in-one degradations of :mod:`constyle_plugin.data.degradations`; BasicSR's paired format.
* :class:`ConStylePretrainDataset` (stage 1): an ImageFolder-style class tree; returns a query
  view (weather-degraded on the CPU with probability ``weather_prob``) and an independent clean
  key view of the same picture, with the class label.

Both accept the special roots ``sample_photos`` / ``sample_classes`` (or no root) together with
``sample_dir``: the offline sample photos of :mod:`constyle_plugin.data.samples` are exported there
first. The BasicSR and MMEngine integrations register these classes; they hold no trainer code.

Randomness: training samples draw from a ``numpy.random.Generator`` seeded from torch's
generator (seeded per dataloader worker by PyTorch, and by the trainer's seed), so runs are
reproducible under a fixed seed; BasicSR's ``augment`` uses Python's ``random`` (also seeded per
worker). Validation samples (any ``phase`` other than ``train``) are a pure function of
``(seed, index)``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils import data

from . import degradations as deg
from ..compat import ensure_basicsr_importable
from ..errors import ConStyleError, ConStyleRuntimeError, ConStyleTypeError, MissingFileError, OptionError

from .imageio import IMAGE_EXTENSIONS, read_image
from .pretrain_sources import DegradationRanges, RealDegraded, photo_folder_images, split_options
from .samples import export_dead_leaves, export_sample_classes, export_sample_photos

ensure_basicsr_importable()
from basicsr.data.transforms import augment  # noqa: E402
from basicsr.utils import img2tensor  # noqa: E402

__all__ = ["MixDegradationDataset", "ConStylePretrainDataset", "BadImageWarning",
           "IMAGE_EXTENSIONS", "pad_to_size", "read_image"]

SAMPLE_PHOTOS = "sample_photos"
SAMPLE_CLASSES = "sample_classes"


class BadImageWarning(UserWarning):
    """A file in a dataset folder is not a readable image and is skipped."""


def _scan_images(folder: Path, option: str, owner: str, check: str = "header",
                 recursive: bool = False) -> List[Path]:
    """Readable-looking image files in ``folder`` (sorted); one warning per skipped file.

    ``check``: ``header`` reads each file's header at start-up (``cv2.haveImageReader``);
    ``extension`` only looks at the name (for very large folders). A file that passes the check
    but fails to decode later is skipped at that point with one warning (see
    ``_ImageSource.load``), never crashing an epoch. ``recursive`` also lists sub-folders.
    """
    if not folder.is_dir():
        raise MissingFileError(f"{owner}: option `{option}` = {str(folder)!r} is not a folder")
    if check not in ("header", "extension"):
        raise ConStyleError(f"{owner}: option `check_images` must be 'header' or 'extension', "
                         f"got {check!r}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    good = []
    for path in sorted(candidates):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.is_dir():
            continue
        reason = None
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            reason = f"extension {path.suffix or '(none)'!r} is not an image type"
        elif check == "header" and path.stat().st_size == 0:
            reason = "empty file"
        elif check == "header" and not cv2.haveImageReader(str(path)):
            reason = "no image decoder recognises its content"
        if reason:
            warnings.warn(f"{owner}: skipping {path} ({reason})", BadImageWarning, stacklevel=3)
        else:
            good.append(path)
    return good


class _ImageSource:
    """A list of image files; ``load(i)`` falls back to the next readable file on a bad one."""

    def __init__(self, paths: Sequence[Path], owner: str):
        self.paths = list(paths)
        self.owner = owner
        self.bad: set = set()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Tuple[int, np.ndarray]:
        n = len(self.paths)
        for step in range(n):
            j = (i + step) % n
            if j in self.bad:
                continue
            try:
                return j, read_image(self.paths[j])
            except OSError as exc:
                self.bad.add(j)
                warnings.warn(f"{self.owner}: skipping {self.paths[j]} from now on ({exc})",
                              BadImageWarning, stacklevel=3)
        raise ConStyleRuntimeError(f"{self.owner}: none of the {n} image files can be decoded")


def pad_to_size(img: np.ndarray, size: int) -> np.ndarray:
    """``H x W x C`` reflect-padded (bottom / right) so both sides are at least ``size``; never resized."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        # numpy's reflect mode mirrors repeatedly, so pads larger than the image are fine
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    return img


def _train_rng() -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _val_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _sample_root(opt: Mapping, key: str, special: str, owner: str) -> Tuple[bool, Optional[str]]:
    root = opt.get(key)
    if root is None or root == special:
        sample_dir = opt.get("sample_dir")
        if not sample_dir:
            raise ConStyleError(
                f"{owner}: option `{key}` is {root!r}: set `{key}` to an image folder, or set "
                f"`sample_dir` (where the offline sample photos are exported) to use them")
        return True, str(sample_dir)
    return False, str(root)


def _positive_int(opt: Mapping, key: str, default: int, owner: str) -> int:
    value = opt.get(key, default)
    if value is None or int(value) != value or int(value) < 1:
        raise ConStyleError(f"{owner}: option `{key}` must be a positive integer, got {value!r}")
    return int(value)


class MixDegradationDataset(data.Dataset):
    """Clean images degraded on the fly by the all-in-one degradations (BasicSR paired format).

    ``opt`` keys (defaults in brackets):

    * ``dataroot_gt``: a folder of clean images; ``sample_photos`` or absent means the offline
      sample photos, exported to ``sample_dir`` first.
    * ``sample_dir`` [none]: required with the sample photos.
    * ``photos`` [all]: file stems to keep (a hold-out split, see
      :func:`constyle_plugin.data.samples.split_by_photo`); unknown stems raise.
    * ``gt_size`` [128]: patch side. Images smaller than that are reflect-padded (bottom/right)
      to ``gt_size`` before cropping, never upscaled.
    * ``degradations`` [all eight, equal]: ``{name: weight}`` (names of
      :data:`~constyle_plugin.data.degradations.ALL_IN_ONE`; weights are normalised, names left out
      get 0) or a list of names (equal weights).
    * ``phase`` ['train']: ``train`` = random crop + BasicSR ``augment`` (``use_hflip`` [true],
      ``use_rot`` [true]) + a random degradation; anything else (BasicSR sets ``val``) =
      deterministic: a centre crop of ``gt_size`` (``val_crop: center``) or the full image
      (``val_crop: full``), and a degradation and its parameters drawn from ``(seed, index)``.
    * ``seed`` [0]: validation seed. ``scale`` [1]: must be 1 (restoration, same size).
    * ``repeat`` [1]: virtual length multiplier (``len = repeat * number of images``).
    * ``io_backend`` [disk]: only ``{type: disk}`` is supported.
    * ``check_images`` ['header']: start-up check of each file, ``header`` or ``extension``.

    ``dataset[i]`` = ``{'lq': 3 x S x S float tensor in [0, 1], 'gt': 3 x S x S, 'lq_path': str,
    'gt_path': str, 'degradation': name}``.

    :attr:`OPTIONS` lists every key ``__init__`` reads (the ``basicsr`` command refuses others in
    a dataset of this type, with a did-you-mean, before anything is created on disk).
    """

    OPTIONS = frozenset({"dataroot_gt", "sample_dir", "photos", "gt_size", "degradations", "phase", "use_hflip",
                         "use_rot", "seed", "val_crop", "scale", "repeat", "io_backend", "check_images"})

    def __init__(self, opt: Mapping):
        super().__init__()
        owner = type(self).__name__
        self.opt = dict(opt)
        use_samples, root = _sample_root(self.opt, "dataroot_gt", SAMPLE_PHOTOS, owner)
        if use_samples:
            export_sample_photos(root)
        backend = (self.opt.get("io_backend") or {"type": "disk"}).get("type", "disk")
        if backend != "disk":
            raise ConStyleError(f"{owner}: option `io_backend.type` = {backend!r} is not supported "
                             "(only 'disk')")
        if int(self.opt.get("scale", 1)) != 1:
            raise ConStyleError(f"{owner}: option `scale` must be 1 (lq and gt have the same size), "
                             f"got {self.opt.get('scale')!r}")
        self.folder = Path(root)
        paths = _scan_images(self.folder, "dataroot_gt", owner,
                             check=str(self.opt.get("check_images", "header")))
        photos = self.opt.get("photos")
        if photos is not None:
            stems = {p.stem: p for p in paths}
            unknown = sorted(set(photos) - set(stems))
            if unknown:
                raise ConStyleError(f"{owner}: option `photos` names {unknown}, not found among the "
                                 f"readable images of {self.folder} (option `dataroot_gt`)")
            paths = [stems[s] for s in sorted(set(photos))]
        if not paths:
            raise ConStyleError(f"{owner}: no readable image in {self.folder} "
                             f"(option `dataroot_gt`)")
        self.source = _ImageSource(paths, owner)
        self.paths = self.source.paths

        self.gt_size = _positive_int(self.opt, "gt_size", 128, owner)
        self.repeat = _positive_int(self.opt, "repeat", 1, owner)
        self.phase = str(self.opt.get("phase", "train"))
        self.use_hflip = bool(self.opt.get("use_hflip", True))
        self.use_rot = bool(self.opt.get("use_rot", True))
        self.seed = int(self.opt.get("seed", 0))
        self.val_crop = str(self.opt.get("val_crop", "center"))
        if self.val_crop not in ("center", "full"):
            raise ConStyleError(f"{owner}: option `val_crop` must be 'center' or 'full', "
                             f"got {self.val_crop!r}")
        self.names, self.probs = self._parse_degradations(self.opt.get("degradations"), owner)

    @staticmethod
    def _parse_degradations(spec, owner: str, option: str = "degradations") -> Tuple[List[str], np.ndarray]:
        if spec is None:
            spec = {name: 1.0 for name in deg.ALL_IN_ONE}
        elif isinstance(spec, (list, tuple)):
            spec = {name: 1.0 for name in spec}
        elif not isinstance(spec, Mapping):
            raise ConStyleTypeError(f"{owner}: option `{option}` must be a mapping name -> weight or "
                            f"a list of names, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(deg.ALL_IN_ONE))
        if unknown:
            raise ConStyleError(f"{owner}: option `{option}` has unknown name(s) {unknown}; "
                             f"valid: {list(deg.ALL_IN_ONE)}")
        weights = np.array([float(spec.get(n, 0.0)) for n in deg.ALL_IN_ONE])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConStyleError(f"{owner}: option `{option}` needs non-negative weights with a "
                             f"positive sum, got {dict(spec)}")
        return list(deg.ALL_IN_ONE), weights / weights.sum()

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        train = self.phase == "train"
        rng = _train_rng() if train else _val_rng(self.seed, index)
        j, img = self.source.load(index % len(self.paths))
        s = self.gt_size
        if train or self.val_crop == "center":
            img = pad_to_size(img, s)
            h, w = img.shape[:2]
            if train:
                top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            else:
                top, left = (h - s) // 2, (w - s) // 2
            img = img[top:top + s, left:left + s]
        if train:
            img = augment(np.ascontiguousarray(img), self.use_hflip, self.use_rot)
        gt = np.ascontiguousarray(img, dtype=np.float32)
        name = self.names[int(rng.choice(len(self.names), p=self.probs))]
        lq = deg.ALL_IN_ONE[name](gt, rng)
        lq_t, gt_t = img2tensor([lq, gt], bgr2rgb=False, float32=True)
        path = str(self.paths[j])
        return {"lq": lq_t, "gt": gt_t, "lq_path": path, "gt_path": path, "degradation": name}


def _resize_short(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (like ``torchvision.transforms.Resize(int)``)."""
    h, w = img.shape[:2]
    if min(h, w) == size:
        return img
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return np.clip(cv2.resize(img, (nw, nh), interpolation=interp), 0, 1)


def _random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                         scale: Sequence[float], ratio: Sequence[float]) -> np.ndarray:
    """Inception-style random-resized crop (area fraction in ``scale``, aspect in ``ratio``)."""
    h, w = img.shape[:2]
    area = h * w
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to a centre crop at the nearest allowed aspect
        in_ratio = w / h
        if in_ratio < min(ratio):
            cw, ch = w, int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            ch, cw = h, int(round(h * max(ratio)))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top:top + ch, left:left + cw]
    interp = cv2.INTER_AREA if min(ch, cw) > size else cv2.INTER_LINEAR
    return np.clip(cv2.resize(crop, (size, size), interpolation=interp), 0, 1)


def _native_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size x size`` crop at the image's own resolution (reflect-padded when smaller)."""
    img = pad_to_size(img, size)
    h, w = img.shape[:2]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(img[top:top + size, left:left + size])


class ConStylePretrainDataset(data.Dataset):
    """Stage-1 pre-training pairs from an ImageFolder-style class tree.

    ``opt`` keys (defaults in brackets):

    * ``dataroot``: a folder with one sub-folder of images per class (labels are the indices of
      the sorted sub-folder names, as in torchvision's ImageFolder); ``sample_classes`` or absent
      means a tree built from the offline sample photos into ``sample_dir`` (one class per
      photo, ``crops_per_photo`` [8] crops of ``sample_crop_size`` [256] px).
    * ``resize`` [256]: shorter side after resizing; ``crop_size`` [224]: output side.
    * ``rrc_scale`` [[0.08, 1.0]], ``rrc_ratio`` [[0.75, 1.3333]]: random-resized-crop ranges.
    * ``weather_prob`` [0.4]: probability of the CPU weather degradation
      (:func:`~constyle_plugin.data.degradations.weather`) on the query view.
    * ``phase`` ['train']: anything else draws every sample from ``(seed, index)`` [seed 0].
    * ``repeat`` [1]: virtual length multiplier.
    * ``check_images`` ['header']: as for :class:`MixDegradationDataset`. Class folders are
      searched recursively, as torchvision's ImageFolder does.
    * ``degradation`` [false]: ``true`` (the authors' values) or a dict of
      :class:`~constyle_plugin.data.degradations.RealESRGANDegradation` options: each sample also
      carries ``'degradation'``, the Real-ESRGAN parameters of its query drawn here (in the data
      worker) by :meth:`~constyle_plugin.data.degradations.RealESRGANDegradation.sample_params`, so
      the device only runs the batched pipeline. Use the same options as the model's
      ``train.degradation`` (the BasicSR model refuses a mismatch).

    Options that teach the prompt the degradation (all off by default, which is the authors'
    recipe; see ``options/constyle_v2_pretrain_degradation.yml``):

    * ``photos`` [all]: class folder names to keep (with the sample tree: photo names), so that
      photos held out for testing never reach pre-training; unknown names raise.
    * ``dead_leaves`` [0]: with the sample tree, also this many synthetic dead-leaves images
      (:func:`~constyle_plugin.data.samples.dead_leaves`, one class each) of ``sample_crop_size`` px:
      content with natural-image statistics that no test photo shares.
    * ``query_degradations`` [none]: ``{name: weight}`` or a list of names of
      :data:`~constyle_plugin.data.degradations.ALL_IN_ONE`. Each query view gets one of them here,
      on the CPU (replacing weather and Real-ESRGAN), and the sample carries
      ``'degradation_label'``, the index of its degradation in ``ALL_IN_ONE``: the target of the
      model's degradation head and, with ``pretext_target: degradation``, of the pretext head.
    * ``key_degradation`` ['clean']: ``'clean'`` (authors: the key view is clean, so InfoNCE pulls
      a degraded query onto its clean picture and teaches the latent to ignore the degradation)
      or ``'same'``: the key view gets the query's degradation type with parameters of its own,
      so InfoNCE groups views by picture *and* degradation.

    Options that bring real images in (all off by default; see
    ``options/constyle_v2_pretrain_real.yml`` and :mod:`constyle_plugin.pretrain_sources`):

    * ``photo_folders`` [none]: a folder or a list of folders of real photos (searched
      recursively), every image its own class, beside the ``dataroot`` classes. Without
      ``dataroot`` only these photos are used (no sample tree).
    * ``holdout_every`` [0], ``split`` ['train']: every ``holdout_every``-th image (sorted) of
      ``photo_folders`` and ``real_degraded`` is held out; ``split`` picks ``train`` (the rest),
      ``holdout`` (the held-out images, for validation) or ``all``.
    * ``real_degraded`` [none]: ``{type: folder or [folders]}`` of images that really carry that
      degradation (rainy photos, ...); each is its own class. A query of that type is, with
      probability ``real_degraded_prob`` [0.5], a crop of one of them at its own resolution (the
      key: another crop of the same image) instead of a generator's output. Needs
      ``query_degradations``.
    * ``degradation_ranges`` [none]: ``{type: {parameter: [low, high]}}``: the ranges the
      generators draw those parameters from in stage 1 (for example light rain, ``rain:
      {strength: [0.15, 0.9]}``); other parameters keep the generator's defaults.

    ``dataset[i]`` = ``{'query'': 3 x S x S float [0, 1] (weather-degraded or clean),
    'key': 3 x S x S clean, an independent crop of the same picture, 'label': int,
    'weather': bool, 'path': str}`` (+ ``'degradation'``: a dict of tensors, with the option;
    + ``'degradation_label'``: int, with ``query_degradations``). ``weather`` is true for every
    query already degraded here (weather, or an all-in-one degradation).
    Samples with ``weather == False`` are meant to get the
    Real-ESRGAN batch pipeline (:class:`~constyle_plugin.data.degradations.RealESRGANDegradation`)
    on the device, in the model, as the authors do; the dataset leaves their query clean.

    :attr:`OPTIONS` lists every key ``__init__`` reads (as for :class:`MixDegradationDataset`).
    """

    OPTIONS = frozenset({"dataroot", "sample_dir", "crops_per_photo", "sample_crop_size", "resize", "crop_size",
                         "rrc_scale", "rrc_ratio", "weather_prob", "phase", "seed", "repeat", "check_images",
                         "degradation", "photos", "dead_leaves", "query_degradations", "key_degradation",
                         "photo_folders", "holdout_every", "split", "real_degraded", "real_degraded_prob",
                         "degradation_ranges"})

    def __init__(self, opt: Mapping):
        super().__init__()
        owner = type(self).__name__
        self.opt = dict(opt)
        photo_folders = self.opt.get("photo_folders")
        only_photo_folders = photo_folders is not None and "dataroot" not in self.opt
        use_samples, root = ((False, None) if only_photo_folders
                             else _sample_root(self.opt, "dataroot", SAMPLE_CLASSES, owner))
        photos = self.opt.get("photos")
        if photos is not None and (isinstance(photos, str) or not all(isinstance(p, str) for p in photos)):
            raise ConStyleError(f"{owner}: option `photos` must be a list of names, got {photos!r}")
        dead_leaves = int(self.opt.get("dead_leaves", 0) or 0)
        if dead_leaves < 0:
            raise ConStyleError(f"{owner}: option `dead_leaves` must be >= 0, got {dead_leaves}")
        if dead_leaves and not use_samples:
            raise ConStyleError(f"{owner}: option `dead_leaves` adds synthetic classes to the sample "
                             f"tree only (dataroot: {SAMPLE_CLASSES}); got dataroot {root!r}")
        if use_samples:
            crop = _positive_int(self.opt, "sample_crop_size", 256, owner)
            export_sample_classes(root,
                                  crops_per_photo=_positive_int(self.opt, "crops_per_photo", 8,
                                                                owner),
                                  crop_size=crop)
            export_dead_leaves(root, dead_leaves, size=crop)
        self.folder = None if only_photo_folders else Path(root)
        if self.folder is not None and not self.folder.is_dir():
            raise MissingFileError(f"{owner}: option `dataroot` = {root!r} is not a folder")
        self.classes = [] if self.folder is None else sorted(
            p.name for p in self.folder.iterdir()
            if p.is_dir() and not p.name.startswith(".")
            and (not p.name.startswith("dead_leaves_")
                 or int(p.name.rsplit("_", 1)[1]) < dead_leaves or not use_samples))
        if photos is not None:
            unknown = sorted(set(photos) - set(self.classes))
            if unknown:
                raise ConStyleError(f"{owner}: option `photos` names {unknown}, not class folders of "
                                 f"{self.folder} (option `dataroot`)")
            self.classes = sorted(c for c in self.classes
                                  if c in set(photos) or c.startswith("dead_leaves_"))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        paths, labels = [], []
        for c in self.classes:
            found = _scan_images(self.folder / c, "dataroot", owner, recursive=True,
                                 check=str(self.opt.get("check_images", "header")))
            if not found:
                warnings.warn(f"{owner}: class folder {self.folder / c} has no readable image "
                              f"(its label {self.class_to_idx[c]} is kept)", BadImageWarning,
                              stacklevel=2)
            paths += found
            labels += [self.class_to_idx[c]] * len(found)
        check = str(self.opt.get("check_images", "header"))

        def scan(folder: Path, option: str) -> List[Path]:
            return _scan_images(folder, option, owner, recursive=True, check=check)

        try:
            every, split = split_options(self.opt)
            if photo_folders is not None:
                for path in photo_folder_images(photo_folders, scan, every, split):
                    self.classes.append(f"photo:{path}")
                    paths.append(path)
                    labels.append(len(self.classes) - 1)
            self.real = RealDegraded(self.opt.get("real_degraded"), self.opt.get("real_degraded_prob", 0.5),
                                     scan, every, split)
            self.ranges = DegradationRanges(self.opt.get("degradation_ranges"))
        except OptionError as exc:
            raise OptionError(exc.key, f"{owner}: {exc.message}") from None
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        # real degraded images are classes of their own, after the clean ones; ``_real_index``
        # maps (type, index in its list) to the position in ``paths``
        self._real_index: Dict[Tuple[str, int], int] = {}
        self._num_clean = len(paths)
        for name, images in self.real.paths.items():
            for k, path in enumerate(images):
                self.classes.append(f"{name}:{path}")
                self._real_index[(name, k)] = len(paths)
                paths.append(path)
                labels.append(len(self.classes) - 1)
        if not paths[:self._num_clean]:
            where = f"the class folders of {self.folder}" if self.folder is not None else "option `photo_folders`"
            raise ConStyleError(f"{owner}: no readable image in {where} "
                                f"(option `dataroot`; expected <dataroot>/<class>/<image>)")
        self.source = _ImageSource(paths, owner)
        self.paths = self.source.paths
        self.labels = labels
        self.resize = _positive_int(self.opt, "resize", 256, owner)
        self.crop_size = _positive_int(self.opt, "crop_size", 224, owner)
        self.rrc_scale = tuple(float(v) for v in self.opt.get("rrc_scale", (0.08, 1.0)))
        self.rrc_ratio = tuple(float(v) for v in self.opt.get("rrc_ratio", (3 / 4, 4 / 3)))
        self.weather_prob = float(self.opt.get("weather_prob", 0.4))
        if not 0.0 <= self.weather_prob <= 1.0:
            raise ConStyleError(f"{owner}: option `weather_prob` must be in [0, 1], "
                             f"got {self.weather_prob}")
        self.phase = str(self.opt.get("phase", "train"))
        self.seed = int(self.opt.get("seed", 0))
        self.repeat = _positive_int(self.opt, "repeat", 1, owner)
        self.degradation = self.degradation_from_opt(self.opt.get("degradation", False), owner)
        spec = self.opt.get("query_degradations")
        if spec is None:
            self.query_names: List[str] = []
            self.query_probs = np.zeros(0)
        else:
            self.query_names, self.query_probs = MixDegradationDataset._parse_degradations(
                spec, owner, "query_degradations")
        self.key_degradation = str(self.opt.get("key_degradation", "clean"))
        if self.key_degradation not in ("clean", "same"):
            raise ConStyleError(f"{owner}: option `key_degradation` must be 'clean' or 'same', "
                             f"got {self.key_degradation!r}")
        if self.key_degradation == "same" and not self.query_names:
            raise ConStyleError(f"{owner}: option `key_degradation: same` needs `query_degradations`")
        for option, given in (("real_degraded", self.real.paths), ("degradation_ranges", self.ranges.ranges)):
            drawn = [n for n, p in zip(self.query_names, self.query_probs) if p > 0]
            unused = sorted(set(given) - set(drawn))
            if unused:
                raise OptionError(option, f"{owner}: {', '.join(unused)} not among `query_degradations` "
                                  f"({', '.join(drawn) or 'none'}), so never drawn")

    @staticmethod
    def degradation_from_opt(value, owner: str = "ConStylePretrainDataset"
                             ) -> Optional[deg.RealESRGANDegradation]:
        """The ``degradation`` option: ``False`` / ``None`` -> ``None``; ``True`` -> the authors'
        values; a dict -> those options (unknown ones are refused, naming the option)."""
        if value is None or value is False:
            return None
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ConStyleError(f"{owner}: option `degradation` must be true, false or a dict of "
                             f"RealESRGANDegradation options, got {value!r}")
        try:
            return deg.RealESRGANDegradation.from_opt(value)
        except (TypeError, ValueError) as exc:
            raise ConStyleError(f"{owner}: option `degradation`: {exc}") from None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        # the epoch runs over the clean pictures; real degraded images come in through their type
        return self._num_clean * self.repeat

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = _train_rng() if self.phase == "train" else _val_rng(self.seed, index)
        label = None
        if self.query_names:
            label = int(rng.choice(len(self.query_names), p=self.query_probs))
            name = self.query_names[label]
            real = self.real.pick(name, rng)
        if self.query_names and real is not None:
            # a real degraded image: both views are crops of it at its own resolution (resizing would
            # shrink the degradation itself: thinner streaks, finer noise, blurred-away blocks)
            j, img = self.source.load(self._real_index[(name, real)])
            is_weather = True
            query, key = (_native_crop(img, self.crop_size, rng) for _ in range(2))
        elif self.query_names:
            j, img = self.source.load(index % self._num_clean)
            img = _resize_short(img, self.resize)
            # crop first, then degrade: the degradation's scale (blur radius, noise) is that of the
            # views the network sees, as in the all-in-one data
            generator = deg.ALL_IN_ONE[name]

            def degrade(view: np.ndarray) -> np.ndarray:
                return generator(np.ascontiguousarray(view, dtype=np.float32), rng, **self.ranges.draw(name, rng))

            is_weather = True
            query = degrade(_random_resized_crop(img, self.crop_size, rng, self.rrc_scale, self.rrc_ratio))
            key = _random_resized_crop(img, self.crop_size, rng, self.rrc_scale, self.rrc_ratio)
            if self.key_degradation == "same":
                key = degrade(key)
        else:
            j, img = self.source.load(index % self._num_clean)
            img = _resize_short(img, self.resize)
            is_weather = bool(rng.uniform() < self.weather_prob)
            query_src = deg.weather(img, rng) if is_weather else img
            query = _random_resized_crop(query_src, self.crop_size, rng, self.rrc_scale,
                                         self.rrc_ratio)
            key = _random_resized_crop(img, self.crop_size, rng, self.rrc_scale, self.rrc_ratio)
        query_t, key_t = img2tensor([np.ascontiguousarray(query), np.ascontiguousarray(key)],
                                    bgr2rgb=False, float32=True)
        sample = {"query": query_t, "key": key_t, "label": self.labels[j], "weather": is_weather,
                  "path": str(self.paths[j])}
        if label is not None:
            sample["degradation_label"] = label  # query_names is ALL_IN_ONE, in its order
        if self.degradation is not None:
            sample["degradation"] = self.degradation.sample_params(rng=rng)
        return sample
