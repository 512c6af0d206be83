"""The field's all-in-one benchmark settings, read from the folders users have on disk.

Three settings (:data:`SETTINGS`):

* ``three-task`` (AirNet, PromptIR, AdaIR, ...): dehazing on SOTS outdoor, deraining on Rain100L,
  denoising on BSD68 at sigma 15 / 25 / 50 (noise added to the clean images here);
* ``five-task`` (AdaIR): the three above with sigma 25 only, plus deblurring on GoPro and low light on LOL;
* ``constyle-v2``: the ConStyle v2 authors' test suite (GoPro, SOTS, Rain, CBSD68 sigma 25, LIVE1 JPEG
  q20, LOL, defocus, snow).

Test roots (:func:`benchmark_test_sets`)::

    three-task / five-task (PromptIR / AdaIR ``test/``; a root holding ``test/`` is accepted too)
      denoise/bsd68/*                                  clean; noise added at load time
      derain/Rain100L/{input,target}/X.png             paired by name (or rain-N.png with norain-N.png)
      dehaze/{input/0001_0.8_0.2.jpg, target/0001.png} the clear image is the hazy stem before '_'
      deblur/gopro/{input,target}/X.png                five-task
      enhance/lol/{input,target}/X.png                 five-task
    constyle-v2 (the authors' ``Test_small/``; a root holding ``Test_small/`` is accepted too)
      {blur,rain,snow}_small/{hq,lq}, enhancement_full_lol1/{hq,lq}   paired by name
      {haze,defocus}_small/{hq,lq}, jpeg_full/{hq,lq/20}              paired in sorted order
      noise_small/*                                                   clean; noise added at load time

Training roots (:func:`benchmark_train_pairs`, PromptIR / AdaIR ``data/Train``; a root holding ``Train/``
is accepted too)::

      Denoise/*                                          clean images (noise added on the fly)
      Derain/{rainy/rain-N.png, gt/norain-N.png}
      Dehaze/{synthetic/partK/XXXX_A_B.jpg, original/XXXX.jpg}
      Deblur/{blur,sharp}/X.png                          five-task
      Enhance/{low,gt}/X.png                             five-task

Optional list files (PromptIR's ``data_dir``: ``noisy/denoise.txt``, ``rainy/rainTrain.txt``,
``hazy/hazy_outside.txt``) select the training files used.

Everything is checked when the sets are listed, before an image is read: a missing folder, a file
without its partner and a root laid out for another setting each raise one
:class:`~constyle_plugin.errors.LayoutError` line naming the path and the layout expected.

Noise models (both deterministic per test image):

* PromptIR / AdaIR: the cropped 8-bit image plus ``N(0, sigma)`` on the 0-255 scale, clipped to
  [0, 255] and truncated to 8 bit (``astype(np.uint8)``, as their code does);
* ConStyle v2 authors: the float image in [0, 1] plus ``N(0, sigma / 255)`` drawn by
  ``np.random.seed(0); np.random.normal(...)`` on the whole image, then cropped; neither clipped nor
  quantised (so the noisy input can leave [0, 1]).

Core layer: the standard library, numpy and OpenCV only (no torch, no BasicSR).
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union


from ..errors import LayoutError, OptionError, did_you_mean
from .benchmark_images import TestImage, TestTask, TrainPair, crop_to_multiple, synthetic_noise
from .imageio import IMAGE_EXTENSIONS

__all__ = [
    "SETTINGS", "DOCS", "TestImage", "TestTask", "TrainPair", "absent_test_sets", "benchmark_test_sets",
    "benchmark_train_pairs",
    "DENOISE_15", "DENOISE_25", "DENOISE_50", "DERAIN", "DEHAZE", "DEBLUR", "ENHANCE",
    "GOPRO", "SOTS", "RAIN", "CBSD68_25", "LIVE1_20", "LOL", "DEFOCUS", "SNOW",
    "TRAIN_TASKS", "THREE_TASK_TRAIN", "FIVE_TASK_TRAIN", "DEFAULT_TRAIN_TASKS", "DEFAULT_REPEAT", "TEST_TASKS",
    "COLUMNS", "NOISE_SIGMA", "CROP", "LIST_FILES", "task_group", "crop_to_multiple", "synthetic_noise",
    "check_setting", "check_test_task", "check_dataset_layout",
]

PathLike = Union[str, "os.PathLike[str]"]

DOCS = "docs/allinone-benchmarks.md"
SETTINGS = ("three-task", "five-task", "constyle-v2")

# Task keys: the three-task / five-task tasks (training and test) ...
DENOISE_15, DENOISE_25, DENOISE_50 = "denoise_15", "denoise_25", "denoise_50"
DERAIN, DEHAZE, DEBLUR, ENHANCE = "derain", "dehaze", "deblur", "enhance"
# ... and the ConStyle v2 suite's test sets.
GOPRO, SOTS, RAIN, CBSD68_25, LIVE1_20, LOL, DEFOCUS, SNOW = (
    "gopro", "sots", "rain", "cbsd68_25", "live1_20", "lol", "defocus", "snow")

TRAIN_TASKS = (DENOISE_15, DENOISE_25, DENOISE_50, DERAIN, DEHAZE, DEBLUR, ENHANCE)
THREE_TASK_TRAIN = (DENOISE_15, DENOISE_25, DENOISE_50, DERAIN, DEHAZE)
FIVE_TASK_TRAIN = TRAIN_TASKS
DEFAULT_TRAIN_TASKS: Dict[str, Tuple[str, ...]] = {"three-task": THREE_TASK_TRAIN, "five-task": FIVE_TASK_TRAIN}
# How many times each task's file list is repeated per epoch (PromptIR / AdaIR).
DEFAULT_REPEAT: Dict[str, int] = {DENOISE_15: 3, DENOISE_25: 3, DENOISE_50: 3, DERAIN: 120, DEHAZE: 1,
                                  DEBLUR: 5, ENHANCE: 20}
# Test sets in the papers' column order (the table adds the average).
TEST_TASKS: Dict[str, Tuple[str, ...]] = {
    "three-task": (DEHAZE, DERAIN, DENOISE_15, DENOISE_25, DENOISE_50),
    "five-task": (DEHAZE, DERAIN, DENOISE_25, DEBLUR, ENHANCE),
    "constyle-v2": (GOPRO, SOTS, RAIN, CBSD68_25, LIVE1_20, LOL, DEFOCUS, SNOW),
}
COLUMNS: Dict[str, str] = {
    DEHAZE: "SOTS", DERAIN: "Rain100L", DENOISE_15: "BSD68 s15", DENOISE_25: "BSD68 s25", DENOISE_50: "BSD68 s50",
    DEBLUR: "GoPro", ENHANCE: "LOL",
    GOPRO: "GoPro", SOTS: "SOTS", RAIN: "Rain", CBSD68_25: "CBSD68 s25", LIVE1_20: "LIVE1 q20", LOL: "LOL",
    DEFOCUS: "Defocus", SNOW: "Snow",
}
# Noise sigma (0-255 scale) of the tasks whose degraded input is synthesised.
NOISE_SIGMA: Dict[str, float] = {DENOISE_15: 15.0, DENOISE_25: 25.0, DENOISE_50: 50.0, CBSD68_25: 25.0}
# Test-image crop per setting: (multiple, mode). "center" keeps rows [(h % m) // 2, ...) as PromptIR's
# crop_img does; "top-left" keeps [0, h - h % m) as the ConStyle v2 authors' paired_crop does.
CROP: Dict[str, Tuple[int, str]] = {"three-task": (16, "center"), "five-task": (16, "center"),
                                    "constyle-v2": (32, "top-left")}
# PromptIR's list files, relative to its data_dir, per task group.
LIST_FILES: Dict[str, str] = {"denoise": "noisy/denoise.txt", "derain": "rainy/rainTrain.txt",
                              "dehaze": "hazy/hazy_outside.txt"}
_GROUPS = ("denoise", "derain", "dehaze", "deblur", "enhance")

_PROMPTIR_TEST = "PromptIR/AdaIR test layout"
_PROMPTIR_TRAIN = "PromptIR/AdaIR training layout"
_CONSTYLE_V2 = "ConStyle v2 test suite"
_MARKERS = {
    _PROMPTIR_TEST: ("denoise", "derain", "dehaze", "deblur", "enhance"),
    _PROMPTIR_TRAIN: ("Denoise", "Derain", "Dehaze", "Deblur", "Enhance"),
    _CONSTYLE_V2: ("blur_small", "haze_small", "rain_small", "noise_small", "jpeg_full", "enhancement_full_lol1",
                   "defocus_small", "snow_small"),
}
_WRAPPERS = {_PROMPTIR_TEST: "test", _PROMPTIR_TRAIN: "Train", _CONSTYLE_V2: "Test_small"}
_FITS = {
    _PROMPTIR_TEST: "that is a test root for setting 'three-task' or 'five-task'",
    _PROMPTIR_TRAIN: "that is a training root (AllInOneTrainDataset's `dataroot`)",
    _CONSTYLE_V2: "that is the test root for setting 'constyle-v2'",
}


def noise_seed(name: str, sigma: float) -> int:
    """The seed of the Gaussian noise a test layout adds to the clean image ``name`` at ``sigma`` (the same on
    every machine and run: CRC-32 of ``"name:sigma"``), so that anything measuring those noisy images can
    make them again."""
    return zlib.crc32(f"{name}:{float(sigma):g}".encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Folder scanning
# --------------------------------------------------------------------------------------------
def _entries(folder: Path) -> List[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _images(folder: Path, recursive: bool = False) -> List[Path]:
    if recursive:
        found = [p for p in folder.rglob("*")
                 if not any(part.startswith(".") for part in p.relative_to(folder).parts) and _is_image(p)]
        return sorted(found)
    return [folder / n for n in _entries(folder) if _is_image(folder / n)]


def _subfolders(root: Path) -> List[str]:
    """Exact names (case as stored) of ``root``'s sub-folders."""
    return [n for n in _entries(root) if (root / n).is_dir() and not n.startswith(".")]


def _looks_like(root: Path) -> Optional[str]:
    """The layout ``root`` has (two or more of its marker folders), or None."""
    names = set(_subfolders(root))
    best = max(_MARKERS, key=lambda k: len(names & set(_MARKERS[k])))
    return best if len(names & set(_MARKERS[best])) >= 2 else None


def _resolve_root(root: PathLike, expected: str, what: str, hint: str) -> Path:
    """``root`` itself, or its ``test/`` / ``Train/`` / ``Test_small/`` folder when it holds one and not the
    layout itself; a root laid out for another setting is refused, naming that layout."""
    path = Path(root)
    if not path.is_dir():
        raise LayoutError(f"{what} {path}: not a folder; {hint}")
    wrapped = path / _WRAPPERS[expected]
    if _looks_like(path) != expected and wrapped.is_dir():
        path = wrapped
    found = _looks_like(path)
    if found is not None and found != expected:
        markers = ", ".join(f"{n}/" for n in _MARKERS[found] if (path / n).is_dir())
        raise LayoutError(f"{what} {path} looks like the {found} ({markers}), not the {expected}: "
                          f"{_FITS[found]}; {hint}")
    return path


# --------------------------------------------------------------------------------------------
# Layout descriptions
# --------------------------------------------------------------------------------------------
# Test sets: key -> (lq folder or None, gt folder, pairing). Pairings: "name" (same stem), "haze" (the clear
# image is the degraded stem before the first '_'), "sorted" (i-th with i-th), "noise" (gt only).
_PROMPTIR_TEST_SETS = {
    DEHAZE: ("dehaze/input", "dehaze/target", "haze"),
    DERAIN: ("derain/Rain100L/input", "derain/Rain100L/target", "rain-test"),
    DENOISE_15: (None, "denoise/bsd68", "noise"),
    DENOISE_25: (None, "denoise/bsd68", "noise"),
    DENOISE_50: (None, "denoise/bsd68", "noise"),
    DEBLUR: ("deblur/gopro/input", "deblur/gopro/target", "name"),
    ENHANCE: ("enhance/lol/input", "enhance/lol/target", "name"),
}
_CONSTYLE_V2_TEST_SETS = {
    GOPRO: ("blur_small/lq", "blur_small/hq", "name"),
    SOTS: ("haze_small/lq", "haze_small/hq", "sorted"),
    RAIN: ("rain_small/lq", "rain_small/hq", "name"),
    CBSD68_25: (None, "noise_small", "noise"),
    LIVE1_20: ("jpeg_full/lq/20", "jpeg_full/hq", "sorted"),
    LOL: ("enhancement_full_lol1/lq", "enhancement_full_lol1/hq", "name"),
    DEFOCUS: ("defocus_small/lq", "defocus_small/hq", "sorted"),
    SNOW: ("snow_small/lq", "snow_small/hq", "name"),
}
# Training: group -> (lq folder or None, gt folder, pairing, lq searched recursively).
_TRAIN_SETS = {
    "denoise": (None, "Denoise", "noise", False),
    "derain": ("Derain/rainy", "Derain/gt", "rain", False),
    "dehaze": ("Dehaze/synthetic", "Dehaze/original", "haze", True),
    "deblur": ("Deblur/blur", "Deblur/sharp", "name", False),
    "enhance": ("Enhance/low", "Enhance/gt", "name", False),
}
_TREES = {
    DEHAZE: "dehaze/{input/0001_0.8_0.2.jpg, target/0001.png}",
    DERAIN: "derain/Rain100L/{input,target}/X.png",
    "denoise": "denoise/bsd68/*",
    DEBLUR: "deblur/gopro/{input,target}/X.png",
    ENHANCE: "enhance/lol/{input,target}/X.png",
    "train_denoise": "Denoise/*",
    "train_derain": "Derain/{rainy/rain-N.png, gt/norain-N.png}",
    "train_dehaze": "Dehaze/{synthetic/partK/XXXX_A_B.jpg, original/XXXX.jpg}",
    "train_deblur": "Deblur/{blur,sharp}/X.png",
    "train_enhance": "Enhance/{low,gt}/X.png",
}
_V2_TREE = ("<root>/{blur_small, rain_small, snow_small, enhancement_full_lol1, haze_small, defocus_small}/{hq,lq}, "
            "noise_small/*, jpeg_full/{hq, lq/20}")


def task_group(task: str) -> str:
    """The training data group of a task key: ``denoise_25`` -> ``denoise``, ``derain`` -> ``derain``."""
    return "denoise" if task.startswith("denoise") else task


def _test_tree(setting: str) -> str:
    if setting == "constyle-v2":
        return f"expected {_V2_TREE} ({_CONSTYLE_V2}; see {DOCS})"
    parts = [_TREES[DEHAZE], _TREES[DERAIN], _TREES["denoise"]]
    if setting == "five-task":
        parts += [_TREES[DEBLUR], _TREES[ENHANCE]]
    return f"expected <root>/{{{', '.join(parts)}}} ({_PROMPTIR_TEST}; see {DOCS})"


def _train_tree(groups: Sequence[str]) -> str:
    parts = ", ".join(_TREES[f"train_{g}"] for g in groups)
    return f"expected <root>/{{{parts}}} ({_PROMPTIR_TRAIN}; see {DOCS})"


def check_setting(setting: str, allowed: Sequence[str] = SETTINGS, key: str = "setting") -> str:
    """``setting`` if it is one of ``allowed``, else an :class:`~constyle_plugin.errors.OptionError` with a
    did-you-mean."""
    if setting not in allowed:
        hint = did_you_mean(setting, allowed)
        raise OptionError(key, f"unknown benchmark setting {setting!r}; {hint + ' ' if hint else ''}"
                               f"(known: {', '.join(allowed)})")
    return setting


def check_test_task(setting: str, task: object, key: str = "task") -> str:
    """``task`` if it is a test task key of ``setting`` (:data:`TEST_TASKS`), else an
    :class:`~constyle_plugin.errors.OptionError` (``key``, default ``task``) with a did-you-mean."""
    known = TEST_TASKS[setting]
    if task not in known:
        hint = did_you_mean(task, known)
        raise OptionError(key, f"{task!r} is not a {setting} test task{'; ' + hint if hint else ''} "
                                  f"(known: {', '.join(known)})")
    return str(task)


# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------
def _index_by_stem(files: Sequence[Path]) -> Dict[str, List[Path]]:
    index: Dict[str, List[Path]] = {}
    for f in files:
        index.setdefault(f.stem, []).append(f)
    return index


def _partner(lq: Path, pairing: str, gts: Dict[str, List[Path]]) -> Tuple[Optional[Path], str]:
    """The clean partner of ``lq`` under ``pairing`` (or None) and the name it should have."""
    if pairing == "haze":
        stem = lq.stem.split("_")[0]
        wanted = f"{stem}.*"
    elif pairing in ("rain", "rain-test"):  # rain-N <-> norain-N (as Rain100L's authors name it), else the same name
        stem = "norain-" + lq.stem[len("rain-"):] if lq.stem.startswith("rain-") else lq.stem
        wanted = stem + lq.suffix
        if stem not in gts and lq.stem in gts:
            stem = lq.stem
    else:
        stem = lq.stem
        wanted = lq.name
    found = gts.get(stem)
    if not found:
        return None, wanted
    same_suffix = [f for f in found if f.suffix.lower() == lq.suffix.lower()]
    return (same_suffix or found)[0], wanted


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


_RULES = {"name": "paired by file name", "subset": "paired by file name",
          "haze": "the clear image is named by the hazy file's name before the first '_'",
          "rain": "rain-N.png pairs with norain-N.png, other names with the same name",
          "rain-test": "paired by file name, or rain-N.png with norain-N.png",
          "sorted": "paired in sorted order"}


def _pairs(root: Path, lq_dir: Path, gt_dir: Path, pairing: str, lqs: Sequence[Path], gts: Sequence[Path],
           what: str) -> List[Tuple[Path, Path]]:
    """``(lq, gt)`` pairs of the files found, every file checked for a partner first."""
    rule = f"{_RULES[pairing]}; see {DOCS}"
    if pairing == "sorted":
        if len(lqs) != len(gts):
            longer, other = (lqs, gt_dir) if len(lqs) > len(gts) else (gts, lq_dir)
            extra = longer[min(len(lqs), len(gts))]
            raise LayoutError(f"{what} {root}: {_rel(extra, root)} has no partner in {_rel(other, root)}/ "
                              f"({_rel(lq_dir, root)}/ holds {len(lqs)} images, {_rel(gt_dir, root)}/ "
                              f"{len(gts)}; {rule})")
        return list(zip(lqs, gts))
    index = _index_by_stem(gts)
    pairs = []
    for lq in lqs:
        gt, wanted = _partner(lq, pairing, index)
        if gt is None:
            raise LayoutError(f"{what} {root}: {_rel(lq, root)} has no partner {_rel(gt_dir, root)}/{wanted} "
                              f"({rule})")
        pairs.append((lq, gt))
    if pairing in ("name", "rain-test"):  # one-to-one: a clean file without its degraded twin is a broken pair too
        used = {gt for _, gt in pairs}
        for gt in gts:
            if gt not in used:
                twin = "rain-" + gt.name[len("norain-"):] if gt.name.startswith("norain-") else gt.name
                raise LayoutError(f"{what} {root}: {_rel(gt, root)} has no partner {_rel(lq_dir, root)}/{twin} "
                                  f"({rule})")
    return pairs


def _need_folder(root: Path, rel: str, what: str, hint: str) -> Path:
    folder = root / rel
    if not folder.is_dir():
        raise LayoutError(f"{what} {root}: no folder {folder}; {hint}")
    return folder


def _need_images(root: Path, folder: Path, what: str, hint: str, recursive: bool = False) -> List[Path]:
    files = _images(folder, recursive)
    if not files:
        raise LayoutError(f"{what} {root}: no image file in {folder}; {hint}")
    return files


# --------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------
def _test_tasks(setting: str, tasks: Optional[Sequence[str]], key: str) -> Tuple[str, ...]:
    if tasks is None:
        return TEST_TASKS[setting]
    chosen = [check_test_task(setting, t, key) for t in ([tasks] if isinstance(tasks, str) else tasks)]
    if not chosen:
        raise OptionError(key, "no task given")
    return tuple(t for t in TEST_TASKS[setting] if t in chosen)


def _test_root(setting: str, root: PathLike) -> Tuple[Path, str, str]:
    check_setting(setting)
    layout = _CONSTYLE_V2 if setting == "constyle-v2" else _PROMPTIR_TEST
    what = f"{setting} test root"
    hint = _test_tree(setting)
    return _resolve_root(root, layout, what, hint), what, hint


def absent_test_sets(setting: str, root: PathLike, tasks: Optional[Sequence[str]] = None,
                     key: str = "task") -> Dict[str, Path]:
    """The test sets of ``setting`` (``tasks``: some of its keys; ``key``: the option naming them in errors)
    that are absent under ``root``: none of their folders exists. ``{task: the folder looked for}``, in
    column order. A set with some of its folders present is not absent: :func:`benchmark_test_sets` checks it."""
    path, _, _ = _test_root(setting, root)
    sets = _CONSTYLE_V2_TEST_SETS if setting == "constyle-v2" else _PROMPTIR_TEST_SETS
    absent = {}
    for task in _test_tasks(setting, tasks, key):
        lq_rel, gt_rel, _ = sets[task]
        folders = [path / rel for rel in (lq_rel, gt_rel) if rel is not None]
        if not any(f.exists() for f in folders):
            top = Path(os.path.commonpath([str(f) for f in folders])) if len(folders) > 1 else folders[0]
            absent[task] = top
    return absent


def benchmark_test_sets(setting: str, root: PathLike, tasks: Optional[Sequence[str]] = None,
                        skip_absent: bool = False, key: str = "task") -> List[TestTask]:
    """The test sets of ``setting`` (:data:`SETTINGS`) under ``root``, in the papers' column order.

    ``tasks``: only these test task keys (default: all of the setting's; ``key`` names the option in
    errors); ``skip_absent``: leave out the sets none of whose folders exists (see
    :func:`absent_test_sets`) instead of refusing them; at least one must be present.

    Every folder and pairing is checked before this returns (no image is read): a missing folder, an empty
    one, a file without its partner, or a root laid out for another setting raises
    :class:`~constyle_plugin.errors.LayoutError` naming the path and the layout expected. A PromptIR / AdaIR
    root may be the folder holding ``test/``; a ConStyle v2 root, the folder holding ``Test_small/``.

    Returns:
        one :class:`TestTask` per task asked for and present; images sorted by file name.
    """
    path, what, hint = _test_root(setting, root)
    keys = _test_tasks(setting, tasks, key)
    if skip_absent:
        absent = absent_test_sets(setting, root, keys)
        if len(absent) == len(keys):
            raise LayoutError(f"{what} {path}: none of the test sets asked for is there (no "
                              f"{', '.join(str(f) for f in dict.fromkeys(absent.values()))}); {hint}")
        keys = tuple(k for k in keys if k not in absent)
    sets = _CONSTYLE_V2_TEST_SETS if setting == "constyle-v2" else _PROMPTIR_TEST_SETS
    multiple, mode = CROP[setting]
    found = []
    for task in keys:
        lq_rel, gt_rel, pairing = sets[task]
        gt_dir = _need_folder(path, gt_rel, what, hint)
        if lq_rel is None:
            gts = _need_images(path, gt_dir, what, hint)
            sigma = NOISE_SIGMA[task]
            images = tuple(
                TestImage(name=g.stem, gt=g, lq=None,
                          synthesis=("float", sigma, 0) if setting == "constyle-v2"
                          else ("uint8", sigma, noise_seed(g.name, sigma)),
                          crop_multiple=multiple, crop_mode=mode)
                for g in gts)
        else:
            lq_dir = _need_folder(path, lq_rel, what, hint)
            lqs = _need_images(path, lq_dir, what, hint)
            gts = _need_images(path, gt_dir, what, hint)
            pairs = _pairs(path, lq_dir, gt_dir, pairing, lqs, gts, what)
            images = tuple(TestImage(name=lq.stem, gt=gt, lq=lq, synthesis=None, crop_multiple=multiple,
                                     crop_mode=mode) for lq, gt in pairs)
        found.append(TestTask(key=task, column=COLUMNS[task], images=images))
    return found


# --------------------------------------------------------------------------------------------
# Training pairs
# --------------------------------------------------------------------------------------------
def _check_tasks(setting: str, tasks: Optional[Union[str, Sequence[str]]]) -> Tuple[str, ...]:
    if tasks is None:
        return DEFAULT_TRAIN_TASKS[setting]
    if isinstance(tasks, str):
        tasks = [tasks]
    out = []
    for t in tasks:
        if t not in TRAIN_TASKS:
            hint = did_you_mean(t, TRAIN_TASKS)
            raise OptionError("tasks", f"unknown task {t!r}; {hint + ' ' if hint else ''}"
                                       f"(known: {', '.join(TRAIN_TASKS)})")
        if t not in out:
            out.append(t)
    if not out:
        raise OptionError("tasks", "no task given")
    return tuple(out)


def _list_files(lists: Union[None, PathLike, Mapping[str, PathLike]], groups: Sequence[str]) -> Dict[str, Path]:
    """The list file of each group that has one."""
    if lists is None:
        return {}
    if isinstance(lists, Mapping):
        out = {}
        for group, file in lists.items():
            if group not in _GROUPS:
                hint = did_you_mean(group, _GROUPS)
                raise OptionError(f"lists.{group}", f"not a task group; {hint + ' ' if hint else ''}"
                                                    f"(known: {', '.join(_GROUPS)})")
            if file is None:
                continue
            path = Path(file)
            if not path.is_file():
                raise LayoutError(f"lists.{group}: list file {path} does not exist")
            out[group] = path
        return out
    folder = Path(lists)
    if not folder.is_dir():
        raise LayoutError(f"lists: {folder} is not a folder (expected PromptIR's data_dir holding "
                          f"{', '.join(LIST_FILES.values())}; or give a mapping group -> list file)")
    out = {g: folder / rel for g, rel in LIST_FILES.items() if (folder / rel).is_file()}
    if not any(g in out for g in groups):
        raise LayoutError(f"lists: {folder} holds none of {', '.join(LIST_FILES[g] for g in groups if g in LIST_FILES)}"
                          f" (PromptIR's data_dir layout; see {DOCS})")
    return out


def _listed(list_file: Path, group: str, base: Path, lq_dir: Path) -> List[Path]:
    """The files a list file names: each line relative to the task folder (``rainy/rain-1.png`` under
    ``Derain/``), a bare name also in the degraded-image folder; a missing one is named."""
    files = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        candidates = [base / entry]
        if "/" not in entry and lq_dir != base:
            candidates.append(lq_dir / entry)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise LayoutError(f"{list_file} line {n}: {entry} does not exist (looked for "
                              f"{' and '.join(str(c) for c in candidates)}; the {group} list's lines are "
                              f"relative to {base})")
        files.append(found)
    if not files:
        raise LayoutError(f"{list_file}: names no file")
    return files


def benchmark_train_pairs(setting: str, root: PathLike, tasks: Optional[Union[str, Sequence[str]]] = None,
                          lists: Union[None, PathLike, Mapping[str, PathLike]] = None) -> Dict[str, List[TrainPair]]:
    """The training pairs of each task under a PromptIR / AdaIR training root (``data/Train``).

    ``setting``: ``three-task`` or ``five-task`` (it picks the default ``tasks``: ``DEFAULT_TRAIN_TASKS``);
    ``tasks``: task keys of :data:`TRAIN_TASKS`; ``lists``: PromptIR's ``data_dir`` folder (its
    :data:`LIST_FILES` that exist are used) or a mapping task group (``denoise``, ``derain``, ``dehaze``,
    ``deblur``, ``enhance``) -> list file; a group without a list file uses every image of its folder.

    Everything is checked before this returns (no image is read); problems raise
    :class:`~constyle_plugin.errors.LayoutError` naming the path and the layout expected.

    Returns:
        ``{task: [TrainPair, ...]}`` in task order; the denoising tasks share the clean images (``lq`` None).
    """
    check_setting(setting, ("three-task", "five-task"))
    task_keys = _check_tasks(setting, tasks)
    groups = list(dict.fromkeys(task_group(t) for t in task_keys))
    what = f"{setting} training root"
    hint = _train_tree(groups)
    path = _resolve_root(root, _PROMPTIR_TRAIN, what, hint)
    listed = _list_files(lists, groups)
    by_group: Dict[str, List[TrainPair]] = {}
    for group in groups:
        lq_rel, gt_rel, pairing, recursive = _TRAIN_SETS[group]
        gt_dir = _need_folder(path, gt_rel, what, hint)
        base = path / (lq_rel or gt_rel).split("/")[0]
        if lq_rel is None:
            if group in listed:
                gts = _listed(listed[group], group, base, gt_dir)
            else:
                gts = _need_images(path, gt_dir, what, hint)
            by_group[group] = [TrainPair(gt=g) for g in gts]
            continue
        lq_dir = _need_folder(path, lq_rel, what, hint)
        if group in listed:
            lqs = _listed(listed[group], group, base, lq_dir)
        else:
            lqs = _need_images(path, lq_dir, what, hint, recursive=recursive)
        gts = _need_images(path, gt_dir, what, hint)
        if pairing == "name" and group in listed:
            pairing = "subset"  # a list selects some pairs: clean files left out are not unpaired
        pairs = _pairs(path, lq_dir, gt_dir, pairing, lqs, gts, what)
        by_group[group] = [TrainPair(gt=g, lq=q) for q, g in pairs]
    return {t: list(by_group[task_group(t)]) for t in task_keys}


# --------------------------------------------------------------------------------------------
# Option checks of the trainers
# --------------------------------------------------------------------------------------------
def check_dataset_layout(kind: str, options: Mapping) -> None:
    """The layout an ``AllInOneTrainDataset`` (``kind='train'``) or ``AllInOneTestDataset``
    (``kind='test'``) options dict names, checked as the dataset will check it when built, without
    reading an image: the trainers' option checks call this before a run creates its folders.
    Options missing or of the wrong type are left to the dataset, which names them.

    Raises:
        OptionError: ``setting`` / ``tasks`` / ``task`` (key relative to the dataset's options).
        LayoutError: a missing folder or list file, an unpaired file, another setting's layout.
    """
    setting, root = options.get("setting"), options.get("dataroot")
    if not isinstance(setting, str) or not isinstance(root, (str, os.PathLike)) or not str(root):
        return
    if kind == "train":
        benchmark_train_pairs(check_setting(setting, ("three-task", "five-task")), root, options.get("tasks"),
                              options.get("lists"))
        return
    task = options.get("task")
    tasks = [task] if isinstance(task, str) else list(task) if isinstance(task, (list, tuple)) else None
    # only the folders the dataset reads: its task(s), or every set there (MMEngine's dataset, task None)
    benchmark_test_sets(check_setting(setting), root, tasks=tasks or None, skip_absent=not tasks)
