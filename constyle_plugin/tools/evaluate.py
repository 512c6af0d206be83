"""``constyle evaluate``: restore a test set and report PSNR / SSIM the way the papers do.

Either one of the field's all-in-one settings laid out as its repositories lay it out
(``--benchmark {three-task,five-task,constyle-v2} --root DIR``, see
:mod:`constyle_plugin.data.benchmark_layouts`: one task per column of the papers' table; the sets absent
from the root are columns marked missing and the average is labelled partial; ``--tasks`` chooses), or a
folder pair (``--lq DIR --gt DIR``, files paired by stem or by the field's names: ``rain-N`` with
``norain-N``, ``X_0.8_0.2`` with ``X``) as one task. Every pair is checked before anything runs
(each file has a partner, the sizes agree, each image reads); each low-quality image is restored
(tiled with ``tile``) by a network :func:`~constyle_plugin.tools.restore.load_network` loads, and
PSNR / SSIM are BasicSR's own ``calculate_psnr`` / ``calculate_ssim`` on the 8-bit images (BGR, as
BasicSR's validation passes them), on RGB or on the Y channel, with a border crop. The task's number
is the mean over its images, the average the mean over tasks.

Outputs in the output folder: ``metrics.json`` (per task and per image), ``metrics.md`` (the papers'
table, with a row for the degraded input itself), ``metrics.csv`` and side-by-side panels
(input | output | ground truth) of the first images; an output folder that already holds these (another
run's) is refused, and so is a border crop that would leave less than SSIM's window of the smallest image.
basicsr is imported only here, when metrics are computed.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from ..core.unet import ConStyleUNet
from ..data.benchmark_layouts import (COLUMNS, SETTINGS, TEST_TASKS, absent_test_sets, benchmark_test_sets,
                                      check_setting)
from ..errors import EvaluateError, RestoreError
from ..data.imageio import IMAGE_EXTENSIONS, read_image
from .restore import (PROMPT_SIZE_HELP, apply_prompt_size, check_device, check_output_folder, check_tiling,
                      load_network, size_multiple_of, tiled_forward, write_image)
from ..files import atomic_write
from ..progress import progress
from ..runs import run_reader

__all__ = ["ImagePair", "TestItem", "basicsr_metrics", "benchmark_tasks", "check_crop_border", "check_fresh_output",
           "evaluate_main", "evaluate_tasks", "pair_folders", "to_bgr_uint8", "write_reports"]

PathLike = Union[str, os.PathLike]
INSTALL_HINT = 'pip install "constyle-plugin[basicsr]" (or run inside a BasicSR fork)'


@dataclass(frozen=True)
class ImagePair:
    """One test image: its name (the file stem), the degraded input and its ground truth."""

    name: str
    lq: Path
    gt: Path

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(lq, gt)``, each ``H x W x 3`` float32 RGB in [0, 1]."""
        return read_image(self.lq), read_image(self.gt)


class TestItem(Protocol):
    """What :func:`evaluate_tasks` measures: a name and ``load() -> (lq, gt)`` (``H x W x 3`` float32
    RGB in [0, 1], same size). :class:`ImagePair` and the benchmark layouts' ``TestImage`` are both."""

    name: str

    def load(self) -> Tuple[np.ndarray, np.ndarray]: ...


# ------------------------------------------------------------------------------------------ pairs
def _images_by_stem(folder: Path, option: str, exclude: Optional[Path] = None) -> Dict[str, Path]:
    if not folder.exists():
        raise EvaluateError(f"{option}: {folder} does not exist")
    if not folder.is_dir():
        raise EvaluateError(f"{option}: {folder} is not a folder")
    found: Dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        if exclude is not None and exclude in path.parents:
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            raise EvaluateError(f"{option}: {found[stem]} and {path} have the same name; keep one of them")
        found[stem] = path
    if not found:
        raise EvaluateError(f"{option}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return found


def _image_size(path: Path) -> Tuple[int, int]:
    """``(height, width)`` from the header where Pillow is there, else by decoding the file."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # no Pillow, or a file Pillow cannot read: OpenCV decides
        return read_image(path).shape[:2]


def _ground_truth_stems(stem: str) -> List[str]:
    """The ground-truth stems an input stem pairs with, first match wins: the same stem, then the field's
    conventions: ``rain-N`` -> ``norain-N`` (Rain100L / RainTrainL), ``X_0.8_0.2`` -> ``X`` (SOTS / RESIDE)."""
    folder, _, base = stem.rpartition("/")
    prefix = folder + "/" if folder else ""
    out = [stem]
    if base.startswith("rain-"):
        out.append(prefix + "no" + base)
    if "_" in base.strip("_"):
        out.append(prefix + base.split("_")[0])
    return out


def pair_folders(lq: PathLike, gt: PathLike) -> List[ImagePair]:
    """The images of ``lq`` and ``gt`` paired by file stem (path below the folder without extension), or
    by the field's naming conventions: ``rain-N`` with ``norain-N``, ``X_0.8_0.2`` (a hazy image) with
    ``X``. An ``lq`` folder inside ``gt`` (Rain100L's ``rainy/``) is not part of the ground truth.

    Raises :class:`~constyle_plugin.errors.EvaluateError` in one line naming the file at fault: a
    missing or empty folder, a file without a partner, two files with one stem, sizes that differ.
    """
    lq, gt = Path(lq), Path(gt)
    inside = lq.resolve() if gt.resolve() in lq.resolve().parents else None
    lq_files = _images_by_stem(lq, "--lq")
    gt_files = _images_by_stem(gt, "--gt", exclude=inside)
    partner: Dict[str, str] = {}
    for stem, path in lq_files.items():
        match = next((s for s in _ground_truth_stems(stem) if s in gt_files), None)
        if match is None:
            wanted = " or ".join(f"{s}.*" for s in _ground_truth_stems(stem))
            raise EvaluateError(f"--lq: {path} has no ground truth: no {wanted} under --gt {gt}")
        partner[stem] = match
    used = set(partner.values())
    for stem, path in gt_files.items():
        if stem not in used:
            folder, _, base = stem.rpartition("/")
            twin = (folder + "/" if folder else "") + base[2:] if base.startswith("norain-") else stem
            raise EvaluateError(f"--gt: {path} has no input: no {twin}.* under --lq {lq}")
    pairs = [ImagePair(stem, lq_files[stem], gt_files[partner[stem]]) for stem in sorted(lq_files)]
    for pair in pairs:
        a, b = _image_size(pair.lq), _image_size(pair.gt)
        if a != b:
            raise EvaluateError(f"--lq: {pair.lq} is {a[1]}x{a[0]} but its ground truth {pair.gt} is {b[1]}x{b[0]}")
        if _stored_grey(pair.gt) and not _grey_content(pair.lq):
            raise EvaluateError(f"--gt: {pair.gt} is greyscale but its input {pair.lq} is in colour: the colour output "
                                f"would be measured against grey; give the colour ground truth (a grey test set "
                                f"takes grey inputs, and grey pairs are measured as BasicSR reads them, as RGB)")
    return pairs


def _stored_grey(path: Path) -> bool:
    """Whether the file stores one grey channel (with or without alpha), from the header where Pillow is there."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode != "P" and len(im.getbands()) - ("A" in im.getbands()) == 1
    except Exception:  # no Pillow, or a file Pillow cannot read: OpenCV decides
        raw = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
        return raw is not None and (raw.ndim == 2 or raw.shape[2] == 2)


def _grey_content(path: Path) -> bool:
    """Whether the image is grey: one stored channel, or three equal ones."""
    if _stored_grey(path):
        return True
    rgb = read_image(path)
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


# ------------------------------------------------------------------------------------------ metrics
def basicsr_metrics() -> Tuple[Callable[..., float], Callable[..., float]]:
    """BasicSR's ``calculate_psnr`` and ``calculate_ssim`` (PyPI basicsr or a fork's); an
    :class:`EvaluateError` saying what to install when basicsr is not there."""
    from ..compat import ensure_basicsr_importable

    try:
        ensure_basicsr_importable()
        from basicsr.metrics import calculate_psnr, calculate_ssim
    except ImportError as exc:
        raise EvaluateError(f"PSNR / SSIM are BasicSR's calculate_psnr / calculate_ssim, and basicsr cannot be "
                            f"imported here ({exc}): {INSTALL_HINT}") from None
    try:  # a fork's metrics may need help on this machine (NAFNet's SSIM calls .cuda())
        context = run_reader("basicsr").metric_context
    except (ImportError, RestoreError, AttributeError):
        return calculate_psnr, calculate_ssim

    def in_context(metric: Callable[..., float]) -> Callable[..., float]:
        def measure(*args: Any, **kwargs: Any) -> float:
            with context():
                return metric(*args, **kwargs)
        return measure

    return in_context(calculate_psnr), in_context(calculate_ssim)


def to_bgr_uint8(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` RGB in [0, 1] as BasicSR's ``tensor2img`` gives it: rounded 8-bit, BGR."""
    return np.ascontiguousarray((np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)[..., ::-1])


def _panel(*images: np.ndarray, gap: int = 8) -> np.ndarray:
    spacer = np.ones((images[0].shape[0], gap, 3), np.float32)
    parts: List[np.ndarray] = []
    for img in images:
        parts += [img, spacer]
    return np.concatenate(parts[:-1], axis=1)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def evaluate_tasks(net: Callable, tasks: Mapping[str, Sequence[TestItem]], y_channel: bool = False,
                   crop_border: int = 0, tile: Optional[int] = None, overlap: int = 32,
                   device: Union[str, torch.device] = "cpu", samples: int = 3,
                   output: Optional[PathLike] = None, save_images: bool = False,
                   show_progress: bool = True, columns: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Restore every item of every task with ``net`` and measure it, and the degraded input itself;
    returns ``{"tasks": {task: {"column", "psnr", "ssim", "n_images", "input": {"psnr", "ssim"},
    "images": [{"name", "psnr", "ssim", "input_psnr", "input_ssim"}, ...]}}, "average": {"psnr", "ssim"},
    "input": {"psnr", "ssim"}, "channel", "crop_border"}`` (``input``: the degraded input against the ground
    truth, measured alike). ``columns`` maps a task to its header in the table (default: the task itself).
    Images no larger than ``tile`` run whole, larger ones tiled. Progress: a bar on a terminal, a line per
    tenth of the images otherwise (:func:`~constyle_plugin.progress.progress`).

    With ``output``: panels (input | output | ground truth) of each task's first ``samples`` images in
    ``output/samples/``, and with ``save_images`` every restored image (8-bit PNG, the pixels that were
    measured) in ``output/restored/<task>/``.
    """
    calculate_psnr, calculate_ssim = basicsr_metrics()
    multiple = size_multiple_of(net)
    out_dir = Path(output) if output is not None else None
    total = sum(len(pairs) for pairs in tasks.values())
    bar = progress(total, "evaluate", unit="img", enabled=show_progress)
    results: Dict[str, Any] = {}
    try:
        for task, pairs in tasks.items():
            rows = []
            for i, pair in enumerate(pairs):
                lq, gt = pair.load()
                x = torch.from_numpy(lq).permute(2, 0, 1)[None].to(device)
                with torch.no_grad():
                    y = tiled_forward(net, x, tile=tile, overlap=overlap, multiple=multiple)
                restored = y[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
                out8, gt8, lq8 = to_bgr_uint8(restored), to_bgr_uint8(gt), to_bgr_uint8(lq)
                psnr, ssim, in_psnr, in_ssim = (
                    float(metric(img, gt8, crop_border, input_order="HWC", test_y_channel=y_channel))
                    for img in (out8, lq8) for metric in (calculate_psnr, calculate_ssim))
                rows.append({"name": pair.name, "psnr": psnr, "ssim": ssim, "input_psnr": in_psnr,
                             "input_ssim": in_ssim})
                if out_dir is not None:
                    measured = out8[..., ::-1].astype(np.float32) / 255.0
                    if save_images:
                        write_image(out_dir / "restored" / _safe_name(task) / f"{pair.name}.png", measured)
                    if i < samples:
                        write_image(out_dir / "samples" / f"{_safe_name(task)}_{_safe_name(pair.name)}.png",
                                    _panel(lq, measured, gt8[..., ::-1].astype(np.float32) / 255.0))
                bar.update(1, task=task, psnr=f"{psnr:.2f}")
            results[task] = {"column": (columns or {}).get(task, task),
                             "psnr": float(np.mean([r["psnr"] for r in rows])),
                             "ssim": float(np.mean([r["ssim"] for r in rows])),
                             "n_images": len(rows),
                             "input": {"psnr": float(np.mean([r["input_psnr"] for r in rows])),
                                       "ssim": float(np.mean([r["input_ssim"] for r in rows]))},
                             "images": rows}
    finally:
        bar.close()
    return {"tasks": results,
            "average": {"psnr": float(np.mean([t["psnr"] for t in results.values()])),
                        "ssim": float(np.mean([t["ssim"] for t in results.values()]))},
            "input": {"psnr": float(np.mean([t["input"]["psnr"] for t in results.values()])),
                      "ssim": float(np.mean([t["input"]["ssim"] for t in results.values()]))},
            "channel": "Y" if y_channel else "RGB", "crop_border": int(crop_border)}


# ------------------------------------------------------------------------------------------ reports
def _cell(m: Mapping[str, float]) -> str:
    return f"{m['psnr']:.2f} / {m['ssim']:.4f}"


def _average_label(metrics: Mapping[str, Any]) -> str:
    partial = metrics.get("partial")
    return f"Average (partial: {partial['measured']} of {partial['of']})" if partial else "Average"


def _markdown(metrics: Mapping[str, Any]) -> str:
    tasks, missing = metrics["tasks"], metrics.get("missing", {})
    method = Path(str(metrics.get("checkpoint", "model"))).name or "model"
    order = metrics.get("columns_order") or list(tasks)
    header = ["Method"] + [tasks[k].get("column", k) if k in tasks else missing[k]["column"] for k in order]
    header.append(_average_label(metrics))
    rows = []
    for label, pick, average in (("Input (degraded)", lambda t: t["input"], metrics.get("input")),
                                 (method, lambda t: t, metrics["average"])):
        if average is None:
            continue
        cells = [_cell(pick(tasks[k])) if k in tasks else "missing" for k in order]
        rows.append("| " + " | ".join([label, *cells, _cell(average)]) + " |")
    counts = ", ".join(f"{t.get('column', name)}: {t['n_images']}" for name, t in tasks.items())
    setting = f"{metrics['benchmark']} setting ({metrics['root']}); " if metrics.get("benchmark") else ""
    if metrics.get("max_images"):
        setting += f"only the first {metrics['max_images']} image(s) of each task (--max-images); "
    notes = []
    if missing:
        notes.append("Missing (no data under the root): " + "; ".join(
            f"{m['column']} (no {m['folder']})" for m in missing.values()) + ".")
    if metrics.get("partial"):
        notes.append(f"The average is over the {metrics['partial']['measured']} columns measured, not the setting's "
                     f"{metrics['partial']['of']}: it does not compare with the papers' average.")
    return "\n".join([
        setting + f"PSNR (dB) / SSIM on {metrics['channel']}"
        + (" (Y of YCbCr, BasicSR's test_y_channel)" if metrics["channel"] == "Y" else "")
        + f", border crop {metrics['crop_border']} px; images per task: {counts}."
        + (" The input row measures the degraded input itself against the ground truth." if metrics.get("input")
           else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" :---: "] * (len(header) - 1)) + "|",
        *rows,
        "",
        *([" ".join(notes), ""] if notes else []),
    ])


def _input_cells(measured: Optional[Mapping[str, float]]) -> List[str]:
    """The input row's PSNR / SSIM cells of the CSV; empty for metrics written without it."""
    return [f"{measured['psnr']:.6f}", f"{measured['ssim']:.6f}"] if measured else ["", ""]


def _csv(metrics: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "column", "psnr", "ssim", "n_images", "channel", "crop_border", "input_psnr",
                     "input_ssim", "status"])
    tasks, missing = metrics["tasks"], metrics.get("missing", {})
    for name in metrics.get("columns_order") or list(tasks):
        if name in missing:
            writer.writerow([name, missing[name]["column"], "", "", 0, metrics["channel"], metrics["crop_border"],
                             "", "", "missing"])
            continue
        t = tasks[name]
        writer.writerow([name, t.get("column", name), f"{t['psnr']:.6f}", f"{t['ssim']:.6f}", t["n_images"],
                         metrics["channel"], metrics["crop_border"], *_input_cells(t.get("input")), "measured"])
    avg = metrics["average"]
    writer.writerow(["average", _average_label(metrics), f"{avg['psnr']:.6f}", f"{avg['ssim']:.6f}",
                     sum(t["n_images"] for t in tasks.values()), metrics["channel"], metrics["crop_border"],
                     *_input_cells(metrics.get("input")), "partial" if metrics.get("partial") else "complete"])
    return buf.getvalue()


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite as None: JSON has no NaN or Infinity (a PSNR of
    identical images is infinite)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_reports(metrics: Mapping[str, Any], output: PathLike) -> List[Path]:
    """``metrics.json``, ``metrics.md`` and ``metrics.csv`` in ``output``; returns their paths. A value
    that is not finite (the infinite PSNR of an image restored exactly) is ``null`` in metrics.json,
    ``inf`` in the tables."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("metrics.json", json.dumps(_finite(metrics), indent=2, allow_nan=False) + "\n"),
                       ("metrics.md", _markdown(metrics)),
                       ("metrics.csv", _csv(metrics))):
        path = output / name
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------ command
def add_evaluate_arguments(parser) -> None:
    """The ``constyle evaluate`` options."""
    parser.add_argument("--checkpoint", required=True,
                        help="what constyle restore accepts: BasicSR net_g_*.pth, MMEngine .pth, a save_pretrained "
                             "folder or an exported .onnx file")
    parser.add_argument("--config", default=None,
                        help="its BasicSR .yml or MMEngine .py (default: the config its trainer recorded)")
    parser.add_argument("--benchmark", default=None, metavar="{" + ",".join(SETTINGS) + "}",
                        help="one of the field's all-in-one settings, read from --root as its repositories lay it "
                             "out (docs/allinone-benchmarks.md): one task per column of the papers' table")
    parser.add_argument("--root", default=None,
                        help="with --benchmark: the test root (PromptIR / AdaIR: the test/ folder, or the folder "
                             "holding it; constyle-v2: the authors' Test_small/ folder)")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                        help="with --benchmark: only these columns (task keys, e.g. derain denoise_25; commas work "
                             "too); default: every column whose data is under --root, the others marked missing")
    parser.add_argument("--lq", default=None, help="instead of --benchmark: folder of degraded inputs (paired with "
                                                  "--gt by file stem, or rain-N with norain-N, X_0.8_0.2 with X)")
    parser.add_argument("--gt", default=None, help="with --lq: folder of ground-truth images, one per input, same size")
    parser.add_argument("--name", default=None,
                        help="with --lq / --gt: the task's name in the tables (default: the --lq folder's name, or "
                             "the first folder above it whose name is not a generic word such as input, lq, rainy)")
    parser.add_argument("--max-images", dest="max_images", type=int, default=None,
                        help="measure only the first N images of each task (sorted by name), for a quick look; "
                             "the table says so")
    parser.add_argument("--y-channel", dest="y_channel", action="store_true",
                        help="measure on the Y channel of YCbCr (BasicSR's test_y_channel) instead of RGB")
    parser.add_argument("--crop-border", dest="crop_border", type=int, default=0,
                        help="pixels cropped from each border before measuring (default 0)")
    parser.add_argument("--tile", type=int, default=None,
                        help="restore images larger than this in overlapping tiles of this size (pixels); smaller "
                             "ones run whole (0 or omitted: every image whole)")
    parser.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=32,
                        help="overlap between tiles (default 32)")
    parser.add_argument("--prompt-size", dest="prompt_size", default=None, metavar="full|PIXELS",
                        help=PROMPT_SIZE_HELP)
    parser.add_argument("--samples", type=int, default=3,
                        help="side-by-side panels (input | output | ground truth) for this many first images "
                             "(default 3)")
    parser.add_argument("--save-images", dest="save_images", action="store_true",
                        help="also write every restored image (8-bit PNG, as measured) to OUTPUT/restored/")
    parser.add_argument("--output", required=True,
                        help="folder for metrics.json / .md / .csv and the panels; one that holds another "
                             "evaluation's files is refused")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")


# Folder names that say what a folder holds, not which data set it is: the task is named after a folder above.
_GENERIC = frozenset({"input", "inputs", "lq", "lr", "low", "degraded", "rainy", "hazy", "noisy", "blurry", "blurred",
                      "snowy", "target", "targets", "gt", "hq", "hr", "high", "clean", "norain", "sharp", "groundtruth",
                      "ground_truth", "test", "testing", "val", "data", "images", "imgs"})


def _default_name(lq: Path, gt: Path) -> str:
    """The task name of a folder pair: ``--lq``'s folder name, or the first folder above it (or above
    ``--gt`` when ``--lq`` lies inside it) whose name is not a generic word."""
    lq, gt = lq.resolve(), gt.resolve()
    folder = gt if gt in lq.parents else lq
    while folder.name.casefold() in _GENERIC and folder.parent != folder:
        folder = folder.parent
    return folder.name or lq.name


def benchmark_tasks(benchmark: str, root: PathLike, max_images: Optional[int] = None,
                    tasks: Optional[Sequence[str]] = None
                    ) -> Tuple[Dict[str, Sequence[TestItem]], Dict[str, str], Dict[str, Path]]:
    """The test sets of one all-in-one setting under ``root``, checked before anything runs:
    ``({task key: items}, {task key: column header}, {absent task key: the folder looked for})`` in the
    papers' column order, each task cut to its first ``max_images`` items when given.

    ``tasks``: only these task keys, each of which must be there; default: every task whose data is
    there (at least one), the absent ones returned as such. A task present but laid out wrongly is refused."""
    absent = {} if tasks else absent_test_sets(benchmark, root, key="--tasks")
    found: Dict[str, Sequence[TestItem]] = {}
    columns: Dict[str, str] = {}
    for task in benchmark_test_sets(benchmark, root, tasks=tasks, skip_absent=not tasks, key="--tasks"):
        items = list(task.images)[:max_images] if max_images else list(task.images)
        for item in items:  # sizes from the file headers, so a mismatch stops the run before it starts
            if item.lq is not None:
                m = item.crop_multiple
                (a, b), (c, d) = _image_size(item.lq), _image_size(item.gt)
                if (a - a % m, b - b % m) != (c - c % m, d - d % m):
                    raise EvaluateError(f"--root: {item.lq} is {b}x{a} but its ground truth {item.gt} is {d}x{c} "
                                        f"({task.column})")
        found[task.key] = items
        columns[task.key] = task.column
    return found, columns, absent


def _split_tasks(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    tasks = [t for v in values for t in v.split(",") if t]
    if not tasks:
        raise EvaluateError("--tasks: no task given")
    return tasks


def _check_inputs(args, output: Path) -> Tuple[Dict[str, Sequence[TestItem]], Dict[str, str], Dict[str, Path]]:
    benchmark_given = args.benchmark is not None or args.root is not None
    pair_given = args.lq is not None or args.gt is not None
    if benchmark_given and pair_given:
        raise EvaluateError("--benchmark / --root and --lq / --gt: give one of the two, not both")
    if not benchmark_given and not pair_given:
        raise EvaluateError("give --benchmark {" + ",".join(SETTINGS) + "} --root DIR, or --lq DIR --gt DIR")
    if benchmark_given:
        if args.benchmark is None or args.root is None:
            raise EvaluateError(f"{'--benchmark' if args.benchmark is None else '--root'} is missing: --benchmark "
                                f"and --root go together")
        check_setting(args.benchmark, key="--benchmark")
        if args.name is not None:
            raise EvaluateError("--name names the task of --lq / --gt; with --benchmark the tasks are the setting's")
        root = Path(args.root)
        if root.is_dir() and output.resolve() == root.resolve():
            raise EvaluateError(f"--output: {output} is the --root folder; choose another folder")
        return benchmark_tasks(args.benchmark, root, args.max_images, _split_tasks(getattr(args, "tasks", None)))
    if getattr(args, "tasks", None) is not None:
        raise EvaluateError("--tasks chooses columns of --benchmark; with --lq / --gt there is one task (--name)")
    if args.lq is None or args.gt is None:
        raise EvaluateError(f"{'--lq' if args.lq is None else '--gt'} is missing: --lq and --gt go together")
    lq, gt = Path(args.lq), Path(args.gt)
    if lq.is_dir() and gt.is_dir() and lq.resolve() == gt.resolve():
        raise EvaluateError(f"--gt: {gt} is the --lq folder: every input would be measured against itself; give "
                            f"the folder of ground-truth images")
    for option, folder in (("--lq", lq), ("--gt", gt)):
        if folder.is_dir() and output.resolve() == folder.resolve():
            raise EvaluateError(f"--output: {output} is the {option} folder; choose another folder")
    pairs = pair_folders(lq, gt)
    task = args.name or _default_name(lq, gt)
    return {task: pairs[:args.max_images] if args.max_images else pairs}, {task: task}, {}


# What constyle evaluate writes in its output folder.
OUTPUT_NAMES = ("metrics.json", "metrics.md", "metrics.csv", "samples", "restored")
# BasicSR's SSIM: an 11 x 11 Gaussian window over the valid part of the (cropped) image.
SSIM_WINDOW = 11


def check_fresh_output(output: Path) -> None:
    """``--output`` must not hold another evaluation's files: new metrics beside an earlier run's panels and
    restored images would read as one run. Nothing is removed: the user chooses."""
    found = [name + ("/" if (output / name).is_dir() else "") for name in OUTPUT_NAMES if (output / name).exists()]
    if found:
        raise EvaluateError(f"--output: {output} holds another evaluation's files ({', '.join(found)}); choose a new "
                            f"folder, or remove them first (nothing is overwritten or mixed with this run)")


def check_crop_border(tasks: Mapping[str, Sequence[TestItem]], crop_border: int) -> None:
    """``--crop-border`` must leave SSIM's window of every measured image (its size as measured: a
    benchmark's crop to its multiple included): named with the smallest image and the largest crop
    that fits, before anything runs."""
    if crop_border <= 0:
        return
    smallest: Optional[Tuple[int, int, Any]] = None
    for items in tasks.values():
        for item in items:
            gt = getattr(item, "gt", None)
            if gt is None:  # an item of another kind: its size as loaded
                h, w = item.load()[1].shape[:2]
            else:
                m = int(getattr(item, "crop_multiple", 1) or 1)
                h, w = _image_size(Path(gt))
                h, w = h - h % m, w - w % m
            if smallest is None or min(h, w) < min(smallest[:2]):
                smallest = (h, w, gt or item.name)
    if smallest is None:
        return
    h, w, path = smallest
    left = (h - 2 * crop_border, w - 2 * crop_border)
    if min(left) < SSIM_WINDOW:
        largest = max((min(h, w) - SSIM_WINDOW) // 2, 0)
        kept = f"{max(left[1], 0)}x{max(left[0], 0)} pixels" if min(left) > 0 else "no pixels"
        raise EvaluateError(f"--crop-border: {crop_border} leaves {kept} of the smallest image, {path} ({w}x{h}); "
                            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} (its window): use at most {largest}")


def evaluate_main(args) -> int:
    """Run ``constyle evaluate`` from parsed arguments: every option and pair is checked (and
    basicsr found) before the network loads or anything is written."""
    if args.crop_border < 0:
        raise EvaluateError(f"--crop-border: must be >= 0, got {args.crop_border}")
    if args.samples < 0:
        raise EvaluateError(f"--samples: must be >= 0, got {args.samples}")
    if args.max_images is not None and args.max_images < 1:
        raise EvaluateError(f"--max-images: must be >= 1, got {args.max_images}")
    check_tiling(args.tile, args.tile_overlap)
    device = check_device(args.device)
    output = check_output_folder(args.output)
    check_fresh_output(output)
    tasks, columns, absent = _check_inputs(args, output)
    check_crop_border(tasks, args.crop_border)
    basicsr_metrics()  # before loading the network: say what to install first
    net = load_network(args.checkpoint, args.config, device=device)
    apply_prompt_size(net, getattr(args, "prompt_size", None), error=EvaluateError)
    metrics = evaluate_tasks(net, tasks, y_channel=args.y_channel, crop_border=args.crop_border,
                             tile=args.tile, overlap=args.tile_overlap, device=device, samples=args.samples,
                             output=output, save_images=args.save_images, columns=columns)
    if args.benchmark is not None:
        metrics["benchmark"], metrics["root"] = args.benchmark, str(args.root)
        setting_tasks = TEST_TASKS[args.benchmark]
        metrics["missing"] = {k: {"column": COLUMNS[k], "folder": str(f)} for k, f in absent.items()}
        metrics["columns_order"] = [k for k in setting_tasks if k in tasks or k in absent]
        if len(tasks) < len(setting_tasks):
            metrics["partial"] = {"measured": len(tasks), "of": len(setting_tasks), "tasks": list(tasks)}
    if args.max_images is not None:
        metrics["max_images"] = args.max_images
    metrics["checkpoint"] = str(args.checkpoint)
    if isinstance(net, ConStyleUNet):
        metrics["prompt_size"] = net.prompt_size
    argv = getattr(args, "argv", None)
    metrics["command"] = "constyle " + shlex.join(argv) if argv else "constyle evaluate"
    write_reports(metrics, output)
    print(_markdown(metrics), end="")
    print(f"wrote {output / 'metrics.json'}, metrics.md, metrics.csv")
    return 0
