#!/usr/bin/env python
"""All-in-one quality benchmark: a miniature of the ConStyle v2 authors' experiment.

One backbone (NAFNet, small width), one training set (``MixDegradationDataset`` over the offline
sample photos of scikit-image and matplotlib, the eight all-in-one degradations drawn on the fly),
the same seed and number of iterations for four variants:

* ``origin``: the bare NAFNet;
* ``constyle``: ``wrap_unet(NAFNet, prompter=<pre-trained prompter, --prompter>)``;
* ``constyle_untrained``: the same wrapper around a randomly initialised, frozen prompter (fixed
  seed): the ablation that separates "what the pre-training buys" from "what the extra adapter
  parameters and the architecture change buy";
* ``learned``: the same wrapper around the same random prompter, but trained with the U-Net (a
  plain learned conditioning of the same size and shape, without pre-training): what the adapters'
  capacity plus a conditioning network learned end to end buy, against which the frozen
  pre-trained prompter has to show its worth.

Photos are split by source photo (``constyle_plugin.data.samples.split_by_photo``): the test crops come
only from held-out photos that no training batch ever sees (asserted). The test set is fixed: for each
held-out photo, ``--test-crops`` crops of ``--test-patch`` pixels at seeded positions, each degraded
by each of the eight degradations with seeded parameters. Metrics are BasicSR's PSNR / SSIM (RGB)
and PSNR on the Y channel, on 8-bit-rounded images, per degradation and averaged, as mean +- std over
``--seeds``.

Investigation (always computed): a linear probe (multinomial logistic regression, in torch) that
predicts the degradation type from the prompter's latent ``z2`` (B x 128) and from the spatial mean
of each feature map ``f1``, ``f2``, ``f3``, trained on crops of the training photos and tested on the
held-out test inputs; the between / within scatter ratio grouped by degradation and by photo; for
the pre-trained, the untrained and any ``--compare NAME=PATH`` prompter (the previously packaged
one, the authors' released file), plus a PCA projection of the latents coloured by degradation.
This says whether the prompt carries the degradation type at all.

Outputs in ``--out``: ``allinone.json`` (command, versions, date, wall time, every number),
``allinone.md`` (tables), ``allinone_examples.png`` and ``allinone_latents.png``.

``--smoke`` runs in seconds (a few iterations, one seed, tiny sizes) for CI; with no prompter file it
uses a random one saved to a temporary file and says so.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from _runs import RunsFromError, runs_from, runs_named  # benchmarks/_runs.py
from constyle_plugin.core.pretrained import file_sha256 as sha256_file

VARIANTS = ("origin", "constyle", "constyle_untrained", "learned")
VARIANT_LABELS = {"origin": "origin", "constyle": "+ConStyle v2",
                  "constyle_untrained": "+ConStyle v2 (untrained prompter)",
                  "learned": "+learned conditioning (no pre-training)"}
FEATURES = (("z2", "z2 (latent prompt)"), ("f1_mean", "mean of f1 (1/2 features)"),
            ("f2_mean", "mean of f2 (1/4 features)"), ("f3_mean", "mean of f3 (1/8 features)"))
METRICS = ("psnr", "ssim", "psnr_y")  # what each test image is measured by
UNTRAINED_PROMPTER_SEED = 1234  # the ablation's random prompter is the same in every run
SMOKE_PROMPTER_SEED = 4321  # the stand-in "pre-trained" prompter of --smoke without a file
TEST_SEED = 2024  # fixed test crops and degradations
PROBE_SEED = 2025  # fixed probe-training crops (training photos only)
REPO = Path(__file__).resolve().parent.parent
# what a report given to --runs-from must share with this run
REUSE_MUST_MATCH = ("iters", "width", "levels", "blocks", "middle_blocks", "batch", "patch", "lr", "weight_decay",
                    "test_patch", "test_crops", "holdout", "split_seed")


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="All-in-one restoration benchmark: NAFNet origin vs +ConStyle v2 (pre-trained "
                    "prompter) vs +ConStyle v2 (untrained prompter) vs a learned conditioning of the same "
                    "size, on the offline sample photos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--prompter", default=None,
                   help="pre-trained prompter checkpoint (authors' .pth or this project's export); "
                        "default: the prompter packaged with constyle_plugin")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME=PATH",
                   help="more prompters for the investigation (linear probe, scatter ratios), e.g. "
                        "previous=benchmarks/prompters/<file> or authors=pretrained_ConStyle_v2.pth")
    p.add_argument("--runs-from", nargs="+", default=[], metavar="ALLINONE_JSON",
                   help="take the runs of the variants not in --variants from these earlier reports (made with "
                        "the same settings; checked: configuration, test set, and each seed's training batches "
                        "against the others'), e.g. to re-run only `constyle` with a new prompter, or, with an "
                        "empty --variants, to merge reports without training")
    p.add_argument("--iters", type=int, default=600, help="training iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS,
                   help="the variants to train (the report compares them with origin when origin is among them "
                        "or among the --runs-from runs)")
    p.add_argument("--width", type=int, default=16, help="NAFNet width")
    p.add_argument("--levels", type=int, default=3, help="NAFNet levels (>= 3: prompts go in at 1/2, 1/4, 1/8)")
    p.add_argument("--blocks", type=int, default=1, help="NAFBlocks per encoder / decoder level")
    p.add_argument("--middle-blocks", type=int, default=1, help="NAFBlocks in the bottleneck")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--patch", type=int, default=64, help="training patch side (px)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine to 1e-6)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--test-patch", type=int, default=128, help="test crop side (px)")
    p.add_argument("--test-crops", type=int, default=2, help="test crops per held-out photo")
    p.add_argument("--probe-crops", type=int, default=4,
                   help="crops per training photo (x 8 degradations) to fit the linear probe")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of the photos held out for testing")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the photo split")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=None,
                   help="data worker processes making the training batches (default: 0 on the CPU, where "
                        "they would compete with training for the cores; min(8, CPUs - 1) on a GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--out", default=None,
                   help="output folder (default: benchmarks/results; with --smoke a temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run for CI: a few iterations, one seed, tiny sizes; a random "
                        "prompter when no prompter file exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--probe-only", action="store_true",
                   help="run only the investigation of the prompters' latents (no training; about a "
                        "minute) and write allinone_probe.json / allinone_probe.md")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters, args.seeds, args.width, args.levels, args.blocks = 3, args.seeds[:1], 8, 3, 1
        args.middle_blocks, args.batch, args.patch, args.test_patch = 1, 2, 32, 32
        args.test_crops, args.probe_crops, args.eval_batch = 1, 1, 32
    for name in ("iters", "width", "levels", "blocks", "batch", "patch", "test_patch", "test_crops",
                 "probe_crops", "eval_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.levels < 3:
        p.error(f"--levels must be >= 3 (the prompt features go in at 1/2, 1/4 and 1/8), got {args.levels}")
    if args.middle_blocks < 0 or args.threads < 0 or (args.workers is not None and args.workers < 0):
        p.error("--middle-blocks, --threads and --workers must be >= 0")
    if not 0.0 < args.holdout < 1.0:
        p.error(f"--holdout must be in (0, 1), got {args.holdout}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has duplicates: {args.seeds}")
    if args.prompter is not None and not Path(args.prompter).expanduser().is_file():
        p.error(f"--prompter {args.prompter}: no such file")
    compare = {}
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name in ("pretrained", "untrained") or name in compare:
            p.error(f"--compare {item!r}: expected NAME=PATH with a new NAME (not pretrained / untrained)")
        if not Path(path).expanduser().is_file():
            p.error(f"--compare {item!r}: no such file {path}")
        compare[name] = Path(path).expanduser()
    args.compare = compare
    try:
        args.reused, args.runs_from_reports = runs_from(
            args.runs_from, vars(args), REUSE_MUST_MATCH, args.variants, args.seeds, "an allinone.json report",
            lambda earlier: {"test_set": earlier.get("test_set", {}).get("images")},
            prompters={"constyle": constyle_prompter_sha256(args.prompter)} if args.runs_from else None)
    except RunsFromError as exc:
        p.error(str(exc))
    args.variants = [v for v in VARIANTS if v in args.variants]
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"--device {name!r}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name!r}: CUDA is not available here (use --device auto or cpu)")
    return device


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def state_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def versions(script: str = "benchmarks/allinone.py") -> Dict[str, str]:
    """Versions of the libraries a report depends on, and the git commit (``(modified)`` when the package or
    ``script`` differs from it)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "basicsr", "constyle-plugin", "scikit-image", "matplotlib",
                 "opencv-python", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "constyle_plugin", "adapters",
                                script], cwd=REPO, capture_output=True, text=True,
                               timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def host_info(device: torch.device) -> Dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "n": int(arr.size)}


class IsolatedBatches:
    """Training batches drawn from their own RNG states (torch and Python ``random``).

    ``MixDegradationDataset`` draws crops and degradations from torch's generator and BasicSR's
    ``augment`` uses ``random``; model construction consumes the global generators. Every variant of
    one seed sees exactly the same batches, whatever its model consumed (checked with a fingerprint
    of all batches):

    - ``workers=0``: the batches are made in the main process, with a per-seed data state swapped in
      around every fetch;
    - ``workers>0``: the batches are made in worker processes (so a GPU does not wait on them),
      each seeded by torch's DataLoader from a per-seed generator (and ``random`` with it), which
      gives the same batches for the same seed and number of workers.
    """

    def __init__(self, dataset, batch: int, seed: int, workers: int = 0):
        from torch.utils.data import DataLoader, RandomSampler

        gen = torch.Generator().manual_seed(seed)
        self.workers = workers
        if workers:
            self.loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, generator=gen),
                                     num_workers=workers, drop_last=True, persistent_workers=True,
                                     prefetch_factor=4, generator=torch.Generator().manual_seed(seed + 7919))
        else:
            self.loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, generator=gen),
                                     num_workers=0, drop_last=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)
            self.torch_state = torch.get_rng_state()
        self.py_state = random.Random(seed + 7919).getstate()
        self.iterator = iter(self.loader)
        self.hash = hashlib.sha256()

    def _fetch(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.workers:
            batch = self._fetch()
            self.hash.update(batch["lq"].numpy().tobytes())
            self.hash.update(batch["gt"].numpy().tobytes())
            return batch["lq"], batch["gt"]
        saved_torch, saved_py = torch.get_rng_state(), random.getstate()
        torch.set_rng_state(self.torch_state)
        random.setstate(self.py_state)
        try:
            batch = self._fetch()
        finally:
            self.torch_state, self.py_state = torch.get_rng_state(), random.getstate()
            torch.set_rng_state(saved_torch)
            random.setstate(saved_py)
        self.hash.update(batch["lq"].numpy().tobytes())
        self.hash.update(batch["gt"].numpy().tobytes())
        return batch["lq"], batch["gt"]

    def fingerprint(self) -> str:
        return self.hash.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# data: photo split, fixed crops
# ---------------------------------------------------------------------------------------------

def fixed_crops(photos: Dict[str, np.ndarray], names: Sequence[str], per_photo: int, size: int,
                seed: int, degradation_names: Sequence[str]) -> List[Dict]:
    """Seeded crops of the named photos, each degraded by every degradation (seeded parameters).

    Returns a list of ``{'photo', 'crop', 'top', 'left', 'degradation', 'gt', 'lq'}`` with
    ``gt`` / ``lq`` float32 ``size x size x 3`` arrays in [0, 1]. A pure function of its arguments.
    """
    from constyle_plugin.data import degradations as deg

    items = []
    for name in sorted(names):
        img = photos[name].astype(np.float32) / 255.0
        h, w = img.shape[:2]
        if h < size or w < size:  # reflect-pad bottom/right like MixDegradationDataset
            img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")
            h, w = img.shape[:2]
        for k in range(per_photo):
            rng = np.random.default_rng([seed, k, *name.encode()])
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            gt = np.ascontiguousarray(img[top:top + size, left:left + size])
            for d, dname in enumerate(degradation_names):
                drng = np.random.default_rng([seed, k, 1000 + d, *name.encode()])
                lq = deg.ALL_IN_ONE[dname](gt, drng)
                items.append({"photo": name, "crop": k, "top": top, "left": left,
                              "degradation": dname, "gt": gt, "lq": np.asarray(lq, dtype=np.float32)})
    return items


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def random_prompter(seed: int):
    """A randomly initialised, frozen ConStyleV2; the global RNG is left untouched."""
    from constyle_plugin import ConStyleV2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConStyleV2().freeze()


def load_prompter(path: Path):
    from constyle_plugin import ConStyleV2

    with torch.random.fork_rng(devices=[]):  # ConStyleV2() initialises weights before loading
        try:
            return ConStyleV2.from_pretrained(path)
        except Exception as exc:  # name the option at fault
            raise SystemExit(f"--prompter {path}: cannot load a ConStyle v2 prompter: "
                             f"{type(exc).__name__}: {exc}")


def learned_conditioning(seed: int):
    """The ``learned`` variant's conditioning network: :func:`random_prompter`'s weights, trained.

    ``wrap_unet`` runs its prompter under ``no_grad`` and freezes it; this ConStyleV2 re-enables
    gradients inside its own forward, and :func:`build_model` makes its parameters trainable after
    wrapping, so it learns with the U-Net from the restoration loss alone. Its BatchNorm stays in
    eval mode (the wrapper's rule), i.e. a fixed affine map at initialisation."""
    from constyle_plugin import ConStyleV2

    class LearnedConditioning(ConStyleV2):
        def forward(self, x):
            with torch.enable_grad():
                return super().forward(x)

    net = LearnedConditioning()
    net.load_state_dict(random_prompter(seed).state_dict())
    return net


def build_model(variant: str, args: argparse.Namespace, seed: int, prompters: Dict) -> torch.nn.Module:
    """The backbone is initialised from ``seed`` alone, so all variants of a seed start from the same
    NAFNet weights; the wrapped variants also get the same adapter initialisation."""
    from constyle_plugin import wrap_unet
    from constyle_plugin.archs import NAFNet

    torch.manual_seed(seed)
    net = NAFNet(width=args.width, middle_blk_num=args.middle_blocks,
                 enc_blk_nums=(args.blocks,) * args.levels, dec_blk_nums=(args.blocks,) * args.levels)
    if variant == "origin":
        return net
    if variant == "learned":
        conditioning = learned_conditioning(UNTRAINED_PROMPTER_SEED)
        wrapped = wrap_unet(net, prompter=conditioning)
        conditioning.requires_grad_(True)
        return wrapped
    prompter = prompters["pretrained" if variant == "constyle" else "untrained"]
    return wrap_unet(net, prompter=prompter)


def trainable(net: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def train_one(net: torch.nn.Module, batches: IsolatedBatches, args: argparse.Namespace,
              device: torch.device, desc: str) -> Dict:
    from tqdm import tqdm

    net.to(device).train()
    params = trainable(net)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters, eta_min=1e-6)
    chunk = max(1, args.iters // 50)
    curve, acc, seen = [], 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(range(args.iters), desc=desc, disable=args.no_progress, mininterval=2.0,
               dynamic_ncols=True, file=sys.stderr)
    for it in bar:
        lq, gt = batches.next()
        lq, gt = lq.to(device, non_blocking=True), gt.to(device, non_blocking=True)
        loss = F.l1_loss(net(lq), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"{desc}: training loss is {value} at iteration {it}")
        acc, seen = acc + value, seen + 1
        if seen == chunk or it == args.iters - 1:
            curve.append([it + 1, acc / seen])
            bar.set_postfix(l1=f"{acc / seen:.4f}")
            acc, seen = 0.0, 0
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"train_time_s": time.perf_counter() - t0, "loss_curve": curve, "final_loss": curve[-1][1],
            "trainable_params": int(sum(p.numel() for p in params)),
            "data_fingerprint": batches.fingerprint()}


@torch.no_grad()
def restore(net: torch.nn.Module, lq: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
    net.eval()
    out = [net(lq[i:i + batch].to(device)).clamp(0, 1).cpu() for i in range(0, len(lq), batch)]
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def to_bgr255(img: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB float in [0, 1] -> BGR float64 rounded to 8 bits (BasicSR's metric input)."""
    return np.ascontiguousarray(np.round(np.clip(img, 0, 1) * 255.0)[..., ::-1], dtype=np.float64)


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    from basicsr.metrics import calculate_psnr, calculate_ssim

    p, g = to_bgr255(pred), to_bgr255(gt)
    return {"psnr": float(calculate_psnr(p, g, 0, input_order="HWC")),
            "ssim": float(calculate_ssim(p, g, 0, input_order="HWC")),
            "psnr_y": float(calculate_psnr(p, g, 0, input_order="HWC", test_y_channel=True))}


def evaluate(preds: np.ndarray, items: List[Dict], degradation_names: Sequence[str]) -> Dict:
    """Per-degradation means (over the test crops) and their average over degradations."""
    per_image = [image_metrics(preds[i], it["gt"]) for i, it in enumerate(items)]
    per_deg = {}
    for d in degradation_names:
        rows = [m for m, it in zip(per_image, items) if it["degradation"] == d]
        per_deg[d] = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_y")}
        per_deg[d]["n_images"] = len(rows)
    average = {k: float(np.mean([per_deg[d][k] for d in degradation_names])) for k in ("psnr", "ssim", "psnr_y")}
    return {"per_degradation": per_deg, "average": average,
            "per_image_psnr": [round(m["psnr"], 4) for m in per_image]}


# ---------------------------------------------------------------------------------------------
# investigation: linear probe of the degradation type on the prompter's latents
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def prompter_latents(prompter, images: torch.Tensor, device: torch.device, batch: int) -> Dict[str, torch.Tensor]:
    """``z2`` (N x 128, the latent prompt) and the spatial means of ``f1``, ``f2``, ``f3`` (N x 32,
    N x 64, N x 128: the 1/2, 1/4 and 1/8 feature maps)."""
    prompter = prompter.to(device).eval()
    out: Dict[str, List[torch.Tensor]] = {key: [] for key, _ in FEATURES}
    for i in range(0, len(images), batch):
        enc = prompter.encode(images[i:i + batch].to(device))
        out["z2"].append(enc.z2.float().cpu())
        for k, f in enumerate(enc.features):
            out[f"f{k + 1}_mean"].append(f.float().mean(dim=(2, 3)).cpu())
    return {key: torch.cat(v) for key, v in out.items()}


def linear_classifier(x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int,
                      l2: float = 1e-2) -> Callable[[torch.Tensor], torch.Tensor]:
    """Multinomial logistic regression (standardised inputs, L2, full-batch L-BFGS), in float64.

    ``x_train``: N x F features, ``y_train``: N class indices. Returns ``predict(x) -> M`` class indices.
    """
    x_train = x_train.double()
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
    a = (x_train - mu) / sd
    w = torch.zeros(a.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], lr=1.0, max_iter=200, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + c, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, c = w.detach(), c.detach()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return (((x.double() - mu) / sd) @ w + c).argmax(1)

    return predict


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
              n_classes: int, l2: float = 1e-2) -> Dict:
    """:func:`linear_classifier` fitted on the training features, scored on the test features."""
    predict = linear_classifier(x_train, y_train, n_classes, l2)
    pred_train, pred_test = predict(x_train), predict(x_test)
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    for t, p in zip(y_test.tolist(), pred_test.tolist()):
        confusion[t, p] += 1
    recall = [float(confusion[k, k]) / max(1, int(confusion[k].sum())) for k in range(n_classes)]
    return {"train_accuracy": float((pred_train == y_train).double().mean()),
            "test_accuracy": float((pred_test == y_test).double().mean()),
            "test_recall": recall, "confusion": confusion.tolist()}


def separability(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """trace(between-class scatter) / trace(within-class scatter) of standardised features."""
    x = x.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    between = within = 0.0
    for k in range(n_classes):
        xk = x[y == k]
        if len(xk) == 0:
            continue
        between += len(xk) * float((xk.mean(0) ** 2).sum())
        within += float(((xk - xk.mean(0)) ** 2).sum())
    return between / max(within, 1e-12)


def pca_2d(train: torch.Tensor, *others: torch.Tensor) -> Tuple[List[np.ndarray], List[float]]:
    """Project standardised features on the first two principal axes of ``train`` (SVD)."""
    train = train.double()
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-8)
    a = (train - mu) / sd
    _, s, vh = torch.linalg.svd(a, full_matrices=False)
    basis = vh[:2].T
    out = [(a @ basis).numpy()] + [(((o.double() - mu) / sd) @ basis).numpy() for o in others]
    explained = (s[:2] ** 2 / (s ** 2).sum()).tolist()
    return out, explained


def tsne_2d(train: torch.Tensor, test: torch.Tensor) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], str]:
    """t-SNE of the standardised train + test features when scikit-learn is installed.

    Returns ``((train_points, test_points) or None, a line saying what was done)``."""
    try:
        import sklearn
        from sklearn.manifold import TSNE
    except ImportError:
        return None, "skipped: scikit-learn is not installed (PCA only)"
    x = torch.cat([train, test]).double()
    x = ((x - train.double().mean(0)) / train.double().std(0).clamp_min(1e-8)).numpy()
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(x)
    return ((emb[:len(train)], emb[len(train):]),
            f"scikit-learn {sklearn.__version__} TSNE, perplexity {perplexity:g}, random_state 0")


def investigate(prompters: Dict, probe_items: List[Dict], test_items: List[Dict],
                degradation_names: Sequence[str], device: torch.device, batch: int) -> Tuple[Dict, Dict]:
    from constyle_plugin.training.pretrain import latent_spread

    index = {d: i for i, d in enumerate(degradation_names)}
    y_train = torch.tensor([index[it["degradation"]] for it in probe_items])
    y_test = torch.tensor([index[it["degradation"]] for it in test_items])
    photo_names = sorted({it["photo"] for it in test_items})
    photo_test = torch.tensor([photo_names.index(it["photo"]) for it in test_items])
    x_train_img = to_tensor([it["lq"] for it in probe_items])
    x_test_img = to_tensor([it["lq"] for it in test_items])
    n = len(degradation_names)
    results, points = {}, {}
    for key, prompter in prompters.items():
        tr = prompter_latents(prompter, x_train_img, device, batch)
        te = prompter_latents(prompter, x_test_img, device, batch)
        results[key] = {}
        for feat, _ in FEATURES:
            probe = fit_probe(tr[feat], y_train, te[feat], y_test, n)
            probe["test_recall"] = dict(zip(degradation_names, probe["test_recall"]))
            probe["separability_test"] = separability(te[feat], y_test, n)
            probe["spread_test"] = latent_spread(te[feat])
            probe["separability_by_photo_test"] = separability(te[feat], photo_test, len(photo_names))
            results[key][feat] = probe
        norms = te["z2"].norm(dim=1)
        results[key]["z2_norm_per_degradation"] = {
            d: float(norms[y_test == index[d]].mean()) for d in degradation_names}
        (ptr, pte), explained = pca_2d(tr["z2"], te["z2"])
        points[key] = {"train": ptr, "test": pte, "explained": explained}
        tsne, tsne_status = tsne_2d(tr["z2"], te["z2"])
        if tsne is not None:
            points[key]["tsne_train"], points[key]["tsne_test"] = tsne
    meta = {"n_train": len(probe_items), "n_test": len(test_items), "chance": 1.0 / n,
            "classes": list(degradation_names), "y_train": y_train.numpy(), "y_test": y_test.numpy(),
            "tsne": tsne_status}
    return {"meta": {k: v for k, v in meta.items() if not k.startswith("y_")}, **results}, {**points, **meta}


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_examples(path: Path, items: List[Dict], preds: Dict[str, np.ndarray], test_photos: Sequence[str],
                    degradation_names: Sequence[str], seed: int) -> None:
    """Rows: degradations (a different held-out photo on each row, crop 0); columns: input, each
    variant (seed ``seed``), ground truth; PSNR (RGB, dB) under each image."""
    plt = _pyplot()
    photos = sorted(test_photos)
    columns = ["input"] + list(preds) + ["ground truth"]
    fig, axes = plt.subplots(len(degradation_names), len(columns),
                             figsize=(1.9 * len(columns), 2.05 * len(degradation_names)), squeeze=False)
    for r, d in enumerate(degradation_names):
        photo = photos[r % len(photos)]
        i = next(j for j, it in enumerate(items) if it["photo"] == photo and it["crop"] == 0
                 and it["degradation"] == d)
        gt = items[i]["gt"]
        images = [items[i]["lq"]] + [preds[v][i] for v in preds] + [gt]
        for c, (title, img) in enumerate(zip(columns, images)):
            ax = axes[r, c]
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(VARIANT_LABELS.get(title, title).replace(" (untrained", "\n(untrained"), fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{d}\n({photo})", fontsize=8)
            if c < len(columns) - 1:
                ax.set_xlabel(f"{image_metrics(img, gt)['psnr']:.2f} dB", fontsize=7)
    fig.suptitle(f"All-in-one examples (held-out photos, seed {seed}); PSNR RGB under each image", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_latents(path: Path, points: Dict, probe: Dict) -> None:
    plt = _pyplot()
    keys = [k for k in probe if k != "meta" and k in points]
    classes = points["classes"]
    cmap = plt.get_cmap("tab10")
    rows = [("", "PC")] + ([("tsne_", "t-SNE ")] if all("tsne_train" in points[k] for k in keys) else [])
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(5.2 * len(keys), 4.6 * len(rows)), squeeze=False)
    for r, (prefix, axis_name) in enumerate(rows):
        for ax, key in zip(axes[r], keys):
            pts = points[key]
            for k, d in enumerate(classes):
                tr = pts[prefix + "train"][points["y_train"] == k]
                te = pts[prefix + "test"][points["y_test"] == k]
                ax.scatter(tr[:, 0], tr[:, 1], s=10, color=cmap(k), alpha=0.35, linewidths=0)
                ax.scatter(te[:, 0], te[:, 1], s=28, color=cmap(k), marker="x", label=d)
            acc = probe[key]["z2"]["test_accuracy"]
            ex = pts["explained"]
            method = f"PCA ({ex[0] * 100:.0f}% + {ex[1] * 100:.0f}% var.)" if not prefix else "t-SNE"
            ax.set_title(f"{key} prompter: z2, {method}\n"
                         f"linear-probe accuracy on held-out photos {acc * 100:.1f}% (chance "
                         f"{probe['meta']['chance'] * 100:.1f}%)", fontsize=8)
            ax.set_xlabel(f"{axis_name}1")
            ax.set_ylabel(f"{axis_name}2")
        axes[r, -1].legend(fontsize=7, loc="best", title="x: test, dot: train", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(ms: Dict, digits: int) -> str:
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def _metric_source(d: str):
    return (lambda r: r["metrics"]["average"]) if d == "average" else \
        (lambda r: r["metrics"]["per_degradation"][d])


def paired_delta(runs: List[Dict], a: str, b: str, degradation_names: Sequence[str],
                 keys: Sequence[str] = METRICS) -> Dict:
    """Variant ``a`` minus variant ``b``, seed by seed (same initial backbone, same batches), for the seeds
    both have."""
    by_seed = {r["seed"]: r for r in runs if r["variant"] == b}
    rs = [r for r in runs if r["variant"] == a and r["seed"] in by_seed]
    out = {}
    for d in list(degradation_names) + ["average"]:
        pick = _metric_source(d)
        out[d] = {k: mean_std([pick(r)[k] - pick(by_seed[r["seed"]])[k] for r in rs]) for k in keys}
    return out


def summarise(runs: List[Dict], variants: Sequence[str], degradation_names: Sequence[str],
              keys: Sequence[str] = METRICS) -> Dict:
    """Mean +- std over seeds of each variant's metrics, and the paired differences with origin (and of
    ``constyle`` with each ablation)."""
    summary = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        entry = {}
        for d in list(degradation_names) + ["average"]:
            pick = _metric_source(d)
            entry[d] = {k: mean_std([pick(r)[k] for r in rs]) for k in keys}
        entry["train_time_s"] = mean_std([r["train_time_s"] for r in rs])
        summary[v] = entry
    deltas = {f"{v} - origin": paired_delta(runs, v, "origin", degradation_names, keys)
              for v in variants if v != "origin" and "origin" in variants}
    for other in ("constyle_untrained", "learned"):
        if "constyle" in variants and other in variants:
            deltas[f"constyle - {other}"] = paired_delta(runs, "constyle", other, degradation_names, keys)
    return {"variants": summary, "paired_deltas": deltas}


def markdown_probe(probe: Dict, degs: Sequence[str], latents_png: str) -> List[str]:
    """The investigation's tables (linear probe, separability, spread, latent norms)."""
    keys = [k for k in probe if k != "meta"]
    lines = ["### Do the prompter's latents separate the degradation types?", "",
             f"Linear probe (multinomial logistic regression) predicting the degradation type, fitted on "
             f"{probe['meta']['n_train']} degraded crops of the training photos, tested on the "
             f"{probe['meta']['n_test']} test inputs (held-out photos). Chance: "
             f"{probe['meta']['chance'] * 100:.1f}%. Separability: between- / within-class scatter on the "
             f"test inputs, grouped by degradation and, for comparison, by source photo. Spread: "
             f"`constyle_plugin.training.pretrain.latent_spread` on the test inputs (0: every image gets the same "
             f"vector; below 0.1 the training logs call it collapsed).", "",
             "| prompter | features | train acc. | test acc. | separability (degradation) | "
             "separability (photo) | spread | " + " | ".join(degs) + " |",
             "|" + "---|" * (7 + len(degs))]
    for key in keys:
        for feat, label in FEATURES:
            p = probe[key][feat]
            lines.append(f"| {key} | {label} | {p['train_accuracy'] * 100:.1f}% | {p['test_accuracy'] * 100:.1f}% "
                        f"| {p['separability_test']:.3f} | {p.get('separability_by_photo_test', float('nan')):.3f} "
                        f"| {p['spread_test']:.3f} | " +
                        " | ".join(f"{p['test_recall'][d] * 100:.0f}%" for d in degs) + " |")
    lines += ["", f"(per-degradation columns: test recall of that class.) 2-D projections in "
             f"`{latents_png}`: PCA; t-SNE: {probe['meta']['tsne']}.", "",
             "Mean norm of the latent prompt z2 on the test inputs, per degradation:", "",
             "| prompter | " + " | ".join(degs) + " |", "|" + "---|" * (1 + len(degs))]
    for key in keys:
        norms = probe[key]["z2_norm_per_degradation"]
        lines.append(f"| {key} | " + " | ".join(f"{norms[d]:.3g}" for d in degs) + " |")
    lines.append("")
    return lines


def markdown(report: Dict) -> str:
    cfg, degs = report["config"], report["degradations"]
    variants = cfg["variants"]
    s = report["summary"]["variants"]
    inp = report["input_baseline"]
    n_seeds = len(cfg["seeds"])
    lines = ["# All-in-one benchmark (miniature of the ConStyle v2 experiment)", ""]
    if report["prompter"]["random"]:
        lines += ["> **The `constyle` prompter in this run is a RANDOM network** (no pre-trained "
                  "prompter file was given): its numbers say nothing about ConStyle v2.", ""]
    if cfg["smoke"]:
        lines += ["> Smoke run (a few iterations, tiny sizes): for CI only, the numbers mean nothing.", ""]
    for ru in report.get("reused") or []:
        lines += [f"> Runs of {runs_named(ru)} come from `{ru['file']}` (made {ru['date']} by "
                  f"`{ru['command']}`), with the same settings, test set and training batches (checked).", ""]
    lines += [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; wall time {report['wall_time_s'] / 60:.1f} min on {report['host']['device']} "
        f"({report['host']['processor']}, {report['host']['torch_threads']} torch threads, load average at "
        f"start {report['host'].get('load_average_at_start')}).  ",
        f"Prompter (`constyle`): `{report['prompter']['path']}` (sha256 `{report['prompter']['sha256'][:16]}…`); "
        f"untrained prompter: `ConStyleV2()` with torch seed {UNTRAINED_PROMPTER_SEED}, frozen; learned "
        f"conditioning: the same network and initial weights, trained with the U-Net.",
        "",
        f"Backbone: NAFNet width {cfg['width']}, {cfg['levels']} levels x {cfg['blocks']} block(s), "
        f"{cfg['middle_blocks']} middle block(s). Training: {cfg['iters']} iterations, batch {cfg['batch']}, "
        f"{cfg['patch']} px patches, L1, AdamW lr {cfg['lr']:g} (cosine to 1e-6), weight decay "
        f"{cfg['weight_decay']:g}, no EMA; seeds {cfg['seeds']} (each seed: the same initial NAFNet and the "
        f"same batches for every variant). Data: `MixDegradationDataset` over "
        f"{len(report['split']['train_photos'])} sample photos ({', '.join(report['split']['train_photos'])}), "
        f"the eight degradations with equal weights.",
        "",
        f"Test set: {report['test_set']['n_images']} images = {len(report['split']['test_photos'])} held-out "
        f"photos ({', '.join(report['split']['test_photos'])}; never seen in training) x "
        f"{cfg['test_crops']} fixed {cfg['test_patch']} px crop(s) x 8 degradations (seeded). "
        f"Metrics: BasicSR PSNR / SSIM on RGB and PSNR on Y, 8-bit rounded; mean ± std over "
        f"{n_seeds} seed(s) of the per-degradation mean.",
        "",
    ]

    def table(key: str, title: str, digits: int) -> List[str]:
        head = "| degradation | input | " + " | ".join(VARIANT_LABELS[v] for v in variants) + " |"
        out = [f"### {title}", "", head, "|" + "---|" * (len(variants) + 2)]
        for d in list(degs) + ["average"]:
            name = "**average**" if d == "average" else d
            cells = [f"{inp[d][key]:.{digits}f}"] + [_fmt(s[v][d][key], digits) for v in variants]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        return out + [""]

    lines += table("psnr", "PSNR (dB, RGB)", 2)
    lines += table("ssim", "SSIM (RGB)", 4)
    lines += table("psnr_y", "PSNR (dB, Y channel)", 2)

    deltas = report["summary"]["paired_deltas"]
    if deltas:
        lines += ["### Paired differences (seed by seed: same initial backbone, same batches)", "",
                  "ΔPSNR in dB (RGB) and ΔSSIM, mean ± std over seeds.", "",
                  "| degradation | " + " | ".join(f"{name}: ΔPSNR | ΔSSIM" for name in deltas) + " |",
                  "|" + "---|" * (1 + 2 * len(deltas))]
        for d in list(degs) + ["average"]:
            name = "**average**" if d == "average" else d
            cells = []
            for key in deltas:
                cells += [f"{deltas[key][d]['psnr']['mean']:+.2f} ± {deltas[key][d]['psnr']['std']:.2f}",
                          f"{deltas[key][d]['ssim']['mean']:+.4f} ± {deltas[key][d]['ssim']['std']:.4f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += markdown_probe(report["probe"], degs, report["files"]["latents"])

    lines += ["### Runs", "", "| variant | seed | trainable params | train time (s) | final L1 | data fingerprint |",
              "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['trainable_params']:,} | {r['train_time_s']:.0f} | "
                     f"{r['final_loss']:.4f} | `{r['data_fingerprint']}` |")
    lines += [""] + ([f"![examples]({report['files']['examples']})", ""] if "examples" in report["files"] else [])
    lines += [f"![latents]({report['files']['latents']})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def command_line(argv: Optional[Sequence[str]]) -> str:
    """The command as recorded in the outputs: ``python benchmarks/allinone.py ARGS``."""
    return "python " + shlex.join(["benchmarks/allinone.py"] + list(sys.argv[1:] if argv is None else argv))


def write_probe_only(out: Path, args: argparse.Namespace, argv: Optional[Sequence[str]], probe: Dict,
                     prompter_path: Path, degradation_names: Sequence[str], t_start: float, workdir_obj) -> int:
    """``--probe-only``: the investigation's numbers and its table, nothing trained."""
    report = {
        "command": command_line(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - t_start, "versions": versions(),
        "prompter": {"path": str(prompter_path), "sha256": args.prompter_sha256,
                     "untrained_seed": UNTRAINED_PROMPTER_SEED},
        "compared": args.compared,
        "degradations": list(degradation_names), "probe": probe,
    }
    (out / "allinone_probe.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    md = "\n".join(markdown_probe(probe, list(degradation_names), "(not drawn with --probe-only)"))
    (out / "allinone_probe.md").write_text(f"Command: `{report['command']}`  \nDate: {report['date']}; prompter "
                                           f"sha256 `{report['prompter']['sha256'][:16]}…`"
                                           + "".join(f"; {n}: `{c['path']}` (sha256 `{c['sha256'][:16]}…`)"
                                                     for n, c in report["compared"].items())
                                           + "\n\n" + md)
    print(f"[allinone] wrote {out / 'allinone_probe.json'}, {out / 'allinone_probe.md'}", flush=True)
    workdir_obj.cleanup()
    return 0


def constyle_prompter_sha256(given: Optional[str]) -> Optional[str]:
    """sha256 of the file the ``constyle`` rows use (``--prompter``, else the packaged one; None without
    either: a smoke run's random network), to know reused runs by their prompter file (``--runs-from``)."""
    from constyle_plugin.core.prompter import default_prompter_path

    path = Path(given).expanduser() if given else default_prompter_path()
    return sha256_file(path) if path is not None else None


def resolve_prompter(args: argparse.Namespace, workdir: Path) -> Tuple[Path, bool, str]:
    """(path, is_random, note) of the prompter for the ``constyle`` variant."""
    from constyle_plugin.core.prompter import PACKAGED_WEIGHTS, default_prompter_path

    if args.prompter is not None:
        path = Path(args.prompter).expanduser()
        if not path.is_file():
            raise SystemExit(f"--prompter {args.prompter}: no such file")
        return path, False, "given with --prompter"
    packaged = default_prompter_path()
    if packaged is not None:
        return Path(packaged), False, "packaged with constyle_plugin"
    if not args.smoke:
        raise SystemExit(
            f"no pre-trained prompter: constyle_plugin has no packaged prompter ({PACKAGED_WEIGHTS} does "
            f"not exist) and --prompter was not given. Pass --prompter PATH (the authors' "
            f"pretrained_ConStyle_v2.pth or this project's export); only --smoke runs without one.")
    path = workdir / "random_prompter.safetensors"
    random_prompter(SMOKE_PROMPTER_SEED).save_pretrained(path)
    return path, True, (f"SMOKE RUN WITHOUT A PROMPTER FILE: the 'constyle' variant uses a RANDOM "
                        f"prompter (torch seed {SMOKE_PROMPTER_SEED}) saved to {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        _pyplot()
    except ImportError:
        raise SystemExit("benchmarks/allinone.py needs matplotlib for its figures: pip install matplotlib")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.workers is None:
        args.workers = 0 if device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 1))
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    from constyle_plugin.data import degradations as deg
    from constyle_plugin.data.datasets import MixDegradationDataset
    from constyle_plugin.data.samples import sample_photos, split_by_photo

    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "constyle_allinone_smoke" if args.smoke else REPO / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    workdir_obj = tempfile.TemporaryDirectory(prefix="constyle_allinone_")
    workdir = Path(workdir_obj.name)
    host = host_info(device)

    prompter_path, prompter_random, prompter_note = resolve_prompter(args, workdir)
    print(f"[allinone] prompter: {prompter_path} ({prompter_note})", flush=True)
    # hashes of the files as loaded, should one change during the run
    args.prompter_sha256 = sha256_file(prompter_path)
    args.compared = {name: {"path": str(path), "sha256": sha256_file(path)} for name, path in args.compare.items()}
    prompters = {"pretrained": load_prompter(prompter_path),
                 "untrained": random_prompter(UNTRAINED_PROMPTER_SEED)}
    for name, path in args.compare.items():
        prompters[name] = load_prompter(path)

    # ---- photos, split by source photo
    photos = dict(sample_photos())
    degradation_names = list(deg.ALL_IN_ONE)
    train_photos, test_photos = split_by_photo(sorted(photos), val_fraction=args.holdout, seed=args.split_seed)
    assert not set(train_photos) & set(test_photos), "a photo is both in training and in the test set"
    dataset = MixDegradationDataset({
        "sample_dir": str(workdir / "photos"), "photos": train_photos, "gt_size": args.patch,
        "phase": "train", "repeat": max(1, math.ceil(args.iters * args.batch / len(train_photos)) + 1)})
    dataset_photos = sorted({Path(p).stem for p in dataset.paths})
    assert dataset_photos == sorted(train_photos), (dataset_photos, train_photos)
    assert not set(dataset_photos) & set(test_photos), "the training dataset reads a held-out photo"
    test_items = fixed_crops(photos, test_photos, args.test_crops, args.test_patch, TEST_SEED, degradation_names)
    probe_items = fixed_crops(photos, train_photos, args.probe_crops, args.test_patch, PROBE_SEED,
                              degradation_names)
    assert {it["photo"] for it in test_items} <= set(test_photos)
    assert not {it["photo"] for it in probe_items} & set(test_photos)
    print(f"[allinone] device {device}, {torch.get_num_threads()} threads; training photos {train_photos}; "
          f"held-out photos {test_photos}; {len(test_items)} test images", flush=True)
    test_lq = to_tensor([it["lq"] for it in test_items])
    ours = [{k: it[k] for k in ("photo", "crop", "top", "left", "degradation")} for it in test_items]
    for earlier in args.runs_from_reports:
        if earlier["test_set"] != ours:
            raise SystemExit(f"--runs-from {earlier['file']}: its test set differs from this run's")

    # ---- investigation (cheap, independent of training)
    t0 = time.perf_counter()
    probe, points = investigate(prompters, probe_items, test_items, degradation_names, device, args.eval_batch)
    probe["meta"]["time_s"] = time.perf_counter() - t0
    for key in prompters:
        print(f"[allinone] linear probe on z2, {key} prompter: test accuracy "
              f"{probe[key]['z2']['test_accuracy'] * 100:.1f}% (chance {100 / len(degradation_names):.1f}%)",
              flush=True)

    if args.probe_only:
        return write_probe_only(out, args, argv, probe, prompter_path, degradation_names, t_start, workdir_obj)

    # ---- training and evaluation
    input_baseline = evaluate(test_lq.permute(0, 2, 3, 1).numpy(), test_items, degradation_names)
    all_variants = [v for v in VARIANTS if v in args.variants or any(r["variant"] == v for r in args.reused)]
    runs, example_preds = [], {}
    for seed in args.seeds:
        fingerprints = {}
        for variant in args.variants:
            net = build_model(variant, args, seed, prompters)
            batches = IsolatedBatches(dataset, args.batch, seed, workers=args.workers)
            run = train_one(net, batches, args, device, desc=f"{variant} seed {seed}")
            t0 = time.perf_counter()
            preds = restore(net, test_lq, device, args.eval_batch).permute(0, 2, 3, 1).numpy()
            run["metrics"] = evaluate(preds, test_items, degradation_names)
            run["eval_time_s"] = time.perf_counter() - t0
            run.update(variant=variant, seed=seed)
            if variant == "constyle" and not prompter_random:
                run["prompter_sha256"] = args.prompter_sha256
            fingerprints[variant] = run["data_fingerprint"]
            if seed == args.seeds[0]:
                example_preds[variant] = preds
            runs.append(run)
            print(f"[allinone] {variant} seed {seed}: average PSNR {run['metrics']['average']['psnr']:.2f} dB, "
                  f"SSIM {run['metrics']['average']['ssim']:.4f}; train {run['train_time_s']:.0f} s, "
                  f"eval {run['eval_time_s']:.0f} s", flush=True)
            del net
        for r in args.reused:
            if r["seed"] == seed:
                runs.append(r)
                fingerprints[f"{r['variant']} (from --runs-from)"] = r["data_fingerprint"]
        if len(set(fingerprints.values())) != 1:
            raise SystemExit(f"variants of seed {seed} saw different data: {fingerprints}")

    # ---- outputs
    files = {"json": "allinone.json", "markdown": "allinone.md", "examples": "allinone_examples.png",
             "latents": "allinone_latents.png"}
    if example_preds:
        figure_examples(out / files["examples"], test_items, example_preds, test_photos, degradation_names,
                        args.seeds[0])
    else:  # nothing trained here: the examples figure of the reports merged stays where it is
        files.pop("examples")
    figure_latents(out / files["latents"], points, probe)
    if hasattr(os, "getloadavg"):
        host["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "command": command_line(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - t_start,
        "versions": versions(), "host": host,
        "config": {**{k: v for k, v in vars(args).items()
                      if k not in ("no_progress", "reused", "runs_from_reports", "compare", "prompter_sha256",
                                   "compared")},
                   "variants": all_variants, "variants_trained": list(args.variants),
                   "compare": {k: str(v) for k, v in args.compare.items()}},
        "prompter": {"path": str(prompter_path), "sha256": args.prompter_sha256, "random": prompter_random,
                     "note": prompter_note, "untrained_seed": UNTRAINED_PROMPTER_SEED,
                     "untrained_state_sha256_16": state_fingerprint(prompters["untrained"])},
        "compared": args.compared,
        "split": {"train_photos": train_photos, "test_photos": test_photos, "dataset_photos": dataset_photos,
                  "disjoint": not set(train_photos) & set(test_photos), "holdout": args.holdout,
                  "split_seed": args.split_seed},
        "degradations": degradation_names,
        "test_set": {"n_images": len(test_items), "seed": TEST_SEED, "patch": args.test_patch,
                     "images": [{k: it[k] for k in ("photo", "crop", "top", "left", "degradation")}
                                for it in test_items]},
        "input_baseline": {**input_baseline["per_degradation"], "average": input_baseline["average"]},
        "runs": runs,
        "summary": summarise(runs, all_variants, degradation_names),
        "reused": [{k: v for k, v in r.items() if k != "test_set"} for r in args.runs_from_reports if r["variants"]],
        "probe": probe,
        "files": files,
    }
    (out / files["json"]).write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    (out / files["markdown"]).write_text(markdown(report))
    avg = report["summary"]["variants"]
    print("[allinone] average PSNR: " + "; ".join(f"{v} {_fmt(avg[v]['average']['psnr'], 2)} dB"
                                                   for v in all_variants), flush=True)
    if prompter_random:
        print(f"[allinone] NOTE: {prompter_note}", flush=True)
    print(f"[allinone] wrote {', '.join(str(out / f) for f in files.values())} "
          f"in {report['wall_time_s']:.0f} s", flush=True)
    workdir_obj.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
