"""The all-in-one benchmark data as BasicSR-style datasets (one ``opt`` dict argument).

* :class:`AllInOneTrainDataset`: the three-task / five-task training mixture read from a PromptIR / AdaIR
  training root (:func:`~constyle_plugin.data.benchmark_layouts.benchmark_train_pairs`): each task's file list
  repeated per epoch as the papers do, the same random patch cropped from the degraded and the clean
  image, BasicSR's flips and rotations, and Gaussian noise added on the fly for the denoising tasks.
* :class:`AllInOneTestDataset`: one test set of a setting
  (:func:`~constyle_plugin.data.benchmark_layouts.benchmark_test_sets`), whole images cropped as the setting does.

The layout is checked when the dataset is built, before anything trains; the BasicSR and MMEngine
integrations register both classes.

Randomness: the crop and the flips / rotations come from Python's ``random`` (BasicSR's
``paired_random_crop`` and ``augment``), the noise from a ``numpy.random.Generator`` seeded from torch's
generator; PyTorch seeds both per dataloader worker, and the trainer's seed fixes them.
"""
from __future__ import annotations

import bisect
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import cv2
import numpy as np
import torch
from torch.utils import data

from .benchmark_layouts import (DEFAULT_REPEAT, NOISE_SIGMA, TRAIN_TASKS, TestImage, TrainPair,
                                benchmark_test_sets, benchmark_train_pairs, check_dataset_layout, check_setting,
                                check_test_task, synthetic_noise)
from ..compat import ensure_basicsr_importable
from .datasets import BadImageWarning, pad_to_size
from ..errors import LayoutError, OptionError, did_you_mean
from .imageio import read_image

ensure_basicsr_importable()
from basicsr.data.transforms import augment, paired_random_crop  # noqa: E402
from basicsr.utils import img2tensor  # noqa: E402

__all__ = ["AllInOneTrainDataset", "AllInOneTestDataset"]


def _option_error(owner: str, key: str, message: str) -> OptionError:
    return OptionError(key, f"{message} ({owner})")


def _disk_only(opt: Mapping, owner: str) -> None:
    backend = (opt.get("io_backend") or {"type": "disk"}).get("type", "disk")
    if backend != "disk":
        raise _option_error(owner, "io_backend.type", f"{backend!r} is not supported (only 'disk')")
    if int(opt.get("scale", 1) or 1) != 1:
        raise _option_error(owner, "scale", f"must be 1 (lq and gt have the same size), got {opt.get('scale')!r}")


def _readable(path: Path) -> bool:
    return path.stat().st_size > 0 and cv2.haveImageReader(str(path))


class AllInOneTrainDataset(data.Dataset):
    """The three-task / five-task training mixture (BasicSR paired format).

    ``opt`` keys (defaults in brackets):

    * ``setting``: ``three-task`` or ``five-task`` (it sets the default ``tasks``).
    * ``dataroot``: the training root (PromptIR / AdaIR ``data/Train``, or the folder holding ``Train/``).
    * ``tasks`` [the setting's]: task keys (``denoise_15``, ``denoise_25``, ``denoise_50``, ``derain``,
      ``dehaze``, ``deblur``, ``enhance``).
    * ``repeat`` [the papers': denoise 3 per sigma, derain 120, dehaze 1, deblur 5, enhance 20]: a mapping
      task -> how many times its file list is repeated per epoch (overrides the defaults for the tasks it
      names), or one integer for every task.
    * ``lists`` [none]: PromptIR's ``data_dir`` folder or a mapping task group -> list file, selecting the
      files used (see :func:`~constyle_plugin.data.benchmark_layouts.benchmark_train_pairs`).
    * ``gt_size`` [128]: patch side; images smaller than that are reflect-padded (bottom / right) first.
    * ``use_hflip`` [true], ``use_rot`` [true]: BasicSR's ``augment`` (the eight flips / 90-degree rotations).
    * ``phase`` ['train']: any other phase takes the centre patch, no augmentation, and noise drawn from
      the index (the same every time).
    * ``scale`` [1]: must be 1. ``io_backend`` [disk]: only ``{type: disk}``.
    * ``check_images`` ['header']: each file's header is checked at start-up (a pair with an unreadable
      file is left out with a warning); ``extension`` checks names only (very large folders).

    ``len`` = the sum over tasks of ``len(pairs) * repeat``. ``dataset[i]`` = ``{'lq': 3 x S x S float
    in [0, 1] RGB, 'gt': 3 x S x S, 'lq_path': str, 'gt_path': str, 'task': task key}`` (for denoising,
    ``lq_path`` is the clean file).

    :attr:`OPTIONS` lists every key ``__init__`` reads.
    """

    OPTIONS = frozenset({"setting", "dataroot", "tasks", "repeat", "lists", "gt_size", "use_hflip", "use_rot",
                         "phase", "scale", "io_backend", "check_images"})

    @staticmethod
    def check_layout(opt: Mapping) -> None:
        """The layout ``opt`` names, checked without reading an image: the trainers' option checks call
        this before a run creates its folders (see :func:`~constyle_plugin.data.benchmark_layouts.check_dataset_layout`)."""
        check_dataset_layout("train", opt)

    def __init__(self, opt: Mapping):
        super().__init__()
        owner = type(self).__name__
        self.opt = dict(opt)
        _disk_only(self.opt, owner)
        if self.opt.get("setting") is None:
            raise _option_error(owner, "setting", "missing: 'three-task' or 'five-task'")
        self.setting = check_setting(str(self.opt["setting"]), ("three-task", "five-task"))
        if not self.opt.get("dataroot"):
            raise _option_error(owner, "dataroot", "missing: the training root (PromptIR / AdaIR data/Train)")
        pairs = benchmark_train_pairs(self.setting, self.opt["dataroot"], self.opt.get("tasks"),
                                      self.opt.get("lists"))
        check = str(self.opt.get("check_images", "header"))
        if check not in ("header", "extension"):
            raise _option_error(owner, "check_images", f"must be 'header' or 'extension', got {check!r}")
        if check == "header":
            pairs = self._readable_pairs(pairs, owner)
        self.pairs: Dict[str, List[TrainPair]] = pairs
        self.tasks: Tuple[str, ...] = tuple(pairs)
        self.repeat = self._repeats(self.opt.get("repeat"), owner)
        self.gt_size = self._positive(self.opt.get("gt_size", 128), "gt_size", owner)
        self.use_hflip = bool(self.opt.get("use_hflip", True))
        self.use_rot = bool(self.opt.get("use_rot", True))
        self.phase = str(self.opt.get("phase", "train"))
        self._ends = np.cumsum([len(pairs[t]) * self.repeat[t] for t in self.tasks]).tolist()

    @staticmethod
    def _positive(value, key: str, owner: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
            raise _option_error(owner, key, f"must be a positive integer, got {value!r}")
        return int(value)

    def _repeats(self, spec, owner: str) -> Dict[str, int]:
        repeat = {t: DEFAULT_REPEAT[t] for t in self.tasks}
        if spec is None:
            return repeat
        if not isinstance(spec, Mapping):
            return {t: self._positive(spec, "repeat", owner) for t in self.tasks}
        for task, value in spec.items():
            if task not in TRAIN_TASKS:
                hint = did_you_mean(task, TRAIN_TASKS)
                raise _option_error(owner, f"repeat.{task}", f"not a task{'; ' + hint if hint else ''} "
                                                             f"(known: {', '.join(TRAIN_TASKS)})")
            if task in repeat:
                repeat[task] = self._positive(value, f"repeat.{task}", owner)
        return repeat

    @staticmethod
    def _readable_pairs(pairs: Dict[str, List[TrainPair]], owner: str) -> Dict[str, List[TrainPair]]:
        seen: Dict[Path, bool] = {}

        def ok(path: Path) -> bool:
            if path not in seen:
                seen[path] = _readable(path)
                if not seen[path]:
                    warnings.warn(f"{owner}: leaving out {path} (no image decoder recognises its content)",
                                  BadImageWarning, stacklevel=4)
            return seen[path]

        kept = {}
        for task, items in pairs.items():
            kept[task] = [p for p in items if ok(p.gt) and (p.lq is None or ok(p.lq))]
            if not kept[task]:
                raise LayoutError(f"{owner}: task {task}: none of its {len(items)} files is a readable image")
        return kept

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> Tuple[str, TrainPair]:
        """The task and the pair of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self._ends, index)
        start = self._ends[k - 1] if k else 0
        task = self.tasks[k]
        items = self.pairs[task]
        return task, items[(index - start) % len(items)]

    def __getitem__(self, index: int) -> Dict:
        task, pair = self.locate(index)
        gt = read_image(pair.gt)
        lq = gt if pair.lq is None else read_image(pair.lq)
        if lq.shape != gt.shape:
            raise LayoutError(f"{pair.lq} ({lq.shape[0]} x {lq.shape[1]}) and {pair.gt} ({gt.shape[0]} x "
                              f"{gt.shape[1]}) differ in size")
        s = self.gt_size
        gt, lq = pad_to_size(gt, s), pad_to_size(lq, s)
        if self.phase == "train":
            gt, lq = paired_random_crop(gt, lq, s, 1, str(pair.gt))
            gt, lq = augment([gt, lq], self.use_hflip, self.use_rot)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        else:
            top, left = (gt.shape[0] - s) // 2, (gt.shape[1] - s) // 2
            gt, lq = gt[top:top + s, left:left + s], lq[top:top + s, left:left + s]
            rng = np.random.default_rng(index)
        if task in NOISE_SIGMA:
            lq = synthetic_noise(gt, NOISE_SIGMA[task], rng)
        lq_t, gt_t = img2tensor([np.ascontiguousarray(lq, dtype=np.float32),
                                 np.ascontiguousarray(gt, dtype=np.float32)], bgr2rgb=False, float32=True)
        return {"lq": lq_t, "gt": gt_t, "lq_path": str(pair.lq or pair.gt), "gt_path": str(pair.gt), "task": task}


class AllInOneTestDataset(data.Dataset):
    """One test set of a benchmark setting, whole images (BasicSR paired format, for validation / testing).

    ``opt`` keys (defaults in brackets):

    * ``setting``: ``three-task``, ``five-task`` or ``constyle-v2``.
    * ``dataroot``: the setting's test root (see :mod:`constyle_plugin.data.benchmark_layouts`).
    * ``task``: a test task key of the setting (three-task: ``dehaze``, ``derain``, ``denoise_15``,
      ``denoise_25``, ``denoise_50``; five-task: ``dehaze``, ``derain``, ``denoise_25``, ``deblur``,
      ``enhance``; constyle-v2: ``gopro``, ``sots``, ``rain``, ``cbsd68_25``, ``live1_20``, ``lol``,
      ``defocus``, ``snow``).
    * ``max_images`` [all]: the first N images (sorted by name).
    * ``phase``, ``scale`` [1], ``io_backend`` [disk]: as BasicSR passes them.

    ``dataset[i]`` = ``{'lq': 3 x H x W float RGB, 'gt': 3 x H x W in [0, 1], 'lq_path': str, 'gt_path': str,
    'task': task key}``, cropped as the setting does (:meth:`TestImage.load
    <constyle_plugin.data.benchmark_layouts.TestImage.load>`); synthetic noise is the same on every read.
    """

    OPTIONS = frozenset({"setting", "dataroot", "task", "max_images", "phase", "scale", "io_backend"})

    @staticmethod
    def check_layout(opt: Mapping) -> None:
        """As :meth:`AllInOneTrainDataset.check_layout`, for a test root and its ``task``."""
        check_dataset_layout("test", opt)

    def __init__(self, opt: Mapping):
        super().__init__()
        owner = type(self).__name__
        self.opt = dict(opt)
        _disk_only(self.opt, owner)
        if self.opt.get("setting") is None:
            raise _option_error(owner, "setting", "missing: 'three-task', 'five-task' or 'constyle-v2'")
        self.setting = check_setting(str(self.opt["setting"]))
        if not self.opt.get("dataroot"):
            raise _option_error(owner, "dataroot", f"missing: the {self.setting} test root")
        try:
            self.task = check_test_task(self.setting, self.opt.get("task"))
        except OptionError as exc:
            raise _option_error(owner, exc.key, exc.message) from None
        sets = {t.key: t for t in benchmark_test_sets(self.setting, self.opt["dataroot"], tasks=[self.task])}
        images = list(sets[self.task].images)
        limit = self.opt.get("max_images")
        if limit is not None:
            limit = AllInOneTrainDataset._positive(limit, "max_images", owner)
            images = images[:limit]
        self.column = sets[self.task].column
        self.images: List[TestImage] = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        img = self.images[index]
        lq, gt = img.load()
        lq_t, gt_t = img2tensor([lq, gt], bgr2rgb=False, float32=True)
        return {"lq": lq_t, "gt": gt_t, "lq_path": str(img.lq or img.gt), "gt_path": str(img.gt), "task": self.task}
