#!/usr/bin/env python
"""The field's three-task setting end to end, in miniature: NAFNet with and without the ConStyle v2 prompter.

What the papers do (PromptIR, AdaIR, ...), at a size one CPU core finishes in minutes:

1. A miniature three-task layout in PromptIR / AdaIR's folders and file names (``Train/{Denoise, Derain/{rainy,
   gt}, Dehaze/{synthetic/part1, original}}`` and ``test/{denoise/bsd68, derain/Rain100L/{input,target},
   dehaze/{input,target}}``), built from the offline sample photos (:mod:`constyle_plugin.data.samples`): several
   seeded crops per photo, rain and haze made by the plugin's own degradations
   (``constyle_plugin.data.degradations.ALL_IN_ONE['rain']`` / ``['haze']``), noise added on the fly by the
   setting's own code. The test photos (camera, chelsea, coffee, text: the photos ``benchmarks/allinone.py``
   holds out, which the packaged prompter's pre-training never read) are disjoint from the training photos.
2. For each variant and seed, the real commands in fresh processes: ``basicsr train -opt
   options/allinone/nafnet_{constyle,origin}_three_task.yml --force_yml ...`` with overrides that make the run
   small (CPU, NAFNet width 16 with ``enc_blk_nums [1,1,1,2]``, batch 4, 64 px patches, ``--iters``
   iterations, the papers' schedule shape scaled to it: linear warm-up for 12.5 % of the run, then a cosine
   that reaches 0 at 1.25x the run; the mixture's per-task share as in the papers), then ``constyle evaluate
   --checkpoint .../net_g_latest.pth --benchmark three-task --root <test root>``.
3. A report: each variant's row of the papers' table (PSNR / SSIM per column and the average, as
   ``constyle evaluate`` writes it), the degraded inputs' row, the paired difference constyle - origin per
   column and on average; the exact commands, versions, machine and its load.

Outputs in ``--out``: ``threetask_miniature.json`` and ``threetask_miniature.md``. The layout, the experiments
(checkpoints, training logs) and the evaluation folders stay in ``--work``.

``--smoke`` runs the whole pipeline in seconds (2 iterations, tiny sizes); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import device_name, load_average  # noqa: E402  (benchmarks/_host.py)
from _runs import RunsFromError, runs_from  # noqa: E402  (benchmarks/_runs.py)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "benchmarks/threetask_miniature.py"
OPTIONS = {"constyle": REPO / "options" / "allinone" / "nafnet_constyle_three_task.yml",
           "origin": REPO / "options" / "allinone" / "nafnet_origin_three_task.yml"}
EXPERIMENT_NAMES = {"constyle": "NAFNet_ConStyle_v2_three_task", "origin": "NAFNet_origin_three_task"}
LABELS = {"constyle": "NAFNet + ConStyle v2", "origin": "NAFNet (origin)"}
VARIANTS = ("origin", "constyle")
# The photos benchmarks/allinone.py tests on; the packaged prompter's pre-training never read them
# (constyle_plugin/weights/constyle_v2_prompter.json, "data").
HOLDOUT = ("camera", "chelsea", "coffee", "text")
# One epoch of the papers' three-task mixture (PromptIR's list files x repeats): each task's share.
PAPER_SAMPLES = {"denoise_15": 5144 * 3, "denoise_25": 5144 * 3, "denoise_50": 5144 * 3, "derain": 200 * 120,
                 "dehaze": 72135 * 1}
VAL_PHASES = ("val_dehaze", "val_derain", "val_denoise_15", "val_denoise_25", "val_denoise_50")
LAYOUT_SEED = 2024
PHOTO_MAX_SIDE = 640  # photos are first shrunk so their longer side is at most this (INTER_AREA)
# what a report given to --runs-from must share with this run
REUSE_MUST_MATCH = ("iters", "width", "enc_blk_nums", "batch", "patch", "lr", "train_crops", "test_crops",
                    "hazy_per_clear", "smoke", "device")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The three-task all-in-one setting in miniature: basicsr train with the ready options "
                    "(NAFNet with and without the ConStyle v2 prompter), then constyle evaluate --benchmark "
                    "three-task, on a layout built from the offline sample photos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iters", type=int, default=1500, help="training iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[10],
                   help="training seeds (BasicSR's manual_seed, set with --force_yml manual_seed=N; the ready "
                        "options' is 10)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS,
                   help="the variants to train: constyle (nafnet_constyle_three_task.yml), origin "
                        "(nafnet_origin_three_task.yml)")
    p.add_argument("--runs-from", nargs="+", default=[], metavar="REPORT_JSON",
                   help="take the runs of the variants not in --variants from these earlier reports (same settings "
                        "and the same layout, checked)")
    p.add_argument("--width", type=int, default=16, help="NAFNet width")
    p.add_argument("--enc-blk-nums", type=int, nargs=4, default=[1, 1, 1, 2], help="NAFNet enc_blk_nums")
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--patch", type=int, default=64, help="training patch side (gt_size)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW peak learning rate (the papers' 2e-4 is for 534 120 iterations of batch 32)")
    p.add_argument("--train-crops", type=int, default=6, help="crops per training photo and task")
    p.add_argument("--test-crops", type=int, default=3, help="crops per test photo and test set")
    p.add_argument("--hazy-per-clear", type=int, default=2,
                   help="hazy training images per clear crop (RESIDE OTS has several per clear image)")
    p.add_argument("--threads", type=int, default=1, help="OMP / MKL threads of each training and evaluation process")
    p.add_argument("--parallel", type=int, default=1, help="runs (variant x seed) at the same time")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: num_gpu=0; cuda: num_gpu=1 (training) and --device cuda (evaluation)")
    p.add_argument("--work", default=None,
                   help="folder for the layout, the experiments and the evaluations (default: a new temporary "
                        "folder, kept)")
    p.add_argument("--out", default=None,
                   help="folder of the report (default: benchmarks/results; with --smoke: --work)")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run for CI: 2 iterations, width 8, tiny layout; the numbers mean nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.width, args.enc_blk_nums, args.batch, args.patch = 2, 8, [1, 1, 1, 1], 2, 32
        args.train_crops, args.test_crops, args.hazy_per_clear = 1, 1, 1
    for name in ("iters", "width", "batch", "patch", "train_crops", "test_crops", "hazy_per_clear", "threads",
                 "parallel"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if min(args.enc_blk_nums) < 0:
        p.error(f"--enc-blk-nums must be >= 0, got {args.enc_blk_nums}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has duplicates: {args.seeds}")
    args.prompter = packaged_prompter()  # what the constyle runs load, recorded on them and in the report
    try:
        args.reused, args.runs_from_reports = runs_from(
            args.runs_from, vars(args), REUSE_MUST_MATCH, args.variants, args.seeds,
            "a threetask_miniature.json report",
            lambda earlier: {"layout_sha256": earlier.get("layout", {}).get("sha256")},
            prompters={"constyle": args.prompter["sha256"]})
    except RunsFromError as exc:
        p.error(str(exc))
    args.variants = [v for v in VARIANTS if v in args.variants]
    return args


# ---------------------------------------------------------------------------------------------
# the miniature layout
# ---------------------------------------------------------------------------------------------

def _write(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """``H x W x 3`` float RGB in [0, 1] -> an 8-bit file (JPEG at ``quality`` for .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), quality] if path.suffix.lower() == ".jpg" else []
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"cannot write {path}")


def _photos(names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The named sample photos as float32 RGB in [0, 1], the longer side shrunk to :data:`PHOTO_MAX_SIDE`,
    8-bit exact."""
    from constyle_plugin.data.samples import sample_photos

    out = {}
    for name, img in sample_photos(names):
        h, w = img.shape[:2]
        factor = max(h, w) / PHOTO_MAX_SIDE
        if factor > 1:
            img = cv2.resize(img, (round(w / factor), round(h / factor)), interpolation=cv2.INTER_AREA)
        out[name] = img.astype(np.float32) / 255.0
    missing = sorted(set(names) - set(out))
    if missing:
        raise SystemExit(f"sample photos {missing} are not available here (scikit-image / matplotlib data)")
    return out


def _crops(photo: np.ndarray, count: int, sides: Tuple[int, int], rng: np.random.Generator
           ) -> List[Tuple[int, int, np.ndarray]]:
    """``count`` crops of ``photo`` with height and width drawn from ``sides`` (clipped to the photo)."""
    h, w = photo.shape[:2]
    out = []
    for _ in range(count):
        ch = min(h, int(rng.integers(sides[0], sides[1] + 1)))
        cw = min(w, int(rng.integers(sides[0], sides[1] + 1)))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append((top, left, np.ascontiguousarray(photo[top:top + ch, left:left + cw])))
    return out


def build_layout(root, train_photos: Sequence[str], test_photos: Sequence[str], train_crops: int = 6,
                 test_crops: int = 3, hazy_per_clear: int = 2, train_sides: Tuple[int, int] = (160, 256),
                 test_sides: Tuple[int, int] = (176, 256), seed: int = LAYOUT_SEED) -> Dict:
    """Write a miniature three-task layout under ``root`` in PromptIR / AdaIR's folders and file names.

    ``root/Train``: ``Denoise/NNNNN.png`` (clean crops), ``Derain/rainy/rain-N.png`` <-> ``Derain/gt/norain-N.png``,
    ``Dehaze/original/NNNN.jpg`` <-> ``Dehaze/synthetic/part1/NNNN_A_B.jpg`` (``hazy_per_clear`` each, A the
    airlight and B the scattering coefficient used); ``root/test``: ``denoise/bsd68/NNNN.png``,
    ``derain/Rain100L/{input,target}/rain-NNN.png``, ``dehaze/input/NNNN_A_B.jpg`` <-> ``dehaze/target/NNNN.png``.
    Training files come from ``train_photos`` only (``train_crops`` seeded crops per photo and task, sides in
    ``train_sides``), test files from ``test_photos`` only (``test_crops`` per photo and test set, sides in
    ``test_sides``); rain and haze are ``constyle_plugin.data.degradations.ALL_IN_ONE['rain']`` / ``['haze']``.
    The same arguments write the same files.

    Returns a manifest: ``{"train_root", "test_root", "counts", "sources": {relative path: {"photo", "top",
    "left", "height", "width"}}, "train_photos", "test_photos"}`` (paths relative to ``root``).
    """
    from constyle_plugin.data.degradations import ALL_IN_ONE

    overlap = sorted(set(train_photos) & set(test_photos))
    if overlap:
        raise ValueError(f"photos {overlap} are both training and test photos")
    root = Path(root)
    train, test = root / "Train", root / "test"
    photos = _photos(list(train_photos) + list(test_photos))
    sources: Dict[str, Dict] = {}
    counts = {"denoise": 0, "derain": 0, "dehaze_clear": 0, "dehaze_hazy": 0, "test_denoise": 0,
              "test_derain": 0, "test_dehaze": 0}
    rain, haze = ALL_IN_ONE["rain"], ALL_IN_ONE["haze"]

    def record(path: Path, photo: str, top: int, left: int, img: np.ndarray) -> None:
        sources[path.relative_to(root).as_posix()] = {"photo": photo, "top": top, "left": left,
                                                      "height": int(img.shape[0]), "width": int(img.shape[1])}

    def haze_params(rng: np.random.Generator) -> Tuple[float, float]:
        # the ranges haze() draws from, drawn here so the file name can carry them as RESIDE's names do
        return round(float(rng.uniform(0.7, 1.0)), 2), round(float(rng.uniform(0.8, 2.5)), 2)

    def crops_of(group: int, photo: str, count: int, sides: Tuple[int, int]):
        rng = np.random.default_rng([seed, group, *photo.encode()])
        return [(top, left, img, rng) for top, left, img in _crops(photos[photo], count, sides, rng)]

    # training: every task its own crops
    for photo in train_photos:
        for top, left, img, _ in crops_of(0, photo, train_crops, train_sides):
            counts["denoise"] += 1
            path = train / "Denoise" / f"{counts['denoise']:05d}.png"
            _write(path, img)
            record(path, photo, top, left, img)
        for top, left, img, rng in crops_of(1, photo, train_crops, train_sides):
            counts["derain"] += 1
            gt, lq = train / "Derain" / "gt" / f"norain-{counts['derain']}.png", \
                train / "Derain" / "rainy" / f"rain-{counts['derain']}.png"
            _write(gt, img)
            _write(lq, rain(img, rng))
            record(gt, photo, top, left, img)
            record(lq, photo, top, left, img)
        for top, left, img, rng in crops_of(2, photo, train_crops, train_sides):
            counts["dehaze_clear"] += 1
            stem = f"{counts['dehaze_clear']:04d}"
            gt = train / "Dehaze" / "original" / f"{stem}.jpg"
            _write(gt, img)
            record(gt, photo, top, left, img)
            for _ in range(hazy_per_clear):
                a, beta = haze_params(rng)
                lq = train / "Dehaze" / "synthetic" / "part1" / f"{stem}_{a}_{beta}.jpg"
                if lq.exists():  # the same rounded parameters twice: keep one file
                    continue
                _write(lq, haze(img, rng, beta=beta, airlight=a))
                record(lq, photo, top, left, img)
                counts["dehaze_hazy"] += 1
    # test: each test set its own crops of the held-out photos
    for photo in test_photos:
        for top, left, img, _ in crops_of(10, photo, test_crops, test_sides):
            counts["test_denoise"] += 1
            path = test / "denoise" / "bsd68" / f"{counts['test_denoise']:04d}.png"
            _write(path, img)
            record(path, photo, top, left, img)
        for top, left, img, rng in crops_of(11, photo, test_crops, test_sides):
            counts["test_derain"] += 1
            name = f"rain-{counts['test_derain']:03d}.png"
            for sub, pic in (("target", img), ("input", rain(img, rng))):
                path = test / "derain" / "Rain100L" / sub / name
                _write(path, pic)
                record(path, photo, top, left, img)
        for top, left, img, rng in crops_of(12, photo, test_crops, test_sides):
            counts["test_dehaze"] += 1
            stem = f"{counts['test_dehaze']:04d}"
            a, beta = haze_params(rng)
            gt, lq = test / "dehaze" / "target" / f"{stem}.png", test / "dehaze" / "input" / f"{stem}_{a}_{beta}.jpg"
            _write(gt, img)
            _write(lq, haze(img, rng, beta=beta, airlight=a))
            record(gt, photo, top, left, img)
            record(lq, photo, top, left, img)
    return {"train_root": "Train", "test_root": "test", "counts": counts, "sources": sources,
            "train_photos": list(train_photos), "test_photos": list(test_photos)}


def layout_sha256(root: Path) -> str:
    """A fingerprint of every file under ``root/Train`` and ``root/test`` (relative names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for sub in ("Train", "test") for p in (root / sub).rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the recipe, scaled
# ---------------------------------------------------------------------------------------------

def schedule(iters: int) -> Dict:
    """The papers' shape at ``iters`` iterations: warm-up 12.5 % of the run (15 of 120 epochs), then a cosine
    that reaches 0 at 1.25x the run (epoch 150 of 120), in the ready options' BasicSR spelling: periods
    ``[warmup - 2, end - warmup + 1]`` (BasicSR steps the scheduler one behind the iteration under the warm-up).
    Runs too short for a warm-up get none (a single cosine period)."""
    end = int(round(1.25 * iters))
    warmup = int(round(0.125 * iters))
    if warmup >= 3:
        return {"warmup_iter": warmup, "periods": [warmup - 2, end - warmup + 1], "restart_weights": [1, 1],
                "cosine_end": end}
    return {"warmup_iter": None, "periods": [end], "restart_weights": [1], "cosine_end": end}


def mixture(counts: Dict[str, int], max_scale: int = 4) -> Dict[str, int]:
    """Per-task repeats that give the miniature epoch the papers' shares (PromptIR's three-task epoch: each
    sigma 10.8 %, derain 16.9 %, dehaze 50.6 %): the least repeated task ``1 .. max_scale`` times, the others in
    proportion, rounded; the scale whose rounded shares come closest (the smallest on a tie)."""
    sizes = {"denoise_15": counts["denoise"], "denoise_25": counts["denoise"], "denoise_50": counts["denoise"],
             "derain": counts["derain"], "dehaze": counts["dehaze_hazy"]}
    total = sum(PAPER_SAMPLES.values())
    share = {t: PAPER_SAMPLES[t] / total for t in PAPER_SAMPLES}
    epoch = max(sizes[t] / share[t] for t in sizes)  # the epoch in which the least repeated task appears once
    best, best_error = None, math.inf
    for scale in range(1, max_scale + 1):
        repeat = {t: max(1, int(round(scale * epoch * share[t] / sizes[t]))) for t in sizes}
        samples = {t: sizes[t] * repeat[t] for t in sizes}
        error = max(abs(samples[t] / sum(samples.values()) - share[t]) for t in sizes)
        if error < best_error - 1e-9:
            best, best_error = repeat, error
    return best


def decimal(x: float) -> str:
    """``x`` in positional notation (``1e-3`` -> ``0.001``), which BasicSR's ``--force_yml`` reads as a number."""
    return np.format_float_positional(x, trim="-")


def force_options(variant: str, seed: int, args: argparse.Namespace, train_root: Path, test_root: Path,
                  repeat: Dict[str, int]) -> List[str]:
    """The ``--force_yml`` entries of one run (``manual_seed`` among them). BasicSR reads only plain digits (with
    at most one '.') as numbers, so floats are written in decimal."""
    sched = schedule(args.iters)
    prefix = "network_g:backbone:" if variant == "constyle" else "network_g:"
    force = [f"manual_seed={seed}", f"num_gpu={1 if args.device == 'cuda' else 0}",
             f"datasets:train:dataroot={train_root}", "datasets:train:num_worker_per_gpu=0",
             f"datasets:train:batch_size_per_gpu={args.batch}", f"datasets:train:gt_size={args.patch}",
             *(f"datasets:train:repeat:{t}={r}" for t, r in repeat.items()),
             f"{prefix}width={args.width}", f"{prefix}enc_blk_nums=[{','.join(map(str, args.enc_blk_nums))}]",
             f"train:total_iter={args.iters}", f"train:optim_g:lr={decimal(args.lr)}",
             f"train:scheduler:periods=[{','.join(map(str, sched['periods']))}]",
             f"train:scheduler:restart_weights=[{','.join(map(str, sched['restart_weights']))}]",
             f"train:warmup_iter={sched['warmup_iter'] or 0}",
             # no periodic validation (BasicSR still validates once at the end: 2 images per test set)
             f"val:val_freq={10 * args.iters}", f"logger:print_freq={max(1, min(100, args.iters // 10))}",
             f"logger:save_checkpoint_freq={args.iters}"]
    for phase in VAL_PHASES:
        force += [f"datasets:{phase}:dataroot={test_root}", f"datasets:{phase}:max_images=2"]
    return force


# ---------------------------------------------------------------------------------------------
# running the commands
# ---------------------------------------------------------------------------------------------

def console_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (else the one on PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"the `{name}` command is not installed here (pip install -e \".[basicsr]\")")
    return found


class LoadSampler:
    """The 1-minute load average every ``every`` seconds while a run goes on (min / mean / max)."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            avg = load_average()
            if avg:
                self.samples.append(avg[0])
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> Dict:
        if not self.samples:
            return {}
        return {"min": min(self.samples), "mean": round(float(np.mean(self.samples)), 2), "max": max(self.samples),
                "n": len(self.samples)}


def _run(cmd: List[str], cwd: Path, env: Dict[str, str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; returns the wall time; stops the benchmark on failure."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{shlex.join(cmd[:3])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")
    return time.perf_counter() - start


def _shown(cmd: List[str]) -> str:
    """The command as a user types it (the console script by name, the paths as given)."""
    return shlex.join([Path(cmd[0]).name, *cmd[1:]])


def _final_loss(log_text: str) -> Optional[float]:
    found = re.findall(r"l_pix: ([0-9.eE+-]+)", log_text)
    return float(found[-1]) if found else None


def packaged_prompter() -> Dict[str, Optional[str]]:
    """Path and sha256 of the prompter the constyle options load (``pretrained: ~``: the packaged one of the
    installed constyle_plugin, which the ``basicsr train`` runs import too)."""
    from constyle_plugin.core.pretrained import file_sha256
    from constyle_plugin.core.prompter import default_prompter_path

    path = default_prompter_path()
    return {"path": str(path) if path else None, "sha256": file_sha256(path) if path else None}


def run_one(variant: str, seed: int, args: argparse.Namespace, work: Path, train_root: Path, test_root: Path,
            repeat: Dict[str, int]) -> Dict:
    """``basicsr train`` then ``constyle evaluate`` for one variant and seed, in ``work/<variant>_seed<seed>``."""
    run_dir = work / f"{variant}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    # run in run_dir, where BasicSR writes experiments/<name>/
    train_cmd = [console_script("basicsr"), "train", "-opt", str(OPTIONS[variant]),
                 "--force_yml", *force_options(variant, seed, args, train_root, test_root, repeat)]
    load_start = load_average()
    with LoadSampler() as sampler:
        train_s = _run(train_cmd, run_dir, env, run_dir / "train.log")
        checkpoint = run_dir / "experiments" / EXPERIMENT_NAMES[variant] / "models" / "net_g_latest.pth"
        if not checkpoint.is_file():
            raise RuntimeError(f"basicsr train wrote no {checkpoint}")
        eval_dir = run_dir / "eval"
        eval_cmd = [console_script("constyle"), "evaluate", "--checkpoint", str(checkpoint), "--benchmark",
                    "three-task", "--root", str(test_root), "--output", str(eval_dir), "--device", args.device,
                    "--samples", "1"]
        eval_s = _run(eval_cmd, run_dir, env, run_dir / "evaluate.log")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    table = [line for line in (eval_dir / "metrics.md").read_text().splitlines() if line.startswith("|")]
    logs = sorted((checkpoint.parent.parent).glob("train_*.log"))
    loss = _final_loss(logs[-1].read_text()) if logs else None
    return {"variant": variant, "seed": seed, "options": str(OPTIONS[variant]),
            **({"prompter_sha256": args.prompter["sha256"]} if variant == "constyle" else {}),
            "train_command": _shown(train_cmd), "evaluate_command": _shown(eval_cmd),
            "cwd": str(run_dir), "checkpoint": str(checkpoint), "train_s": round(train_s, 1),
            "evaluate_s": round(eval_s, 1), "final_l_pix": loss, "load_average_start": load_start,
            "load_average_end": load_average(), "load_1min_during": sampler.summary(),
            "metrics": {"tasks": {k: {"column": t["column"], "psnr": t["psnr"], "ssim": t["ssim"],
                                      "n_images": t["n_images"]} for k, t in metrics["tasks"].items()},
                        "average": metrics["average"], "channel": metrics["channel"]},
            "metrics_md": table}


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------

def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "basicsr", "constyle-plugin", "numpy", "opencv-python", "scikit-image", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "constyle_plugin", "options/allinone", SCRIPT],
                               cwd=REPO, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def input_row(test_root: Path) -> Dict:
    """The degraded inputs measured as ``constyle evaluate`` measures a network's outputs."""
    from constyle_plugin.compat import ensure_basicsr_importable
    from constyle_plugin.tools.evaluate import benchmark_tasks, evaluate_tasks

    ensure_basicsr_importable()
    tasks, columns, _ = benchmark_tasks("three-task", test_root)
    metrics = evaluate_tasks(lambda x: x, tasks, columns=columns, show_progress=False)
    return {"tasks": {k: {"column": t["column"], "psnr": t["psnr"], "ssim": t["ssim"], "n_images": t["n_images"]}
                      for k, t in metrics["tasks"].items()}, "average": metrics["average"]}


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size)}


def summarise(runs: Sequence[Dict], seeds: Sequence[int]) -> Dict:
    """Per variant: mean (± std over seeds) of each column and the average; paired constyle - origin."""
    by = {(r["variant"], r["seed"]): r for r in runs}
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    tasks = list(runs[0]["metrics"]["tasks"])

    def value(run: Dict, task: str, metric: str) -> float:
        return run["metrics"]["average"][metric] if task == "average" else run["metrics"]["tasks"][task][metric]

    summary = {"variants": {}, "paired": None, "tasks": tasks}
    for v in variants:
        summary["variants"][v] = {t: {m: mean_std([value(by[(v, s)], t, m) for s in seeds]) for m in ("psnr", "ssim")}
                                  for t in tasks + ["average"]}
    if {"constyle", "origin"} <= set(variants):
        summary["paired"] = {t: {m: mean_std([value(by[("constyle", s)], t, m) - value(by[("origin", s)], t, m)
                                              for s in seeds]) for m in ("psnr", "ssim")}
                             for t in tasks + ["average"]}
    return summary


def _pm(stat: Dict, digits: int, sign: bool = False) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(stat["mean"])
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def markdown(report: Dict) -> str:
    cfg, summary, layout = report["config"], report["summary"], report["layout"]
    tasks = summary["tasks"]
    columns = [report["input"]["tasks"][t]["column"] for t in tasks]
    host = report["host"]
    lines = ["# The three-task setting in miniature (NAFNet with and without the ConStyle v2 prompter)", ""]
    if cfg["smoke"]:
        lines += ["> **SMOKE RUN**: 2 iterations on a tiny layout; the numbers mean nothing.", ""]
    for src in report["reused"]:
        lines += [f"> Runs of {', '.join(src['variants'])} come from `{src['file']}` (made {src['date']} by "
                  f"`{src['command']}`), with the same settings and layout (checked).", ""]
    lines += [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; wall time {report['wall_time_s'] / 60:.1f} min.  ",
        f"Software: torch {report['versions']['torch']}, basicsr {report['versions']['basicsr']}, constyle-plugin "
        f"{report['versions']['constyle-plugin']}, Python {report['versions']['python']}, git "
        f"`{report['versions'].get('git_commit', '?')}`.  ",
        f"Machine: {host['cpu']} ({host['cpu_count']} cores, shared with other jobs), "
        f"{host['gpu'] if 'gpu' in host else cfg['device']}; each process "
        f"{cfg['threads']} thread(s) (OMP_NUM_THREADS), {cfg['parallel']} run(s) at a time; load average at start "
        f"{host['load_average_start']}, at end {host['load_average_end']}.",
        "",
        "## Settings",
        "",
        f"- Data: a miniature three-task layout in PromptIR / AdaIR's folders and file names, built by "
        f"`build_layout` from the offline sample photos (longer side shrunk to {PHOTO_MAX_SIDE} px). Training "
        f"photos ({len(layout['train_photos'])}): {', '.join(layout['train_photos'])}; test photos "
        f"({len(layout['test_photos'])}, disjoint from them and never read by the packaged prompter's pre-training): "
        f"{', '.join(layout['test_photos'])}.",
        f"- Training set: {layout['counts']['denoise']} clean crops (Denoise/), {layout['counts']['derain']} rain "
        f"pairs (Derain/), {layout['counts']['dehaze_clear']} clear crops with {layout['counts']['dehaze_hazy']} "
        f"hazy images (Dehaze/); {cfg['train_crops']} crops of {layout['train_sides'][0]}-{layout['train_sides'][1]} "
        f"px per photo and task. Per-epoch repeats {layout['repeat']} (the papers' shares of the epoch: "
        + ", ".join(f"{t} {100 * s:.1f} %" for t, s in layout["shares"].items()) + ").",
        f"- Test set: {layout['counts']['test_dehaze']} hazy (SOTS column), {layout['counts']['test_derain']} rainy "
        f"(Rain100L column), {layout['counts']['test_denoise']} clean images noised at sigma 15 / 25 / 50 (BSD68 "
        f"columns); {cfg['test_crops']} crops of {layout['test_sides'][0]}-{layout['test_sides'][1]} px per photo "
        f"and test set, centre-cropped to a multiple of 16 by the setting. Layout sha256 `{layout['sha256'][:16]}…`.",
        f"- Rain and haze: `constyle_plugin.data.degradations.ALL_IN_ONE['rain']` (its default random streaks) and "
        f"`['haze']` (airlight A ~ U(0.7, 1.0) and beta ~ U(0.8, 2.5) drawn by the builder and written into the "
        f"file names as RESIDE does); {cfg['hazy_per_clear']} hazy image(s) per clear training crop.",
        f"- Training: `basicsr train -opt options/allinone/nafnet_{{constyle,origin}}_three_task.yml` with "
        f"`--force_yml` overrides: CPU (`num_gpu={1 if cfg['device'] == 'cuda' else 0}`), NAFNet width "
        f"{cfg['width']}, enc_blk_nums {cfg['enc_blk_nums']} (dec [1, 1, 1, 1], 1 middle block), batch "
        f"{cfg['batch']}, {cfg['patch']} px patches, {cfg['iters']} iterations, AdamW lr {cfg['lr']:g} (the options'"
        f" weight decay 0.01 and betas), L1, no EMA; "
        + (f"warm-up {report['schedule']['warmup_iter']} iterations (12.5 %), then " if report['schedule']['warmup_iter']
           else "no warm-up (too short a run), ")
        + f"cosine periods {report['schedule']['periods']} reaching 0 at iteration "
        f"{report['schedule']['cosine_end']} (1.25x the run); no periodic validation (BasicSR's final one: 2 images "
        f"per test set); seeds {cfg['seeds']} (BasicSR's `manual_seed`, set with `--force_yml manual_seed=N`). "
        f"Everything else is the options file's. The constyle variant uses "
        f"the packaged prompter (frozen)"
        + (f", sha256 `{report['prompter']['sha256'][:16]}…`." if report.get("prompter", {}).get("sha256") else "."),
        f"- Evaluation: `constyle evaluate --checkpoint <experiment>/models/net_g_latest.pth --benchmark three-task "
        f"--root <test root>` (BasicSR's PSNR / SSIM on 8-bit RGB, no border crop).",
        "",
        "## The papers' table (PSNR dB / SSIM, RGB)",
        "",
    ]
    header = ["Method", *columns, "Average"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" :---: "] * (len(header) - 1)) + "|"]
    inp = report["input"]
    lines.append("| degraded input | " + " | ".join(f"{inp['tasks'][t]['psnr']:.2f} / {inp['tasks'][t]['ssim']:.4f}"
                                                   for t in tasks)
                 + f" | {inp['average']['psnr']:.2f} / {inp['average']['ssim']:.4f} |")
    seeds = cfg["seeds"]
    for v, stats in summary["variants"].items():
        if len(seeds) == 1:  # the row as constyle evaluate's metrics.md wrote it, with the variant's name
            run = next(r for r in report["runs"] if r["variant"] == v)
            row = run["metrics_md"][-1].split("|")
            row[1] = f" {LABELS[v]} "
            lines.append("|".join(row))
        else:
            lines.append(f"| {LABELS[v]} (mean ± std, {len(seeds)} seeds) | "
                         + " | ".join(f"{_pm(stats[t]['psnr'], 2)} / {_pm(stats[t]['ssim'], 4)}"
                                      for t in tasks + ["average"]) + " |")
    if summary["paired"]:
        paired = summary["paired"]
        lines.append("| **constyle - origin** (paired) | "
                     + " | ".join(f"{_pm(paired[t]['psnr'], 2, True)} / {_pm(paired[t]['ssim'], 4, True)}"
                                  for t in tasks + ["average"]) + " |")
    lines += ["", "Runs:", "", "| variant | seed | training | evaluation | final L1 (logged) | load average "
              "(1 min) during the run: min / mean / max |", "|---|---|---|---|---|---|"]
    for r in sorted(report["runs"], key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])):
        load = r.get("load_1min_during") or {}
        loss = f"{r['final_l_pix']:.4f}" if r.get("final_l_pix") is not None else "?"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['train_s'] / 60:.1f} min | {r['evaluate_s']:.0f} s | {loss} | "
                     + (f"{load['min']} / {load['mean']} / {load['max']}" if load else "?") + " |")
    lines += ["", "Commands of each run (in its own folder; `--force_yml` in full in the JSON):", ""]
    for r in report["runs"]:
        lines += [f"- {r['variant']}, seed {r['seed']}: `{r['evaluate_command']}`"]
    lines += [
        "",
        "## What these numbers are, and are not",
        "",
        "- **Miniature data.** A few dozen crops of 16 photos for training and a dozen crops of 4 other photos per "
        "test set, not BSD400 + WED, Rain100L and RESIDE OTS; the columns keep the papers' names only to say which "
        "task each one is.",
        "- **Synthetic rain and haze made by the plugin's own degradations**, the same family the packaged prompter "
        "was pre-trained to recognise (on other photos). Real Rain100L streaks and SOTS haze (from real depth) look "
        "different; this says nothing about how the prompter does on them.",
        f"- **CPU budget.** {cfg['iters']} iterations of batch {cfg['batch']} at {cfg['patch']} px with a width "
        f"{cfg['width']} NAFNet, against the papers' 534 120 iterations of batch 32 at 128 px with width-32-class "
        f"networks; a higher learning rate ({cfg['lr']:g} instead of 2e-4) so that so short a run learns something. "
        "The networks are far from converged.",
        "- **Not comparable with the papers' numbers** (PromptIR 32.06 dB average, AdaIR 32.69, ...): other data, "
        "other sizes, another budget. What the table compares is the two variants with each other, trained the "
        "same way on the same files with the same seed.",
        f"- {len(seeds)} seed(s): "
        + ("the paired difference has no spread to judge it by; a difference of a few tenths of a dB may be noise."
           if len(seeds) == 1 else "the ± is the standard deviation over the seeds."),
        "- The same seed gives both variants the same crops and flips, but not the same noise draws on the fly (the "
        "prompter's construction draws from torch's generator first); the batches are not checked to be identical.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="threetask_miniature_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (work if args.smoke else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()

    from constyle_plugin.data.samples import SAMPLE_NAMES

    train_photos = [n for n in SAMPLE_NAMES if n not in HOLDOUT]
    sides = {"train_sides": (48, 72), "test_sides": (48, 72)} if args.smoke else {}
    layout_root = work / "layout"
    if layout_root.exists():
        shutil.rmtree(layout_root)
    print(f"building the layout in {layout_root} ...", flush=True)
    manifest = build_layout(layout_root, train_photos, HOLDOUT, train_crops=args.train_crops,
                            test_crops=args.test_crops, hazy_per_clear=args.hazy_per_clear, **sides)
    train_root, test_root = layout_root / "Train", layout_root / "test"
    from constyle_plugin.data.benchmark_layouts import benchmark_test_sets, benchmark_train_pairs

    pairs = benchmark_train_pairs("three-task", train_root)  # checked before anything trains
    benchmark_test_sets("three-task", test_root)
    read_photos = {manifest["sources"][Path(p).relative_to(layout_root).as_posix()]["photo"]
                   for task in pairs.values() for pair in task for p in (pair.gt, pair.lq) if p is not None}
    if read_photos & set(HOLDOUT):
        raise SystemExit(f"the training layout reads test photos {sorted(read_photos & set(HOLDOUT))}")
    repeat = mixture(manifest["counts"])
    sha = layout_sha256(layout_root)
    for src in args.runs_from_reports:
        if src["layout_sha256"] != sha:
            raise SystemExit(f"--runs-from {src['file']}: made on another layout (sha256 {src['layout_sha256']}, "
                             f"here {sha})")
    epoch = {t: len(pairs[t]) * repeat[t] for t in repeat}
    print(f"layout: {manifest['counts']}; repeats {repeat}; one epoch = {sum(epoch.values())} samples", flush=True)

    jobs = [(v, s) for v in args.variants for s in args.seeds]
    runs: List[Dict] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(run_one, v, s, args, work, train_root, test_root, repeat): (v, s) for v, s in jobs}
        for future in concurrent.futures.as_completed(futures):
            v, s = futures[future]
            try:
                run = future.result()
            except RuntimeError as exc:
                raise SystemExit(f"run {v} seed {s}: {exc}")
            print(f"done: {v} seed {s}: average {run['metrics']['average']['psnr']:.2f} dB / "
                  f"{run['metrics']['average']['ssim']:.4f} (training {run['train_s'] / 60:.1f} min)", flush=True)
            runs.append(run)
    runs += args.reused
    report = {
        "command": shlex.join(["python", SCRIPT, *argv]), "argv": argv, "date": date,
        "wall_time_s": round(time.perf_counter() - start, 1), "versions": versions(),
        "host": {"cpu": device_name(torch.device("cpu")), "cpu_count": os.cpu_count(),
                 **({"gpu": device_name(torch.device("cuda"))} if args.device == "cuda" else {}),
                 "platform": platform.platform(), "load_average_start": load_start,
                 "load_average_end": load_average()},
        "config": {"iters": args.iters, "seeds": args.seeds, "variants_trained": args.variants,
                   "width": args.width, "enc_blk_nums": args.enc_blk_nums, "batch": args.batch, "patch": args.patch,
                   "lr": args.lr, "train_crops": args.train_crops, "test_crops": args.test_crops,
                   "hazy_per_clear": args.hazy_per_clear, "threads": args.threads, "parallel": args.parallel,
                   "device": args.device, "smoke": args.smoke, "work": str(work), "out": str(out)},
        "schedule": schedule(args.iters),
        "prompter": args.prompter,
        "layout": {"root": str(layout_root), "sha256": sha, "counts": manifest["counts"],
                   "train_photos": manifest["train_photos"], "test_photos": manifest["test_photos"],
                   "disjoint": not (set(manifest["train_photos"]) & set(manifest["test_photos"])),
                   "train_sides": list(sides.get("train_sides", (160, 256))),
                   "test_sides": list(sides.get("test_sides", (176, 256))),
                   "repeat": repeat, "samples_per_epoch": epoch,
                   "shares": {t: round(n / sum(epoch.values()), 4) for t, n in epoch.items()},
                   "paper_shares": {t: round(n / sum(PAPER_SAMPLES.values()), 4) for t, n in PAPER_SAMPLES.items()}},
        "input": input_row(test_root),
        "runs": sorted(runs, key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])),
        "reused": args.runs_from_reports,
    }
    report["summary"] = summarise(report["runs"], args.seeds)
    (out / "threetask_miniature.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / "threetask_miniature.md").write_text(text)
    print(text)
    print(f"wrote {out / 'threetask_miniature.json'} and {out / 'threetask_miniature.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
