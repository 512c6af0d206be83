"""MMEngine datasets and metrics.

Datasets wrap the plugin's BasicSR-style datasets (:mod:`constyle_plugin.data.datasets`,
:mod:`constyle_plugin.data.benchmark_datasets`) and BasicSR's
``PairedImageDataset``, taking their options as keyword arguments, and return MMEngine's layout:

- restoration: ``{'inputs': lq 3 x H x W float in [0, 1], 'data_samples': BaseDataElement(gt_img=3 x
  H x W, metainfo={'key': file stem, 'lq_path', 'gt_path', ...})}``;
- pre-training: ``{'inputs': {'query': 3 x S x S, 'key': 3 x S x S}, 'data_samples':
  BaseDataElement(gt_label=int64 scalar, metainfo={'weather': bool, 'path': str})}``.

Metrics use BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on 8-bit-rounded images (as
BasicSR's validation does) and the plugin's :func:`~constyle_plugin.training.pretrain.accuracy`; on samples that carry
a ``task`` (the all-in-one datasets) they report each task and the mean over tasks.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement
from torch.utils import data

from ...compat import ensure_basicsr_importable
from ...errors import ConStyleError, ConStyleKeyError, ConStyleTypeError, MissingFileError, OptionError, did_you_mean
from ...data.imageio import IMAGE_EXTENSIONS

__all__ = ["ADAPTERS", "AllInOneTestDataset", "AllInOneTrainDataset", "ConStylePretrainDataset", "KeywordDataset",
           "MixDegradationDataset", "PSNR", "PairedFolderDataset", "PretextAccuracy", "SSIM", "default_cache_dir", "keyword_dataset"]

SAMPLE_ROOTS = (None, "sample_photos", "sample_classes")


def _check_options(owner: str, opt: Dict[str, Any], known: Tuple[str, ...]) -> None:
    # The wrapped BasicSR-style classes ignore unknown keys (BasicSR passes its own extras); an
    # MMEngine config has no such extras, so a misspelt option is an error here.
    unknown = sorted(set(opt) - set(known))
    if unknown:
        hints = "; ".join(f"{k!r}" + (f" ({h})" if h else "") for k, h in ((k, did_you_mean(k, known))
                                                                           for k in unknown))
        raise ConStyleTypeError(f"{owner}: unknown option(s) {hints}; valid: {sorted(known)}")


def default_cache_dir() -> Path:
    """Where the offline sample photos are exported when a config gives no ``sample_dir``:
    ``$CONSTYLE_PLUGIN_CACHE``, else ``$XDG_CACHE_HOME/constyle_plugin``, else
    ``~/.cache/constyle_plugin``."""
    env = os.environ.get("CONSTYLE_PLUGIN_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "constyle_plugin"


def _stems(folder: Optional[str], sample: bool) -> List[str]:
    if sample:
        from ...data.samples import sample_photos

        return [name for name, _ in sample_photos()]

    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"dataroot_gt: {folder!r} is not a folder")
    return sorted(p.stem for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _restoration_sample(lq, gt, **meta) -> Dict[str, Any]:
    sample = BaseDataElement(metainfo=meta)
    sample.gt_img = gt
    return {"inputs": lq, "data_samples": sample}


class KeywordDataset(data.Dataset):
    """The MMEngine form of a core dataset class (catalogue kind ``datasets``), made by :func:`keyword_dataset`.

    Built from keywords: they are checked against :attr:`OPTIONS` (an unknown one raises, with a
    did-you-mean), turned into the ``opt`` dict(s) of the core class (one core dataset per dict; more than
    one are read one after another), and each sample comes back in MMEngine's layout. ``dataset`` is the
    core dataset (the first, where there are several), ``datasets`` all of them.
    """

    OPTIONS: Tuple[str, ...] = ()
    CORE = ""  # the catalogue's name of the core class

    @classmethod
    def core_class(cls) -> type:
        """The core dataset class this one adapts (imported now)."""
        from .. import catalogue

        return catalogue.resolve("datasets", cls.CORE)

    def __init__(self, **opt: Any) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_options(owner, opt, self.OPTIONS)
        core = self.core_class()
        opts, extra = self._prepare(opt, owner)
        self.datasets = [core(o) for o in opts]
        self.dataset = self.datasets[0]
        self.ends = list(itertools.accumulate(len(ds) for ds in self.datasets))
        self.metainfo = {**self._describe(self.datasets), **extra}

    @staticmethod
    def _prepare(opt: Dict[str, Any], owner: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
        return [opt], {}

    @staticmethod
    def _describe(datasets: List[Any]) -> Dict[str, Any]:
        return {}

    @staticmethod
    def _sample(dataset: Any, s: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if len(self.datasets) == 1:
            return self._sample(self.dataset, self.dataset[index])
        if not -self.ends[-1] <= index < self.ends[-1]:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {self.ends[-1]} samples")
        index %= self.ends[-1]
        k = bisect.bisect_right(self.ends, index)
        ds = self.datasets[k]
        return self._sample(ds, ds[index - (self.ends[k - 1] if k else 0)])


def keyword_dataset(name: str, options: Sequence[str], summary: str, doc: str, sample: Callable,
                    prepare: Optional[Callable] = None, describe: Optional[Callable] = None,
                    **attrs: Any) -> type:
    """The :class:`KeywordDataset` of the core dataset class ``name`` in the catalogue, under the same name.

    ``options``: the keywords accepted (the core class's ``OPTIONS`` this integration supports, plus its
    own); ``summary`` / ``doc``: the rest of the first line of the docstring and its body; ``sample(core
    dataset, core sample)``: the MMEngine sample; ``prepare(opt, owner)``: ``([opt for each core dataset],
    extra metainfo)`` [``([opt], {})``]; ``describe(core datasets)``: the metainfo [``{}``]; ``attrs``:
    more class attributes (``check_layout``, properties).
    """
    from .. import catalogue

    module, _, attr = catalogue.entry("datasets", name).target.partition(":")
    body: Dict[str, Any] = {
        "__module__": __name__, "__qualname__": name, "OPTIONS": tuple(options), "CORE": name,
        "__doc__": f":class:`{module}.{attr}` for MMEngine (options as keywords){summary}\n\n    {doc.strip()}\n",
        "_sample": staticmethod(sample), **attrs}
    if prepare is not None:
        body["_prepare"] = staticmethod(prepare)
    if describe is not None:
        body["_describe"] = staticmethod(describe)
    return type(name, (KeywordDataset,), body)


def _core_check_layout(name: str) -> Any:
    """``check_layout`` of the core class ``name``, imported when called."""
    def check_layout(opt: Mapping[str, Any]) -> None:
        from .. import catalogue

        catalogue.resolve("datasets", name).check_layout(opt)
    check_layout.__doc__ = (f"The layout the keywords name, checked without reading an image (``constyle train`` "
                            f"does it before the work dir exists): :meth:`{name}.check_layout` of the core class.")
    return staticmethod(check_layout)


def _prepare_mix(opt: Dict[str, Any], owner: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    from ...data.samples import split_by_photo

    val_fraction, split_seed = opt.pop("val_fraction", 0.2), opt.pop("split_seed", 0)
    sample = opt.get("dataroot_gt") in SAMPLE_ROOTS
    if sample and not opt.get("sample_dir"):
        opt["sample_dir"] = str(default_cache_dir() / "sample_photos")
    photos = opt.get("photos")
    if isinstance(photos, str):
        if photos not in ("train", "val"):
            raise ConStyleError(f"photos: expected a list of file stems, 'train' or 'val', got {photos!r}")
        train, val = split_by_photo(_stems(opt.get("dataroot_gt"), sample), val_fraction, split_seed)
        opt["photos"] = train if photos == "train" else val
    return [opt], {}


MixDegradationDataset = keyword_dataset(
    "MixDegradationDataset",
    ("dataroot_gt", "sample_dir", "photos", "gt_size", "degradations", "phase", "use_hflip", "use_rot", "seed",
     "val_crop", "scale", "repeat", "io_backend", "check_images", "val_fraction", "split_seed"), ".", """
    Keywords are that class's ``opt`` keys (``dataroot_gt``, ``gt_size``, ``degradations``, ``phase``,
    ``val_crop``, ``seed``, ``repeat``, ...), plus:

    - ``sample_dir``: where the sample photos are exported when ``dataroot_gt`` is ``None`` /
      ``'sample_photos'``; default :func:`default_cache_dir` ``/ 'sample_photos'``.
    - ``photos``: a list of file stems, or ``'train'`` / ``'val'``: the two sides of
      :func:`constyle_plugin.data.samples.split_by_photo` over the folder's images (``val_fraction``
      [0.2], ``split_seed`` [0]), so validation photos are never trained on.
    """,
    sample=lambda ds, s: _restoration_sample(s["lq"], s["gt"], key=Path(s["gt_path"]).stem, lq_path=s["lq_path"],
                                             gt_path=s["gt_path"], degradation=s["degradation"]),
    prepare=_prepare_mix,
    describe=lambda datasets: {"photos": sorted(Path(p).stem for p in datasets[0].paths)})


def _prepare_pretrain(opt: Dict[str, Any], owner: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    if opt.get("dataroot") in SAMPLE_ROOTS and not opt.get("sample_dir"):
        opt["sample_dir"] = str(default_cache_dir() / "sample_classes")
    return [opt], {}


def _pretrain_sample(ds: Any, s: Dict[str, Any]) -> Dict[str, Any]:
    sample = BaseDataElement(metainfo={"weather": bool(s["weather"]), "path": s["path"]})
    sample.gt_label = torch.tensor(int(s["label"]), dtype=torch.long)
    return {"inputs": {"query": s["query"], "key": s["key"]}, "data_samples": sample}


ConStylePretrainDataset = keyword_dataset(
    "ConStylePretrainDataset",
    ("dataroot", "sample_dir", "crops_per_photo", "sample_crop_size", "resize", "crop_size", "rrc_scale",
     "rrc_ratio", "weather_prob", "phase", "seed", "repeat", "check_images", "io_backend"), ".", """
    Keywords are that class's ``opt`` keys (``dataroot``, ``resize``, ``crop_size``,
    ``weather_prob``, ``phase``, ...); ``sample_dir`` defaults to :func:`default_cache_dir`
    ``/ 'sample_classes'`` when ``dataroot`` is ``None`` / ``'sample_classes'``.
    """,
    sample=_pretrain_sample, prepare=_prepare_pretrain,
    describe=lambda datasets: {"classes": list(datasets[0].classes)},
    num_classes=property(lambda self: self.dataset.num_classes, doc="The number of classes (labels)."))


AllInOneTrainDataset = keyword_dataset(
    "AllInOneTrainDataset",
    ("setting", "dataroot", "tasks", "repeat", "lists", "gt_size", "use_hflip", "use_rot", "phase", "scale",
     "io_backend", "check_images"), """:
    the three-task / five-task training mixture from a PromptIR / AdaIR training root.""", """
    Keywords are that class's ``opt`` keys (``setting``, ``dataroot``, ``tasks``, ``repeat``, ``lists``,
    ``gt_size``, ``use_hflip``, ``use_rot``, ``phase``, ...). Samples carry ``task`` (the task key) in
    their metainfo. ``check_layout(opt)``: the layout the keywords name, checked without reading an image
    (``constyle train`` does it before the work dir exists).
    """,
    sample=lambda ds, s: _restoration_sample(s["lq"], s["gt"], key=Path(s["lq_path"]).stem, lq_path=s["lq_path"],
                                             gt_path=s["gt_path"], task=s["task"]),
    describe=lambda datasets: {"setting": datasets[0].setting, "tasks": list(datasets[0].tasks),
                               "repeat": dict(datasets[0].repeat)},
    check_layout=_core_check_layout("AllInOneTrainDataset"))


def _prepare_test(opt: Dict[str, Any], owner: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    from ...data.benchmark_layouts import COLUMNS, TEST_TASKS, absent_test_sets, check_setting

    task = opt.pop("task", None)
    absent: Dict[str, Path] = {}
    if task is None:
        try:
            setting = check_setting(opt.get("setting"))
        except OptionError as exc:
            raise OptionError(exc.key, f"{exc.message} ({owner})") from None
        if opt.get("dataroot"):
            absent = absent_test_sets(setting, opt["dataroot"])
        if len(absent) == len(TEST_TASKS[setting]):
            absent = {}  # nothing there: the dataset's own check names what is missing
        tasks = [t for t in TEST_TASKS[setting] if t not in absent]
        if absent:
            print_log(f"{owner}: {', '.join(COLUMNS[t] for t in absent)} not under {opt['dataroot']} (no "
                      f"{', '.join(str(f) for f in dict.fromkeys(absent.values()))}); validating the "
                      f"{len(tasks)} of {len(TEST_TASKS[setting])} columns there: the averages are partial",
                      logger="current", level=logging.WARNING)
    elif isinstance(task, str):
        tasks = [task]
    elif isinstance(task, (list, tuple)) and task:
        tasks = list(task)
        repeated = sorted({str(t) for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise OptionError("task", f"{', '.join(map(repr, repeated))} listed more than once ({owner})")
    else:
        raise OptionError("task", f"expected a test task key, a non-empty list of them or None, got "
                                  f"{task!r} ({owner})")
    return [dict(opt, task=t) for t in tasks], {"missing": [COLUMNS[t] for t in absent]}


def _describe_test(datasets: List[Any]) -> Dict[str, Any]:
    first = datasets[0]
    info = {"setting": first.setting, "tasks": [ds.task for ds in datasets], "columns": [ds.column for ds in datasets],
            "sizes": [len(ds) for ds in datasets]}
    if len(datasets) == 1:
        info.update(task=first.task, column=first.column)
    return info


AllInOneTestDataset = keyword_dataset(
    "AllInOneTestDataset", ("setting", "dataroot", "task", "max_images", "phase", "scale", "io_backend"), """:
    test sets of a benchmark setting, whole images, one after another in the papers' column order, so one
    validation dataloader covers the whole table.""", """
    Keywords: ``setting``, ``dataroot`` (the test root), ``task``, ``max_images``, ``phase``, ``scale``,
    ``io_backend``.

    - ``task``: one test task key of the setting (``'derain'``), a list of them (validated in that order; each
      must be under ``dataroot``), or ``None`` [default]: every test set of the setting under ``dataroot``, in
      the papers' column order (:data:`constyle_plugin.data.benchmark_layouts.TEST_TASKS`); the sets absent
      (none of their folders there) are left out with a warning that the averages are partial.
    - ``max_images``: the first N images of each task (sorted by name).

    Samples carry ``task`` (the task key) and ``column`` (its column name, e.g. ``'Rain100L'``) in their
    metainfo; :class:`PSNR` / :class:`SSIM` report each task and their average from them. ``metainfo``:
    ``{'setting', 'tasks', 'columns', 'sizes', 'missing'}`` (``sizes``: images per task; ``missing``: the
    columns left out as absent), plus ``'task'`` and ``'column'`` when there is one task.
    ``check_layout(opt)``: as ``AllInOneTrainDataset.check_layout``, for a test root and its task(s).
    """,
    sample=lambda ds, s: _restoration_sample(s["lq"], s["gt"], key=Path(s["lq_path"]).stem, lq_path=s["lq_path"],
                                             gt_path=s["gt_path"], task=s["task"], column=ds.column),
    prepare=_prepare_test, describe=_describe_test, check_layout=_core_check_layout("AllInOneTestDataset"))

# The MMEngine form of each core dataset of the catalogue, by name (what the mmengine registry registers).
ADAPTERS: Dict[str, type] = {cls.__name__: cls for cls in (MixDegradationDataset, ConStylePretrainDataset,
                                                           AllInOneTrainDataset, AllInOneTestDataset)}


class PairedFolderDataset(data.Dataset):
    """Pairs of degraded / clean images from two folders, matched by file name.

    A thin wrapper of BasicSR's ``PairedImageDataset`` (folder mode): ``lq_folder`` and
    ``gt_folder`` hold images with the same names (``filename_tmpl`` maps a gt stem to the lq
    stem, default ``'{}'``). ``phase='train'`` takes random paired crops of ``gt_size`` with
    flips / rotations (``use_hflip``, ``use_rot``); any other phase returns whole images.
    """

    def __init__(self, lq_folder: str, gt_folder: str, phase: str = "val", gt_size: Optional[int] = None,
                 use_hflip: bool = True, use_rot: bool = True, filename_tmpl: str = "{}") -> None:
        super().__init__()
        ensure_basicsr_importable()
        from basicsr.data.paired_image_dataset import PairedImageDataset

        for key, folder in (("lq_folder", lq_folder), ("gt_folder", gt_folder)):
            if not folder or not Path(folder).is_dir():
                raise MissingFileError(f"{key}: {folder!r} is not a folder")
        if phase == "train" and not gt_size:
            raise ConStyleError("gt_size: phase='train' needs a crop size")
        opt = dict(dataroot_lq=str(lq_folder), dataroot_gt=str(gt_folder), io_backend=dict(type="disk"),
                   filename_tmpl=filename_tmpl, phase=phase, gt_size=gt_size, use_hflip=use_hflip,
                   use_rot=use_rot, scale=1)
        try:
            self.dataset = PairedImageDataset(opt)
        except AssertionError as exc:  # BasicSR reports mismatched folders with asserts
            raise ConStyleError(f"lq_folder / gt_folder: {exc}") from None
        if len(self.dataset) == 0:
            raise ConStyleError(f"gt_folder: no image pairs in {gt_folder!r} and {lq_folder!r}")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.dataset[index]
        return _restoration_sample(s["lq"], s["gt"], key=Path(s["gt_path"]).stem, lq_path=s["lq_path"],
                                   gt_path=s["gt_path"])


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _to_hwc255(img: torch.Tensor, name: str) -> np.ndarray:
    """``3 x H x W`` RGB in [0, 1] -> ``H x W x 3`` BGR float64 on the 0..255 grid (BasicSR's
    ``tensor2img`` rounding; BGR because BasicSR's Y channel expects OpenCV's order)."""
    if not isinstance(img, torch.Tensor) or img.dim() != 3:
        raise ConStyleError(f"{name}: expected a C x H x W tensor, got "
                         f"{tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__}")
    arr = (img.detach().float().clamp(0, 1) * 255.0).round().cpu().numpy().transpose(1, 2, 0)
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr, dtype=np.float64)


def _task_label(column: str) -> str:
    """A column name as a log key part: ``'BSD68 s15'`` -> ``'BSD68_s15'`` (MMEngine's log line separates
    ``key: value`` items by spaces)."""
    return "_".join(str(column).split())


class _ImageMetric(BaseMetric):
    """Per-image BasicSR metric, averaged over images; with task metainfo, per task and over tasks.

    Where every data sample carries ``task`` metainfo (:class:`AllInOneTestDataset`,
    :class:`AllInOneTrainDataset`), the keys are ``'<key>/<column>'`` (the mean over that task's images;
    ``column`` from the sample's ``column`` metainfo, else the task key; spaces become ``_``, e.g.
    ``'PSNR/BSD68_s15'``), in the order the tasks first appear, then ``'<key>'``: the mean of the task
    means, the papers' average (not the mean over all images). Without task metainfo: ``'<key>'`` alone,
    the mean over images.
    """

    name = ""
    default_prefix = ""  # keys are logged as they are: PSNR, SSIM_Y, PSNR/Rain100L, ...

    def __init__(self, crop_border: int = 0, test_y_channel: bool = False, collect_device: str = "cpu",
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        ensure_basicsr_importable()
        self.crop_border = int(crop_border)
        self.test_y_channel = bool(test_y_channel)
        self.key = self.name + ("_Y" if self.test_y_channel else "")

    def _compute(self, pred: np.ndarray, gt: np.ndarray) -> float:
        raise NotImplementedError

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for i, ds in enumerate(data_samples):
            if "pred_img" not in ds or "gt_img" not in ds:
                raise ConStyleKeyError(f"{self.key}: data sample {i} needs 'pred_img' and 'gt_img' "
                               f"(got keys {sorted(ds)})")
            pred = _to_hwc255(ds["pred_img"], "pred_img")
            gt = _to_hwc255(ds["gt_img"], "gt_img")
            if pred.shape != gt.shape:
                raise ConStyleError(f"{self.key}: pred_img {pred.shape} and gt_img {gt.shape} differ in size")
            task = ds.get("task")
            column = ds.get("column") if task is not None else None
            self.results.append((float(self._compute(pred, gt)), None if task is None else str(task),
                                 None if column is None else str(column)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        untagged = sum(r[1] is None for r in results)
        if untagged == len(results):
            return {self.key: float(np.mean([r[0] for r in results]))}
        if untagged:
            raise ConStyleError(f"{self.key}: {untagged} of {len(results)} data samples carry no 'task' metainfo; "
                                f"validate either task-tagged samples (AllInOneTestDataset) or untagged ones")
        values: Dict[str, List[float]] = {}
        labels: Dict[str, str] = {}
        for value, task, column in results:
            values.setdefault(task, []).append(value)
            labels.setdefault(task, _task_label(column if column is not None else task))
        if len(set(labels.values())) < len(labels):  # two tasks under one column name: name them by key
            labels = {task: _task_label(task) for task in labels}
        means = {task: float(np.mean(v)) for task, v in values.items()}
        metrics = {f"{self.key}/{labels[task]}": m for task, m in means.items()}
        metrics[self.key] = float(np.mean(list(means.values())))
        return metrics


class PSNR(_ImageMetric):
    """PSNR in dB (BasicSR's ``calculate_psnr`` per image), RGB or Y channel (``test_y_channel``); key
    ``'PSNR'`` or ``'PSNR_Y'``: the mean over images, or, for task-tagged samples, ``'PSNR/<column>'`` per
    task plus ``'PSNR'``, the mean over tasks (see :class:`_ImageMetric`)."""

    name = "PSNR"

    def _compute(self, pred: np.ndarray, gt: np.ndarray) -> float:
        from basicsr.metrics import calculate_psnr

        return calculate_psnr(pred, gt, self.crop_border, input_order="HWC", test_y_channel=self.test_y_channel)


class SSIM(_ImageMetric):
    """SSIM (BasicSR's ``calculate_ssim`` per image), RGB or Y channel; keys as :class:`PSNR`'s
    (``'SSIM'`` / ``'SSIM_Y'``, and ``'SSIM/<column>'`` per task for task-tagged samples)."""

    name = "SSIM"

    def _compute(self, pred: np.ndarray, gt: np.ndarray) -> float:
        from basicsr.metrics import calculate_ssim

        return calculate_ssim(pred, gt, self.crop_border, input_order="HWC", test_y_channel=self.test_y_channel)


class PretextAccuracy(BaseMetric):
    """Top-k accuracy (percent) of the prompter's pretext classifier: keys ``'top1'``, ``'top5'``.

    Reads ``pred_logits`` (``C``) and ``gt_label`` from each prediction of
    :class:`~constyle_plugin.integrations.mmengine.models.ConStylePretrainer`. Where the predictions
    carry ``pred_latent`` (``128``) it also reports ``'latent_spread'``
    (:func:`~constyle_plugin.training.pretrain.latent_spread`: 0 when every image gets the same prompt) and
    logs a warning when the latents have collapsed.
    """

    default_prefix = ""

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = "cpu",
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for i, ds in enumerate(data_samples):
            if "pred_logits" not in ds or "gt_label" not in ds:
                raise ConStyleKeyError(f"PretextAccuracy: data sample {i} needs 'pred_logits' and 'gt_label'")
            latent = ds["pred_latent"].detach().float().cpu() if "pred_latent" in ds else None
            self.results.append((ds["pred_logits"].detach().float().cpu(),
                                 int(torch.as_tensor(ds["gt_label"]).reshape(())), latent))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        from ...training.pretrain import accuracy, collapse_message, latent_spread

        logits = torch.stack([r[0] for r in results])
        labels = torch.tensor([r[1] for r in results], dtype=torch.long)
        values = accuracy(logits, labels, self.topk)
        metrics = {f"top{k}": float(v) for k, v in zip(self.topk, values)}
        latents = [r[2] for r in results if r[2] is not None]
        if len(latents) == len(results) >= 2:
            metrics["latent_spread"] = latent_spread(torch.stack(latents))
            warning = collapse_message(metrics["latent_spread"])
            if warning:
                print_log(warning, logger="current", level=logging.WARNING)
        return metrics
