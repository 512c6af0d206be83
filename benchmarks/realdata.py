#!/usr/bin/env python
"""The field's table on real images at a CPU budget: NAFNet trained on real training data, measured on
real test sets, with and without the ConStyle v2 prompter.

Training data (nothing else is read for training; asserted against the test files):

* ``--bsd400``: the 400 BSDS500 train + test photos (BSD400), each training patch degraded on the fly by
  one of three tasks drawn with equal probability:
  - noise: Gaussian, sigma drawn from 15 / 25 / 50, added to the 8-bit patch, clipped, truncated to 8 bit
    (``benchmark_layouts.synthetic_noise``, the test's own noise model);
  - rain: the package's ``rain`` generator with the stage-1 light-rain ranges (``--rain-strength``,
    ``--rain-density``), or, with probability ``--real-rain-share``, a crop of a real pair of
    ``--rain-train`` (RainTrainL ``rain-N.png`` / ``norain-N.png``);
  - JPEG: OpenCV at a quality drawn from 10-40.
* The RainTrainL pairs kept here are not pixel-aligned rain layers (``benchmarks/results/rain_statistics.md``:
  the clean frame differs from the rainy one in colour and contrast, one pair is identical). Identical pairs
  are left out; in the others the clean image is mapped to the rainy frame's colours (a per-channel affine
  map fitted on the pixels the rain does not brighten) so that the pair teaches the rain, not a colour
  change. Both are recorded in the report.

Test sets (``--cbsd68``, ``--rain100l``, ``--live1``), one column each:

* CBSD68 at sigma 15 / 25 / 50: PromptIR / AdaIR's noisy input, as ``constyle evaluate --benchmark three-task``
  makes it (centre crop to a multiple of 16, 8-bit image plus seeded Gaussian noise, clipped, truncated to
  8 bit; the same noise for an image on every run);
* Rain100L (``norain-XXX.png`` + ``rainy/rain-XXX.png``): centre crop to a multiple of 16, as three-task;
* LIVE1 JPEG at quality 10 / 20 / 30 / 40 (OpenCV, whole images).

Metrics: BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on 8-bit images (``constyle_plugin.evaluate``'s
conversion), on RGB and on the Y channel (``test_y_channel``): RGB as PromptIR / AdaIR report denoising,
Y as the deraining and JPEG papers report.

Rows: the degraded input; CBM3D on the CBSD68 columns (``--cbm3d``: the ``bm3d`` package, cached per image
in ``--cbm3d-cache`` so that a background job resumes; without ``--cbm3d`` the row reads the cache); the
variants of ``benchmarks/allinone.py`` (``origin``, ``constyle`` with the packaged prompter,
``constyle_untrained``, ``learned``) and one more ``constyle`` row per ``--compare NAME=PATH`` prompter;
``--runs-from`` merges runs recorded by earlier invocations with the same settings and data. The papers'
published three-task numbers are printed beside them for context (other budget, other training set).

``--smoke`` runs on miniature stand-ins made from the offline sample photos (no real data needed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from _host import load_average, report_header  # benchmarks/_host.py
from _runs import RunsFromError, runs_from, runs_named  # benchmarks/_runs.py
from constyle_plugin.core.pretrained import file_sha256 as sha256_file
from constyle_plugin.core.prompter import atomic_write
from allinone import (UNTRAINED_PROMPTER_SEED, VARIANT_LABELS, VARIANTS, IsolatedBatches, build_model,
                      constyle_prompter_sha256, load_prompter, pick_device, random_prompter, resolve_prompter,
                      summarise, train_one, versions)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "benchmarks/realdata.py"
NOISE_SIGMAS = (15, 25, 50)
JPEG_QUALITIES = (10, 20, 30, 40)
TRAIN_JPEG_QUALITY = (10, 40)
TEST_CROP = (16, "center")  # three-task's crop of CBSD68 and Rain100L
COLUMNS = tuple([(f"cbsd68_{s}", f"CBSD68 σ{s}") for s in NOISE_SIGMAS] + [("rain100l", "Rain100L")]
                + [(f"live1_q{q}", f"LIVE1 q{q}") for q in JPEG_QUALITIES])
COLUMN_KEYS = tuple(k for k, _ in COLUMNS)
LABELS = dict(COLUMNS)
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")
TASKS = ("noise", "rain", "jpeg")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# thumbnails closer than this (mean absolute difference, 0-255) show the same photograph
SAME_PHOTO_MAD = 6.0
# the field's standard overlap: Rain100L's clean backgrounds are BSDS500 photos, most of them in BSD400
ALLOWED_OVERLAP = {("Rain100L", "BSD400")}
REUSE_MUST_MATCH = ("iters", "width", "levels", "blocks", "middle_blocks", "batch", "patch", "lr", "weight_decay",
                    "real_rain_share", "rain_strength", "rain_density", "max_images")

# The papers' three-task numbers (PSNR / SSIM, RGB), for context only: other networks, other training sets
# (BSD400 + WED, Rain100L's 200 training pairs, RESIDE OTS) and GPU budgets; their SOTS column and average
# are left out.
PUBLISHED = (
    {"method": "PromptIR", "source": "Potlapalli et al., PromptIR, NeurIPS 2023, Table 1 (all-in-one, three tasks)",
     "budget": "PromptIR (Restormer-based), Adam 2e-4, batch 32, 128 px patches, 200 epochs over BSD400 + WED "
               "(noise 15 / 25 / 50), Rain100L train, RESIDE OTS",
     "cbsd68_15": (33.98, 0.933), "cbsd68_25": (31.31, 0.888), "cbsd68_50": (28.06, 0.799),
     "rain100l": (36.37, 0.972)},
    {"method": "AdaIR", "source": "Cui et al., AdaIR, ICLR 2025 (arXiv 2403.14614), Table 1 (three tasks)",
     "budget": "AdaIR, the same training sets as PromptIR; 150 epochs, 128 px patches, lr 2e-4 (the defaults "
               "of its options.py)",
     "cbsd68_15": (34.12, 0.935), "cbsd68_25": (31.45, 0.892), "cbsd68_50": (28.19, 0.802),
     "rain100l": (38.64, 0.983)},
    {"method": "CBM3D", "source": "as quoted in PromptIR's Table 4 (single-task denoising, BSD68)",
     "budget": "no training", "cbsd68_15": (33.50, 0.922), "cbsd68_25": (30.69, 0.868),
     "cbsd68_50": (27.36, 0.763)},
)
PUBLISHED_NOTE = ("ConStyle v2's paper reports its own suite (CBSD68 at sigma 25 with float noise, LIVE1 q20, "
                  "its Rain set), not this table; its numbers are not quoted here.")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data (folders as fetched; nothing is copied)")
    data.add_argument("--bsd400", nargs="+", default=[], metavar="DIR",
                      help="training photos (BSD400: BSDS500 images/train and images/test), searched recursively")
    data.add_argument("--rain-train", default=None, metavar="DIR",
                      help="real training pairs rain-N.png / norain-N.png (RainTrainL)")
    data.add_argument("--cbsd68", default=None, metavar="DIR", help="the 68 CBSD68 images")
    data.add_argument("--rain100l", default=None, metavar="DIR",
                      help="Rain100L test: norain-XXX.png beside rainy/rain-XXX.png")
    data.add_argument("--live1", default=None, metavar="DIR", help="the 29 LIVE1 images")
    data.add_argument("--max-images", type=int, default=None,
                      help="the first N images of each test set (sorted by name): quick checks only")
    p.add_argument("--real-rain-share", type=float, default=0.25,
                   help="share of the rain patches cut from the real pairs of --rain-train (the rest: the rain "
                        "generator on BSD400)")
    p.add_argument("--rain-strength", type=float, nargs=2, default=(0.15, 0.9), metavar=("LOW", "HIGH"),
                   help="rain generator's strength range (stage 1's light-rain range)")
    p.add_argument("--rain-density", type=float, nargs=2, default=(0.001, 0.01), metavar=("LOW", "HIGH"),
                   help="rain generator's drop density range (stage 1's range)")
    p.add_argument("--prompter", default=None,
                   help="prompter of the `constyle` rows (default: the one packaged with constyle_plugin)")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=PATH",
                   help="one more row per prompter file, trained as `constyle` with that prompter, e.g. "
                        "previous=benchmarks/prompters/constyle_v2_prompter_2026-12-02.safetensors")
    p.add_argument("--variants", nargs="*", default=None,
                   help=f"rows to train: {', '.join(VARIANTS)} and the --compare names (default: all); none: "
                        "only the input, CBM3D and --runs-from rows")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--runs-from", nargs="+", default=[], metavar="REALDATA_JSON",
                   help="take the runs of rows not trained here from earlier realdata.json reports made with the "
                        "same settings and files (a row may have fewer seeds than --seeds)")
    p.add_argument("--iters", type=int, default=1200, help="training iterations per run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=64, help="training patch side (px)")
    p.add_argument("--width", type=int, default=16, help="NAFNet width")
    p.add_argument("--levels", type=int, default=3, help="NAFNet levels (>= 3)")
    p.add_argument("--blocks", type=int, default=1, help="NAFBlocks per encoder / decoder level")
    p.add_argument("--middle-blocks", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine to 1e-6)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--cbm3d", action="store_true",
                   help="run CBM3D (pip install bm3d) on the CBSD68 images missing from --cbm3d-cache first "
                        "(about 30 s of CPU an image at sigma 25 on this project's machine)")
    p.add_argument("--cbm3d-sigmas", type=int, nargs="+", default=list(NOISE_SIGMAS), choices=NOISE_SIGMAS)
    p.add_argument("--cbm3d-cache", default=None,
                   help="per-image CBM3D results (default: benchmarks/results/realdata_cbm3d; --smoke: in --out)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=0, help="data worker processes (0 on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default=None, help="folder for realdata.{json,md} (default benchmarks/results; "
                                                "--smoke: a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run on stand-ins made from the offline sample photos (no real data)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.seeds, args.width, args.batch, args.patch = 3, args.seeds[:1], 8, 2, 32
        args.levels, args.blocks, args.middle_blocks = 3, 1, 1
    if args.prompter is not None and not Path(args.prompter).expanduser().is_file():
        p.error(f"--prompter {args.prompter}: no such file")
    compare = {}
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name in VARIANTS or name in compare:
            p.error(f"--compare {item!r}: expected NAME=PATH with a new NAME (not one of {', '.join(VARIANTS)})")
        if not Path(path).expanduser().is_file():
            p.error(f"--compare {item!r}: no such file {path}")
        compare[name] = Path(path).expanduser()
    args.compare = compare
    known = list(VARIANTS) + list(compare)
    args.variants = known if args.variants is None else args.variants
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {known}")
    args.variants = [v for v in known if v in args.variants]
    for name in ("iters", "batch", "patch", "width", "levels", "blocks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.levels < 3:
        p.error(f"--levels must be >= 3 (the prompt features go in at 1/2, 1/4 and 1/8), got {args.levels}")
    if args.max_images is not None and args.max_images < 1:
        p.error(f"--max-images must be a positive integer, got {args.max_images}")
    if not 0.0 <= args.real_rain_share <= 1.0:
        p.error(f"--real-rain-share must be in [0, 1], got {args.real_rain_share}")
    for name in ("rain_strength", "rain_density"):
        low, high = getattr(args, name)
        if not 0.0 <= low <= high:
            p.error(f"--{name.replace('_', '-')}: need 0 <= LOW <= HIGH, got {low} {high}")
        setattr(args, name, [low, high])
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has duplicates: {args.seeds}")
    if not args.smoke:
        missing = [o for o, v in (("--cbsd68", args.cbsd68), ("--rain100l", args.rain100l), ("--live1", args.live1))
                   if not v]
        if missing:
            p.error(f"give the test sets {', '.join(missing)} (or --smoke)")
        if args.variants and not args.bsd400:
            p.error("training needs --bsd400 (and --rain-train for the real rain pairs)")
    try:
        args.reused, args.runs_from_reports = runs_from(
            args.runs_from, vars(args), REUSE_MUST_MATCH, args.variants, args.seeds, "a realdata.json report",
            lambda earlier: {"data_digest": earlier.get("data", {}).get("digest"), "host": earlier.get("host")},
            every_seed=False, prompters={"constyle": constyle_prompter_sha256(args.prompter),
                                         **{n: sha256_file(path) for n, path in compare.items()}},
        ) if args.runs_from else ([], [])
    except RunsFromError as exc:
        p.error(str(exc))
    return args


# ---------------------------------------------------------------------------------------------
# files: manifests, overlap, leaks
# ---------------------------------------------------------------------------------------------

def image_files(folder: Path, recursive: bool = False, pattern: str = "*") -> List[Path]:
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such folder")
    found = sorted(p for p in (folder.rglob(pattern) if recursive else folder.glob(pattern))
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise SystemExit(f"{folder}: no image file{' (searched recursively)' if recursive else ''}")
    return found


def manifest(role: str, folders: Sequence[Path], files: Sequence[Path]) -> Dict:
    """SHA-256 of every file of a set (keyed by the path as given), with one digest for the whole set and the
    files whose bytes occur more than once."""
    hashes = {str(f): sha256_file(f) for f in files}
    digest = hashlib.sha256("".join(f"{Path(k).name}:{v}\n" for k, v in sorted(hashes.items())).encode())
    seen: Dict[str, List[str]] = {}
    for k, v in hashes.items():
        seen.setdefault(v, []).append(Path(k).name)
    return {"role": role, "folders": [str(f) for f in folders], "files": len(files), "sha256": hashes,
            "digest": digest.hexdigest(), "duplicates": sorted(v for v in seen.values() if len(v) > 1)}


class LeakError(ValueError):
    """A training file is a test file (same path, same bytes or the same photograph)."""


def check_no_leak(manifests: Mapping[str, Dict], overlap: Mapping[str, Dict]) -> None:
    """Refuse (``LeakError``) a training file that is a test file: the same path (symbolic links resolved), the
    same bytes, or, outside :data:`ALLOWED_OVERLAP`, the same photograph (``overlap``: :func:`photo_overlap`)."""
    train = {k: m for k, m in manifests.items() if m["role"] == "train"}
    test = {k: m for k, m in manifests.items() if m["role"] == "test"}
    for tr_name, tr in train.items():
        tr_paths = {os.path.realpath(p): p for p in tr["sha256"]}
        tr_hashes = {h: p for p, h in tr["sha256"].items()}
        for te_name, te in test.items():
            for path, h in te["sha256"].items():
                if os.path.realpath(path) in tr_paths:
                    raise LeakError(f"test file {path} ({te_name}) is also a training file of {tr_name} "
                                    f"({tr_paths[os.path.realpath(path)]})")
                if h in tr_hashes:
                    raise LeakError(f"test file {path} ({te_name}) has the same bytes as the training file "
                                    f"{tr_hashes[h]} ({tr_name})")
    for key, found in overlap.items():
        te_name, tr_name = key.split(" | ")
        if found["matches"] and (te_name, tr_name) not in ALLOWED_OVERLAP:
            first = next(iter(found["matches"].items()))
            raise LeakError(f"{len(found['matches'])} {te_name} image(s) show a photograph of the training set "
                            f"{tr_name}, e.g. {first[0]} ~ {first[1]}")


def _thumbnails(path: Path, rotations: Sequence[int]) -> List[np.ndarray]:
    grey = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_GRAYSCALE)
    out = []
    for k in rotations:
        img = np.rot90(grey, k)
        if img.shape[0] <= img.shape[1]:  # compared in landscape
            out.append(cv2.resize(img, (48, 32), interpolation=cv2.INTER_AREA).astype(np.float32))
    return out


def photo_overlap(test_files: Sequence[Path], train_files: Sequence[Path]) -> Dict:
    """Which test images show a photograph of the training set (whatever the format and a 90-degree rotation):
    mean absolute difference of 48 x 32 grey thumbnails below :data:`SAME_PHOTO_MAD`."""
    if not test_files or not train_files:
        return {"matches": {}, "threshold": SAME_PHOTO_MAD}
    train_thumbs, owners = [], []
    for f in train_files:
        for t in _thumbnails(f, (0, 1, 2, 3)):
            train_thumbs.append(t)
            owners.append(f.name)
    bank = np.stack(train_thumbs)
    matches = {}
    for f in test_files:
        t = _thumbnails(f, (0, 1))[0]
        mad = np.abs(bank - t).mean(axis=(1, 2))
        best = int(mad.argmin())
        if mad[best] < SAME_PHOTO_MAD:
            matches[f.name] = owners[best]
    return {"matches": matches, "threshold": SAME_PHOTO_MAD}


# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------

def _read_rgb_u8(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: not a readable image")
    return np.ascontiguousarray(img[..., ::-1])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.float64(a) - np.float64(b)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def colour_match(clean: np.ndarray, rainy: np.ndarray, keep: float = 0.8, rounds: int = 3
                 ) -> Tuple[np.ndarray, List[List[float]]]:
    """``clean`` mapped to ``rainy``'s colours: per channel ``a * clean + b``, fitted by least squares on the
    pixels the rain does not brighten (each round keeps the ``keep`` share with the lowest residual ``rainy -
    fit``; rain streaks are the positive outliers). Float images in [0, 1]; returns the mapped image and
    ``[a, b]`` per channel."""
    out = np.empty_like(clean)
    coefs = []
    for c in range(3):
        x, y = clean[..., c].ravel().astype(np.float64), rainy[..., c].ravel().astype(np.float64)
        mask = np.ones_like(x, dtype=bool)
        for _ in range(rounds):
            a, b = np.linalg.lstsq(np.stack([x[mask], np.ones(int(mask.sum()))], 1), y[mask], rcond=None)[0]
            residual = y - (a * x + b)
            mask = residual <= np.quantile(residual, keep)
        out[..., c] = np.clip(a * clean[..., c] + b, 0.0, 1.0)
        coefs.append([round(float(a), 4), round(float(b), 4)])
    return out.astype(np.float32), coefs


@dataclass
class RainPair:
    name: str
    rainy: np.ndarray  # H x W x 3 float32
    clean: np.ndarray  # colour-matched to ``rainy``


def rain_pairs(folder: Optional[str]) -> Tuple[List[RainPair], List[Path], List[Dict]]:
    """The real pairs of ``folder`` (``rain-N.png`` with ``norain-N.png``): the pairs kept, every file read, and
    a record per pair (left out when identical; PSNR of the pair before and after the colour match)."""
    if not folder:
        return [], [], []
    root = Path(folder)
    rainy_files = sorted(image_files(root, pattern="rain-*"), key=lambda p: (len(p.stem), p.stem))
    kept, files, records = [], [], []
    for rf in rainy_files:
        cf = rf.with_name("no" + rf.name)
        if not cf.is_file():
            raise SystemExit(f"--rain-train: {rf} has no clean partner {cf.name}")
        files += [rf, cf]
        rainy, clean = _read_rgb_u8(rf), _read_rgb_u8(cf)
        if rainy.shape != clean.shape:
            raise SystemExit(f"--rain-train: {rf.name} and {cf.name} differ in size")
        if np.array_equal(rainy, clean):
            records.append({"pair": rf.name, "kept": False, "reason": "identical images"})
            continue
        r, c = rainy.astype(np.float32) / 255.0, clean.astype(np.float32) / 255.0
        matched, coefs = colour_match(c, r)
        kept.append(RainPair(rf.name, r, matched))
        records.append({"pair": rf.name, "kept": True, "size": list(rainy.shape[:2]),
                        "psnr_rainy_vs_clean": round(_psnr(r, c), 2),
                        "psnr_rainy_vs_matched_clean": round(_psnr(r, matched), 2),
                        "median_abs_diff": round(float(np.median(np.abs(r - c))) * 255, 2),
                        "median_abs_diff_matched": round(float(np.median(np.abs(r - matched))) * 255, 2),
                        "colour_map": coefs})
    return kept, files, records


class RealTrainDataset(torch.utils.data.Dataset):
    """Training patches: a BSD400 photo (the ``index``-th, modulo) cut at random, flipped / rotated and degraded
    by one of :data:`TASKS` (equal probability), or, for rain with probability ``real_rain_share``, a patch of
    a real pair. Random draws come from torch's generator and Python's ``random`` (``IsolatedBatches`` gives
    every variant of a seed the same batches). ``dataset[i] = {'lq', 'gt': 3 x P x P float, 'task': str}``."""

    def __init__(self, photos: Sequence[Path], pairs: Sequence[RainPair], patch: int, length: int,
                 real_rain_share: float, rain_strength: Sequence[float], rain_density: Sequence[float]):
        self.photos, self.pairs, self.patch, self.length = list(photos), list(pairs), patch, length
        self.real_rain_share, self.rain_strength, self.rain_density = real_rain_share, rain_strength, rain_density

    def __len__(self) -> int:
        return self.length

    def _crop(self, images: Sequence[np.ndarray], rng: np.random.Generator) -> List[np.ndarray]:
        from basicsr.data.transforms import augment
        from constyle_plugin.data.datasets import pad_to_size

        s = self.patch
        images = [pad_to_size(img, s) for img in images]
        h, w = images[0].shape[:2]
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crops = [np.ascontiguousarray(img[top:top + s, left:left + s]) for img in images]
        out = augment(crops, True, True)
        return [np.ascontiguousarray(x, dtype=np.float32) for x in (out if isinstance(out, list) else [out])]

    def __getitem__(self, index: int) -> Dict:
        from constyle_plugin.data import degradations as deg
        from constyle_plugin.data.benchmark_images import synthetic_noise

        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
        task = TASKS[int(rng.integers(len(TASKS)))]
        if task == "rain" and self.pairs and rng.random() < self.real_rain_share:
            pair = self.pairs[int(rng.integers(len(self.pairs)))]
            lq, gt = self._crop([pair.rainy, pair.clean], rng)
        else:
            gt = self._crop([_read_rgb_u8(self.photos[index % len(self.photos)]).astype(np.float32) / 255.0],
                            rng)[0]
            if task == "noise":
                lq = synthetic_noise(gt, NOISE_SIGMAS[int(rng.integers(len(NOISE_SIGMAS)))], rng)
            elif task == "rain":
                lq = deg.rain(gt, rng, strength=float(rng.uniform(*self.rain_strength)),
                              density=float(rng.uniform(*self.rain_density)))
            else:
                lq = deg.jpeg(gt, rng, quality=int(rng.integers(TRAIN_JPEG_QUALITY[0], TRAIN_JPEG_QUALITY[1] + 1)))
        to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)  # noqa: E731
        return {"lq": to_t(lq), "gt": to_t(gt), "task": task}


# ---------------------------------------------------------------------------------------------
# test sets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JpegImage:
    """A LIVE1 image and its OpenCV JPEG at ``quality``, whole (``load() -> (lq, gt)``, as ``TestImage``)."""

    name: str
    gt: Path
    quality: int

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        from constyle_plugin.data import degradations as deg
        from constyle_plugin.data.imageio import read_image

        gt = read_image(self.gt)
        return deg.jpeg(gt, np.random.default_rng(0), quality=self.quality), gt


def test_sets(args: argparse.Namespace) -> Tuple[List[Tuple[str, object]], Dict[str, Dict], Dict[str, List[Path]]]:
    """``[(column, item)]`` in :data:`COLUMNS` order, the test manifests, and the clean images of each set (for
    the photo overlap)."""
    from constyle_plugin.data.benchmark_images import TestImage
    from constyle_plugin.data.benchmark_layouts import noise_seed  # as constyle evaluate --benchmark three-task

    n = args.max_images
    multiple, mode = TEST_CROP
    items: List[Tuple[str, object]] = []
    manifests, clean = {}, {}
    cbsd = image_files(Path(args.cbsd68))[:n]
    manifests["CBSD68"] = manifest("test", [Path(args.cbsd68)], cbsd)
    clean["CBSD68"] = cbsd
    for sigma in NOISE_SIGMAS:
        items += [(f"cbsd68_{sigma}", TestImage(name=f.stem, gt=f, lq=None,
                                                 synthesis=("uint8", float(sigma), noise_seed(f.name, sigma)),
                                                 crop_multiple=multiple, crop_mode=mode)) for f in cbsd]
    root = Path(args.rain100l)
    rainy = sorted(image_files(root / "rainy", pattern="rain-*"))[:n]
    pairs = []
    for f in rainy:
        gt = root / ("no" + f.name)
        if not gt.is_file():
            raise SystemExit(f"--rain100l: {f} has no clean partner {gt}")
        pairs.append((f, gt))
    manifests["Rain100L"] = manifest("test", [root], [p for pair in pairs for p in pair])
    clean["Rain100L"] = [gt for _, gt in pairs]
    items += [("rain100l", TestImage(name=f.stem, gt=gt, lq=f, synthesis=None, crop_multiple=multiple,
                                     crop_mode=mode)) for f, gt in pairs]
    live = image_files(Path(args.live1))[:n]
    manifests["LIVE1"] = manifest("test", [Path(args.live1)], live)
    clean["LIVE1"] = live
    for q in JPEG_QUALITIES:
        items += [(f"live1_q{q}", JpegImage(f.stem, f, q)) for f in live]
    return items, manifests, clean


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def image_metrics(restored: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """BasicSR's PSNR / SSIM on RGB and on Y, on the 8-bit images ``constyle evaluate`` measures."""
    from constyle_plugin.tools.evaluate import basicsr_metrics, to_bgr_uint8

    calculate_psnr, calculate_ssim = basicsr_metrics()
    out8, gt8 = to_bgr_uint8(restored), to_bgr_uint8(gt)
    return {"psnr": float(calculate_psnr(out8, gt8, 0, input_order="HWC")),
            "ssim": float(calculate_ssim(out8, gt8, 0, input_order="HWC")),
            "psnr_y": float(calculate_psnr(out8, gt8, 0, input_order="HWC", test_y_channel=True)),
            "ssim_y": float(calculate_ssim(out8, gt8, 0, input_order="HWC", test_y_channel=True))}


def aggregate(per_image: Mapping[str, List[Dict]]) -> Dict:
    """Per-column means over images and their mean over the columns present (``average``, all columns only)."""
    per_col = {c: {**{k: float(np.mean([r[k] for r in rows])) for k in METRICS}, "n_images": len(rows)}
               for c, rows in per_image.items() if rows}
    complete = all(c in per_col for c in COLUMN_KEYS)
    average = {k: float(np.mean([per_col[c][k] for c in COLUMN_KEYS])) for k in METRICS} if complete else None
    return {"per_degradation": per_col, "average": average,
            "per_image": {c: [{"name": r["name"], **{k: round(r[k], 4) for k in METRICS}} for r in rows]
                          for c, rows in per_image.items()}}


def measure(items: Sequence[Tuple[str, object]], restore: Callable[[np.ndarray], np.ndarray], desc: str,
            show_progress: bool) -> Dict:
    from tqdm import tqdm

    per_image: Dict[str, List[Dict]] = {c: [] for c in COLUMN_KEYS}
    for column, item in tqdm(items, desc=desc, disable=not show_progress, mininterval=5.0, file=sys.stderr):
        lq, gt = item.load()
        per_image[column].append({"name": item.name, **image_metrics(restore(lq), gt)})
    return aggregate(per_image)


def network_restorer(net: torch.nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    from constyle_plugin.core.padding import size_multiple_of
    from constyle_plugin.tools.restore import tiled_forward

    net.eval()
    multiple = size_multiple_of(net)

    @torch.no_grad()
    def restore(lq: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
        return tiled_forward(net, x, multiple=multiple)[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()

    return restore


# ---------------------------------------------------------------------------------------------
# CBM3D: per-image cache, resumable
# ---------------------------------------------------------------------------------------------

def _input_sha(lq: np.ndarray) -> str:
    return hashlib.sha256(np.round(np.clip(lq, 0, 1) * 255).astype(np.uint8).tobytes()).hexdigest()


def _cache_file(cache: Path, sigma: int) -> Path:
    return cache / f"cbsd68_sigma{sigma}.json"


def run_cbm3d(items: Sequence[Tuple[str, object]], cache: Path, sigmas: Sequence[int], log=print) -> Optional[str]:
    """CBM3D (``bm3d.bm3d_rgb(noisy, sigma / 255)``, output clipped to [0, 1]) on every CBSD68 image of
    ``sigmas`` not yet in ``cache`` (one JSON per sigma, rewritten after each image; an entry counts only for
    the same noisy input). Returns None, or the line saying why nothing ran (bm3d is not installed, another
    job holds the cache)."""
    try:
        import bm3d
    except ImportError:
        return "CBM3D not run: the bm3d package is not installed (pip install bm3d)"
    from importlib import metadata

    try:
        version = metadata.version("bm3d")
    except metadata.PackageNotFoundError:
        version = getattr(bm3d, "__version__", "unknown")
    cache.mkdir(parents=True, exist_ok=True)
    lock = cache / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = lock.read_text().strip()
        try:
            os.kill(int(pid), 0)
            return f"CBM3D not run: process {pid} is filling {cache} (remove {lock} if it is gone)"
        except (ValueError, ProcessLookupError):
            lock.unlink()
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        for sigma in sigmas:
            path = _cache_file(cache, sigma)
            record = json.loads(path.read_text()) if path.is_file() else {
                "method": "CBM3D", "bm3d": version, "sigma": sigma,
                "call": f"bm3d.bm3d_rgb(noisy, {sigma} / 255) (profile 'np', colour space 'opp'), clipped to [0, 1]",
                "images": {}}
            todo = [it for c, it in items if c == f"cbsd68_{sigma}"]
            for i, item in enumerate(todo):
                lq, gt = item.load()
                sha = _input_sha(lq)
                if record["images"].get(item.name, {}).get("input_sha256") == sha:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                out = np.clip(bm3d.bm3d_rgb(lq.astype(np.float64), sigma / 255.0), 0.0, 1.0)
                seconds = time.perf_counter() - t0
                record["images"][item.name] = {"input_sha256": sha, "time_s": round(seconds, 2),
                                               "cpu_s": round(time.process_time() - c0, 2),
                                               **{k: round(v, 4) for k, v in image_metrics(out, gt).items()}}
                atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
                log(f"[realdata] CBM3D sigma {sigma}: {item.name} {record['images'][item.name]['psnr']:.2f} dB in "
                    f"{seconds:.1f} s ({i + 1}/{len(todo)})")
    finally:
        lock.unlink(missing_ok=True)
    return None


def cbm3d_row(items: Sequence[Tuple[str, object]], cache: Path) -> Optional[Dict]:
    """The CBM3D row from the cache: per CBSD68 column, the images cached for this run's noisy inputs
    (``complete`` when all are)."""
    per_image: Dict[str, List[Dict]] = {}
    counts = {}
    for sigma in NOISE_SIGMAS:
        path = _cache_file(cache, sigma)
        column = f"cbsd68_{sigma}"
        todo = [it for c, it in items if c == column]
        if not path.is_file() or not todo:
            continue
        cached = json.loads(path.read_text())["images"]
        rows = []
        for item in todo:
            entry = cached.get(item.name)
            if entry and entry["input_sha256"] == _input_sha(item.load()[0]):
                rows.append({"name": item.name, **{k: entry[k] for k in METRICS}, "time_s": entry["time_s"]})
        per_image[column] = rows
        counts[column] = {"done": len(rows), "of": len(todo)}
    if not any(per_image.values()):
        return None
    row = aggregate(per_image)
    row["counts"] = counts
    row["complete"] = {c: n["done"] == n["of"] for c, n in counts.items()}
    row["time_s_per_image"] = {c: float(np.mean([r["time_s"] for r in rows])) for c, rows in per_image.items() if rows}
    return row


# ---------------------------------------------------------------------------------------------
# smoke stand-ins
# ---------------------------------------------------------------------------------------------

def smoke_data(root: Path) -> Dict[str, object]:
    """Miniature stand-ins for the five sets, from the offline sample photos: BSD400 (5 JPEGs, one portrait),
    RainTrainL (2 pairs made with the rain generator and one identical pair), CBSD68 (2 PNGs), Rain100L (2
    pairs, the first background one of the BSD400 stand-ins, as in the real sets), LIVE1 (2 BMPs)."""
    from constyle_plugin.data import degradations as deg
    from constyle_plugin.data.samples import sample_photos

    photos = [img for _, img in sorted(sample_photos())]
    rng = np.random.default_rng(0)

    def save(path: Path, rgb: np.ndarray, size=(90, 70)) -> np.ndarray:
        path.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        params = [int(cv2.IMWRITE_JPEG_QUALITY), 95] if path.suffix == ".jpg" else []
        cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]), params)
        return img

    bsd = [save(root / "bsd400" / f"{i}.jpg", photos[i], (70, 90) if i == 0 else (90, 70)) for i in range(5)]
    for k, i in enumerate((5, 6, 7)):
        clean = save(root / "rain_train" / f"norain-{k + 1}.png", photos[i])
        rainy = clean if k == 2 else np.round(deg.rain(clean.astype(np.float32) / 255, rng) * 255).astype(np.uint8)
        save(root / "rain_train" / f"rain-{k + 1}.png", rainy)
    for k, i in enumerate((8, 9)):
        save(root / "cbsd68" / f"{k}.png", photos[i], (75, 66))
    for k, img in enumerate((np.rot90(bsd[0], -1).copy(), photos[10])):
        clean = save(root / "rain100l" / f"norain-{k + 1:03d}.png", img, (90, 70))
        rainy = np.round(deg.rain(clean.astype(np.float32) / 255, rng) * 255).astype(np.uint8)
        save(root / "rain100l" / "rainy" / f"rain-{k + 1:03d}.png", rainy, (90, 70))
    for k, i in enumerate((11, 12)):
        save(root / "live1" / f"{k}.bmp", photos[i], (72, 56))
    return {"bsd400": [str(root / "bsd400")], "rain_train": str(root / "rain_train"), "cbsd68": str(root / "cbsd68"),
            "rain100l": str(root / "rain100l"), "live1": str(root / "live1")}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _cell(stat: Mapping, digits: int) -> str:
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def row_label(variant: str) -> str:
    if variant in VARIANT_LABELS:
        return VARIANT_LABELS[variant].replace("+ConStyle v2", "+ConStyle v2 (packaged prompter)", 1) \
            if variant == "constyle" else VARIANT_LABELS[variant]
    return f"+ConStyle v2 ({variant} prompter)"


def markdown(report: Dict) -> str:
    cfg = report["config"]
    lines = ["# The table on real images at a CPU budget", ""]
    if cfg["smoke"]:
        lines += ["> Smoke run on stand-ins made from the offline photos, a few iterations: the numbers mean "
                  "nothing.", ""]
    if report["prompter"].get("random"):
        lines += ["> The `constyle` prompter of this run is a RANDOM network (no prompter file).", ""]
    for ru in report["reused"]:
        where = ru.get("host") or {}
        lines += [f"> Runs of {runs_named(ru)} come from `{ru['file']}` (made {ru['date']} by "
                  f"`{ru['command']}` on {where.get('device_name')}, {where.get('torch_threads')} torch threads, "
                  f"load average {where.get('load_average_start')}) with the same settings and files (checked).", ""]
    host = report["host"]
    lines += [f"Command: `{report['command']}`  ",
              f"Date: {report['date']}; wall time {report['wall_time_s'] / 60:.1f} min on {host['device_name']} "
              f"({host['cpu_count']} CPUs, {host['torch_threads']} torch threads; load average at start "
              f"{host['load_average_start']}, at end {host.get('load_average_end')}).", ""]
    variants = report["rows"]["variants"]
    times = {v: report["summary"]["variants"][v]["train_time_s"] for v in variants}
    budget = (f"NAFNet width {cfg['width']}, {cfg['levels']} levels x {cfg['blocks']} block(s), "
              f"{cfg['middle_blocks']} middle block(s); {cfg['iters']} iterations, batch {cfg['batch']}, "
              f"{cfg['patch']} px patches, L1, AdamW lr {cfg['lr']:g} (cosine to 1e-6), weight decay "
              f"{cfg['weight_decay']:g}, no EMA")
    lines += [f"**Budget** (every trained row): {budget}." if variants else
              "No trained row in this report (the commands of the training runs: docs/benchmarks.md).", ""]
    data = report["data"]
    kept = [r for r in data["rain_pairs"] if r["kept"]]
    left = [r["pair"] for r in data["rain_pairs"] if not r["kept"]]
    lines += [
        f"**Training data**: {data['manifests'].get('BSD400', {}).get('files', 0)} BSD400 photos, each patch "
        f"degraded by one of noise (sigma 15 / 25 / 50, the test's 8-bit model), rain and JPEG (OpenCV, quality "
        f"{TRAIN_JPEG_QUALITY[0]}-{TRAIN_JPEG_QUALITY[1]}), equal shares; rain is the package's generator "
        f"(strength {cfg['rain_strength'][0]:g}-{cfg['rain_strength'][1]:g}, density "
        f"{cfg['rain_density'][0]:g}-{cfg['rain_density'][1]:g}) or, for {cfg['real_rain_share']:.0%} of the rain "
        f"patches, one of {len(kept)} real RainTrainL pairs"
        + (f" ({', '.join(left)} left out: identical images)" if left else "")
        + ", whose clean image is first mapped to the rainy frame's colours (the pairs are not aligned rain "
          "layers; see the pair table below).", "",
        "**Test data**: CBSD68 with PromptIR / AdaIR's noise (the 8-bit image plus seeded Gaussian noise, "
        "clipped and truncated to 8 bit, as `constyle evaluate --benchmark three-task` makes it) and Rain100L, "
        "both centre-cropped to a multiple of 16; LIVE1 compressed whole by OpenCV at quality 10 / 20 / 30 / 40. "
        "Metrics: BasicSR `calculate_psnr` / `calculate_ssim` on the 8-bit images, RGB and Y (`test_y_channel`). "
        "The average is over the eight columns.", ""]

    rows = [("degraded input", report["rows"]["input"], None, "—")]
    if report["rows"].get("cbm3d"):
        rows.append(("CBM3D", report["rows"]["cbm3d"], None, "no training"))
    summary = report["summary"]["variants"]
    for v in variants:
        rows.append((row_label(v), None, v, f"{cfg['iters']} it x batch {cfg['batch']} x {cfg['patch']} px, width "
                                            f"{cfg['width']}; {times[v]['mean'] / 60:.0f} min / run, {times[v]['n']} "
                                            f"seed(s)"))

    def value(row, v, column, key, digits):
        if v is not None:
            return _cell(summary[v][column][key], digits) if column in summary[v] else "—"
        m = row["per_degradation"].get(column) if column != "average" else row["average"]
        if not m:
            return "—"
        partial = column != "average" and row.get("complete", {}).get(column) is False
        text = f"{m[key]:.{digits}f}"
        return text + (f" ({row['counts'][column]['done']}/{row['counts'][column]['of']})" if partial else "")

    for key, title, digits in (("psnr", "PSNR (dB), RGB", 2), ("psnr_y", "PSNR (dB), Y", 2),
                               ("ssim", "SSIM, RGB", 4), ("ssim_y", "SSIM, Y", 4)):
        lines += [f"### {title}", "", "| | " + " | ".join(LABELS[c] for c in COLUMN_KEYS) + " | average | training |",
                  "|" + "---|" * (len(COLUMN_KEYS) + 3)]
        for label, row, v, train in rows:
            cells = [value(row, v, c, key, digits) for c in COLUMN_KEYS + ("average",)]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {train} |")
        lines.append("")
    if report["rows"].get("cbm3d") and not all(report["rows"]["cbm3d"]["complete"].values()):
        lines += ["CBM3D columns marked (n/68) are partial: the background job has not finished them.", ""]
    not_run = [v for v in report["rows"]["possible"] if v not in variants]
    if not_run:
        lines += [f"Rows not in this report yet: {', '.join(row_label(v) for v in not_run)} (the training runs: "
                  f"docs/benchmarks.md).", ""]

    deltas = report["summary"]["paired_deltas"]
    if deltas:
        lines += ["### Paired differences (seed by seed: same initial NAFNet, same batches)", "",
                  "ΔPSNR in dB, RGB / Y, mean ± std over the seeds both rows have.", "",
                  "| | " + " | ".join(LABELS[c] for c in COLUMN_KEYS) + " | average |",
                  "|" + "---|" * (len(COLUMN_KEYS) + 2)]
        for name, d in deltas.items():
            cells = [f"{d[c]['psnr']['mean']:+.2f} ± {d[c]['psnr']['std']:.2f} / {d[c]['psnr_y']['mean']:+.2f}"
                     for c in COLUMN_KEYS + ("average",)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["### The papers' three-task numbers, for context", "",
              "**Another budget and another training set** (GPU training of full-size networks on BSD400 + WED, "
              "Rain100L's 200 training pairs and RESIDE OTS); RGB PSNR / SSIM as each paper prints them (their "
              "BSD68 is the colour CBSD68; their SOTS column and average are left out). " + PUBLISHED_NOTE, "",
              "| method | CBSD68 σ15 | CBSD68 σ25 | CBSD68 σ50 | Rain100L | training | source |",
              "|---|---|---|---|---|---|---|"]
    for pub in PUBLISHED:
        cells = [f"{pub[c][0]:.2f} / {pub[c][1]:.3f}" if c in pub else "—"
                 for c in ("cbsd68_15", "cbsd68_25", "cbsd68_50", "rain100l")]
        lines.append(f"| {pub['method']} | " + " | ".join(cells) + f" | {pub['budget']} | {pub['source']} |")
    lines.append("")

    lines += ["### Data: what was read (SHA-256 of every file in the JSON)", "",
              "| set | role | files | set digest (SHA-256 of name:hash lines) | duplicate files |",
              "|---|---|---|---|---|"]
    for name, m in data["manifests"].items():
        dup = "; ".join(" = ".join(d) for d in m["duplicates"]) or "none"
        lines.append(f"| {name} | {m['role']} | {m['files']} | `{m['digest'][:16]}…` | {dup} |")
    lines += ["", "Training never reads a test file: no training path (links resolved) and no training file's "
              "bytes equal a test file's (asserted). Test images that show a photograph of the training set "
              f"(48 x 32 grey thumbnails, any 90-degree rotation, mean difference < {SAME_PHOTO_MAD:g}):", ""]
    for key, found in data["photo_overlap"].items():
        te, tr = key.split(" | ")
        note = (" (the field's standard overlap: Rain100L's clean backgrounds are BSDS500 photos)"
                if (te, tr) in ALLOWED_OVERLAP else "")
        lines.append(f"- {te} in {tr}: {len(found['matches'])}{note}")
    for key, found in data.get("test_overlap", {}).items():
        te, other = key.split(" | ")
        lines.append(f"- (two test sets, no leak) {te} in {other}: {len(found['matches'])}")
    lines.append("")
    if data["rain_pairs"]:
        lines += ["Real rain pairs: the rainy image against its clean partner, before and after the colour map "
                  "(median absolute difference in grey levels, which the streaks barely move, and PSNR; a "
                  "low-contrast pair can lose a little PSNR to a slope fitted shallow):", "",
                  "| pair | kept | median diff before | after | PSNR before | after |", "|---|---|---|---|---|---|"]
        for r in data["rain_pairs"]:
            if r["kept"]:
                lines.append(f"| {r['pair']} | yes | {r['median_abs_diff']:.1f} | {r['median_abs_diff_matched']:.1f} | "
                             f"{r['psnr_rainy_vs_clean']:.2f} | {r['psnr_rainy_vs_matched_clean']:.2f} |")
            else:
                lines.append(f"| {r['pair']} | no ({r['reason']}) | | | | |")
        lines.append("")
    if report["runs"]:
        lines += ["### Runs", "", "| row | seed | trainable params | train time (s) | eval time (s) | final L1 | "
                  "data fingerprint |", "|---|---|---|---|---|---|---|"]
        for r in report["runs"]:
            lines.append(f"| {row_label(r['variant'])} | {r['seed']} | {r['trainable_params']:,} | "
                         f"{r['train_time_s']:.0f} | {r['eval_time_s']:.0f} | {r['final_loss']:.4f} | "
                         f"`{r['data_fingerprint']}` |")
        lines.append("")
    for line in report["notes"]:
        lines += [f"Note: {line}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    workdir_obj = tempfile.TemporaryDirectory(prefix="constyle_realdata_")
    workdir = Path(workdir_obj.name)
    out = Path(args.out) if args.out else (workdir / "out" if args.smoke else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        vars(args).update(smoke_data(out / "standins"))
    cache = Path(args.cbm3d_cache) if args.cbm3d_cache else (
        out / "realdata_cbm3d" if args.smoke else REPO / "benchmarks" / "results" / "realdata_cbm3d")
    header = report_header("realdata.py", argv, device)
    notes: List[str] = []

    def log(line: str) -> None:
        print(line, flush=True)

    # ---- files read, and the checks that training never reads a test file
    items, manifests, clean = test_sets(args)
    photos = sorted({p for folder in args.bsd400 for p in image_files(Path(folder), recursive=True)})
    pairs, pair_files, pair_records = rain_pairs(args.rain_train)
    if photos:
        manifests = {"BSD400": manifest("train", [Path(f) for f in args.bsd400], photos), **manifests}
        if not args.smoke and len(photos) != 400:
            notes.append(f"--bsd400 holds {len(photos)} images, not BSD400's 400")
    if pair_files:
        manifests = {"RainTrainL": manifest("train", [Path(args.rain_train)], pair_files), **manifests}
    overlap = {f"{te} | {tr}": photo_overlap(clean[te], files)
               for te in clean for tr, files in (("BSD400", photos), ("RainTrainL", pair_files[1::2])) if files}
    # informational: two test sets showing the same photographs is no leak
    test_overlap = {"Rain100L | CBSD68": photo_overlap(clean["Rain100L"], clean["CBSD68"])}
    try:
        check_no_leak(manifests, overlap)
    except LeakError as exc:
        raise SystemExit(f"[realdata] refused: {exc}")
    for key, found in overlap.items():
        log(f"[realdata] photographs shared, {key}: {len(found['matches'])}")
    digest = hashlib.sha256(json.dumps({k: m["digest"] for k, m in manifests.items()}, sort_keys=True).encode())
    data_digest = digest.hexdigest()
    for earlier in args.runs_from_reports:
        if earlier["data_digest"] != data_digest:
            raise SystemExit(f"--runs-from {earlier['file']}: made with other files (data digest differs)")
    log(f"[realdata] {len(items)} test images in {len(COLUMN_KEYS)} columns; training: {len(photos)} photos, "
        f"{len(pairs)} real rain pairs; device {device}, {torch.get_num_threads()} threads")

    # ---- the cheap rows
    t0 = time.perf_counter()
    input_row = measure(items, lambda lq: lq, "degraded input", not args.no_progress)
    input_row["time_s"] = time.perf_counter() - t0
    log("[realdata] degraded input: " + ", ".join(
        f"{LABELS[c]} {input_row['per_degradation'][c]['psnr']:.2f} / {input_row['per_degradation'][c]['psnr_y']:.2f} "
        f"dB (RGB / Y)" for c in COLUMN_KEYS))
    if args.cbm3d:
        why = run_cbm3d(items, cache, args.cbm3d_sigmas, log)
        if why:
            log(f"[realdata] {why}")
            notes.append(why)
    cbm3d = cbm3d_row(items, cache)

    # ---- the trained rows
    runs: List[Dict] = []
    if args.variants:
        prompter_path, prompter_random, prompter_note = resolve_prompter(args, workdir)
        prompters = {"pretrained": load_prompter(prompter_path), "untrained": random_prompter(UNTRAINED_PROMPTER_SEED)}
        prompters.update({name: load_prompter(path) for name, path in args.compare.items()})
        repeat = max(1, math.ceil(args.iters * args.batch / len(photos)) + 1)
        dataset = RealTrainDataset(photos, pairs, args.patch, len(photos) * repeat, args.real_rain_share,
                                   args.rain_strength, args.rain_density)
    else:  # the file the reused constyle runs were trained with (runs_from checked their sha256)
        from constyle_plugin.core.prompter import default_prompter_path

        prompter_path = Path(args.prompter).expanduser() if args.prompter else default_prompter_path()
        prompter_random, prompter_note = False, "the constyle runs' file (from --runs-from, checked by sha256)"
    # the sha256 of each prompter file, once: on the runs and in the report
    compared = {n: {"path": str(p), "sha256": sha256_file(p)} for n, p in args.compare.items()}
    prompter_sha256 = sha256_file(prompter_path) if prompter_path else None
    file_sha256 = {**({"constyle": prompter_sha256} if prompter_sha256 and not prompter_random else {}),
                   **{n: c["sha256"] for n, c in compared.items()}}
    for seed in args.seeds:
        fingerprints = {}
        for variant in args.variants:
            if variant in args.compare:
                net = build_model("constyle", args, seed, {"pretrained": prompters[variant]})
            else:
                net = build_model(variant, args, seed, prompters)
            batches = IsolatedBatches(dataset, args.batch, seed, workers=args.workers)
            run = train_one(net, batches, args, device, desc=f"{variant} seed {seed}")
            t0 = time.perf_counter()
            metrics = measure(items, network_restorer(net, device), f"{variant} seed {seed}", not args.no_progress)
            run.update(variant=variant, seed=seed, eval_time_s=time.perf_counter() - t0, metrics=metrics)
            if variant in file_sha256:
                run["prompter_sha256"] = file_sha256[variant]
            fingerprints[variant] = run["data_fingerprint"]
            runs.append(run)
            log(f"[realdata] {variant} seed {seed}: average {metrics['average']['psnr']:.2f} dB RGB, "
                f"{metrics['average']['psnr_y']:.2f} dB Y; train {run['train_time_s']:.0f} s, eval "
                f"{run['eval_time_s']:.0f} s")
            del net
        for r in args.reused:
            if r["seed"] == seed:
                fingerprints[f"{r['variant']} (from --runs-from)"] = r["data_fingerprint"]
        if len(set(fingerprints.values())) > 1:
            raise SystemExit(f"rows of seed {seed} saw different data: {fingerprints}")
    runs += args.reused
    variants = [v for v in list(VARIANTS) + sorted({r["variant"] for r in runs} - set(VARIANTS))
                if any(r["variant"] == v for r in runs)]

    header["load_average_end"] = load_average()
    report = {
        **{k: header[k] for k in ("command", "argv", "date")},
        "wall_time_s": time.perf_counter() - t_start,
        "host": {k: header[k] for k in ("platform", "device", "device_name", "cpu_count", "torch_threads",
                                        "load_average_start", "load_average_end")},
        "versions": versions(SCRIPT),
        "config": {**{k: v for k, v in vars(args).items()
                      if k not in ("no_progress", "reused", "runs_from_reports", "compare")},
                   "compare": {k: str(v) for k, v in args.compare.items()}, "variants_trained": list(args.variants)},
        "prompter": {"path": str(prompter_path) if prompter_path else None,
                     "sha256": prompter_sha256, "random": prompter_random,
                     "note": prompter_note, "untrained_seed": UNTRAINED_PROMPTER_SEED},
        "compared": compared,
        "columns": [{"key": k, "label": lab} for k, lab in COLUMNS],
        "metrics": {"psnr / ssim": "BasicSR calculate_psnr / calculate_ssim, RGB, 8-bit, no border crop",
                    "psnr_y / ssim_y": "the same with test_y_channel=True"},
        "test_set": {"crop": {"CBSD68, Rain100L": f"centre crop to a multiple of {TEST_CROP[0]}", "LIVE1": "whole"},
                     "noise": "PromptIR / AdaIR: the 8-bit image plus N(0, sigma) on the 0-255 scale, clipped to "
                              "[0, 255], truncated to 8 bit; seeded per image and sigma as constyle evaluate does",
                     "jpeg": "OpenCV imencode at the column's quality",
                     "n_images": {c: sum(1 for col, _ in items if col == c) for c in COLUMN_KEYS}},
        "data": {"manifests": manifests, "digest": data_digest, "photo_overlap": overlap, "test_overlap": test_overlap,
                 "rain_pairs": pair_records, "no_test_file_in_training": True},
        "rows": {"input": input_row, "cbm3d": cbm3d, "variants": variants,
                 "possible": list(VARIANTS) + list(args.compare)},
        "runs": runs,
        "summary": summarise(runs, variants, COLUMN_KEYS, METRICS) if runs else {"variants": {},
                                                                                  "paired_deltas": {}},
        "published": {"rows": list(PUBLISHED), "note": PUBLISHED_NOTE},
        "reused": [r for r in args.runs_from_reports if r["variants"]],
        "notes": notes,
    }
    (out / "realdata.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    (out / "realdata.md").write_text(markdown(report))
    log(f"[realdata] wrote {out / 'realdata.json'}, {out / 'realdata.md'} in {report['wall_time_s'] / 60:.1f} min")
    workdir_obj.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
