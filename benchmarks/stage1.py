#!/usr/bin/env python
"""Stage 1 (pre-training the prompter): time per iteration, the networks alone and with the data.

Three measurements, each in this process:

* **networks**: one training step of :class:`~constyle_plugin.training.pretrain.ConStyleMoCo` (query encoder,
  momentum key encoder, queue of ``--queue`` negatives) with the five losses
  (:class:`~constyle_plugin.training.pretrain.ConStylePretrainLoss`, pretext and distillation on) and AdamW
  (lr 3e-4, weight decay 1e-4), on a fixed batch already on the device: ``zero_grad``, forward,
  losses, backward, step. Variants: ``baseline`` (fp32, torch's default AdamW), and with
  ``--channels-last`` / ``--fused-adamw`` each of those and both, with ``--no-host-checks`` without
  the two input checks that read back to the host (prompter NaN/Inf check, label range check), to
  measure what helps.
* **degradation**: the Real-ESRGAN query degradation of one batch of photo crops
  (:class:`~constyle_plugin.data.degradations.RealESRGANDegradation`): ``reference`` (the original
  path: kernels drawn on the host per sample, per-sample reads from the device), ``fast`` with
  the parameters given (drawn beforehand, as the data workers do), and the parameter drawing
  alone on the host (``params``: the workers' share, per batch).
* **pipeline**: whole iterations of BasicSR's stage-1 model (``ConStyleV2PretrainModel``: feed
  data, degradation of the non-weather queries, the step, EMA 0.999, loss logging) fed by a
  ``DataLoader`` over :class:`~constyle_plugin.data.datasets.ConStylePretrainDataset` (the offline sample
  classes, 40 % weather on the CPU): ``reference`` (the model draws the kernels, reference
  degradation) versus ``fast`` (the dataset draws the parameters in its workers, fast degradation).
  Reports seconds per iteration (median and mean, including the wait for data), the wait for data,
  and the extrapolation to ``--total-iters`` (400 000, the authors' schedule).

On CUDA, GPU utilisation: for the networks and the degradation, the GPU time of each call from
CUDA events recorded around it; for the pipeline, ``device_span``: per iteration, the time between
a CUDA event recorded when the batch is handed to the model and one after the step (an upper
bound of the busy time: it includes gaps inside the iteration), summed and divided by the wall
time; ``busy_estimate`` = (networks step + fast degradation GPU time, measured back to back) / the
pipeline's wall time per iteration; and with ``--profile``, the summed CUDA kernel time of a few
iterations from ``torch.profiler`` / their wall time.

Outputs in ``--out``: ``stage1_<device>.json`` (command, versions, device, every sample) and
``stage1_<device>.md``. ``--smoke`` runs in seconds (batch 2, 32 px, queue 16, one iteration) for
CI; its numbers mean nothing.

Example (the CPU run recorded in benchmarks/results)::

    python benchmarks/stage1.py --device cpu --threads 1 --batch 8 --size 224 --iters 8 --warmup 2
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _host import finish_report, report_header, resolve_device, sync  # noqa: E402  (benchmarks/_host.py)

from constyle_plugin.data.degradations import RealESRGANDegradation  # noqa: E402
from constyle_plugin.training.pretrain import ConStyleMoCo  # noqa: E402

AUTHORS = {"batch": 32, "size": 224, "queue": 65760, "total_iters": 400000}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> Dict[str, float]:
    vals = sorted(values)
    return {"median": statistics.median(vals), "mean": statistics.fmean(vals), "min": vals[0], "max": vals[-1],
            "n": len(vals)}


class GpuTimer:
    """CUDA events around a call (GPU time, ms -> s); does nothing on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: List[tuple] = []

    @contextlib.contextmanager
    def __call__(self):
        if not self.cuda:
            yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.pairs.append((start, end))

    def seconds(self) -> List[float]:
        if not self.pairs:
            return []
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1000.0 for s, e in self.pairs]


def photo_batch(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """``batch`` crops of the offline sample photos, B x 3 x size x size in [0, 1]."""
    import cv2

    from constyle_plugin.data.samples import sample_photos

    crops = []
    photos = [img for _, img in sample_photos()]
    for i in range(batch):
        img = photos[i % len(photos)]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        h, w = img.shape[:2]
        side = min(h, w)
        img = cv2.resize(img[:side, :side, :3], (size, size), interpolation=cv2.INTER_AREA)
        crops.append(torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(crops).to(device)


# ------------------------------------------------------------------------------------------------
# Networks alone
# ------------------------------------------------------------------------------------------------
def make_optimizer(params, fused: bool) -> torch.optim.Optimizer:
    kwargs: Dict[str, Any] = {"lr": 3e-4, "weight_decay": 1e-4, "betas": (0.9, 0.999)}
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


@contextlib.contextmanager
def no_label_check():
    """The pretext loss without its label range check (a read-back of the labels), for measuring."""
    from constyle_plugin.training import losses

    saved = losses.check_labels
    losses.check_labels = lambda logits, labels: None
    try:
        yield
    finally:
        losses.check_labels = saved


class NetworkStep:
    """One variant of the networks' step: its own model, optimiser and batch (same seed for all).

    ``host_checks=False``: without the two input checks that read values back to the host (the
    prompter's NaN/Inf check of each encoder input, the pretext loss's label range check)."""

    def __init__(self, device: torch.device, batch: int, size: int, queue: int, channels_last: bool, fused: bool,
                 num_classes: int, seed: int, host_checks: bool = True):
        torch.manual_seed(seed)
        self.host_checks = host_checks
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device
        self.model = ConStyleMoCo(queue_size=queue, num_classes=num_classes).to(device).train()
        self.model = self.model.to(memory_format=fmt)
        self.criterion = self.model.pretrain_loss(class_iter=None, kl_iter=None)
        self.model.encoder_q.check_finite = self.model.encoder_k.check_finite = host_checks
        self.opt = make_optimizer([p for p in self.model.parameters() if p.requires_grad], fused)
        self.query = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.key = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (batch,), device=device)
        self.gpu = GpuTimer(device)
        self.wall: List[float] = []
        self.i = 0

    def step(self) -> None:
        with contextlib.nullcontext() if self.host_checks else no_label_check():
            self.opt.zero_grad(set_to_none=True)
            out = self.model(self.query, self.key)
            losses = self.criterion(out, self.labels, self.i)
            losses["total"].backward()
            self.opt.step()
        self.i += 1

    def timed(self) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        with self.gpu():
            self.step()
        sync(self.device)
        self.wall.append(time.perf_counter() - t0)

    def back_to_back(self, n: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(self.device)
        return (time.perf_counter() - t0) / n


def bench_networks(device: torch.device, batch: int, size: int, queue: int, iters: int, warmup: int,
                   variants: Sequence[tuple], num_classes: int, seed: int,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    """Interleaved: one timed step of each variant in turn (order reversed every round), so a change
    of machine load hits them alike."""
    steps: Dict[str, NetworkStep] = {}
    out: Dict[str, Any] = {}
    for name, cl, fused, checks in variants:
        try:
            steps[name] = NetworkStep(device, batch, size, queue, cl, fused, num_classes, seed, checks)
        except (RuntimeError, TypeError, ValueError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    for s in steps.values():
        for _ in range(warmup):
            s.step()
    names = list(steps)
    for r in range(iters):
        for name in (names if r % 2 == 0 else names[::-1]):
            steps[name].timed()
    for name in names:
        s = steps[name]
        res: Dict[str, Any] = {"wall_s": spread(s.wall), "back_to_back_s": s.back_to_back(iters),
                               "losses": sorted(s.criterion.active(0))}
        gpu_s = s.gpu.seconds()
        if gpu_s:
            res["gpu_s"] = spread(gpu_s)
            res["gpu_busy_fraction"] = sum(gpu_s) / sum(s.wall)
        out[name] = res
        log(f"  networks {name}: {res['wall_s']['median'] * 1000:.1f} ms per step")
    base = out.get("baseline", {}).get("wall_s", {}).get("median")
    for name, res in out.items():
        if base and "wall_s" in res:
            res["vs_baseline"] = res["wall_s"]["median"] / base
    del steps
    return out


# ------------------------------------------------------------------------------------------------
# Degradation alone
# ------------------------------------------------------------------------------------------------
def bench_degradation(device: torch.device, batch: int, size: int, iters: int, warmup: int,
                      seed: int) -> Dict[str, Any]:
    x = photo_batch(batch, size, device)
    out: Dict[str, Any] = {}
    fast = RealESRGANDegradation(seed=seed)
    ref = RealESRGANDegradation(seed=seed, implementation="reference")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fast.sample_params(batch, rng=rng)
        draws.append(time.perf_counter() - t0)
    out["params_host_s"] = spread(draws)
    out["params_host_per_sample_s"] = statistics.median(draws) / batch
    params = [fast.sample_params(batch, rng=rng) for _ in range(warmup + iters)]
    for name, module, given in (("reference", ref, False), ("fast", fast, True)):
        gpu = GpuTimer(device)
        wall, host = [], []
        for i in range(warmup + iters):
            sync(device)
            t0 = time.perf_counter()
            with gpu() if i >= warmup else contextlib.nullcontext():
                module(x, params[i] if given else None)
            t1 = time.perf_counter()  # the host's time to issue the work (a sync inside waits here)
            sync(device)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                host.append(t1 - t0)
        res: Dict[str, Any] = {"wall_s": spread(wall), "host_issue_s": spread(host)}
        gpu_s = gpu.seconds()
        if gpu_s:
            res["gpu_s"] = spread(gpu_s)
        res["params"] = "given (drawn beforehand, as the data workers do)" if given else "drawn inside, on the host"
        out[name] = res
    out["speedup_fast_vs_reference"] = out["reference"]["wall_s"]["median"] / out["fast"]["wall_s"]["median"]
    return out


# ------------------------------------------------------------------------------------------------
# Whole iterations: BasicSR's stage-1 model fed by a DataLoader
# ------------------------------------------------------------------------------------------------
def build_model(device: torch.device, queue: int, num_classes: int, implementation: str, dataset_params: bool,
                fused: bool, ema: float, workdir: Path):
    from basicsr.models import build_model as basicsr_build_model

    import constyle_plugin.integrations.basicsr  # noqa: F401  (registers the model and the network)

    optim = {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]}
    if fused:
        optim["fused"] = True
    opt = {
        "name": "stage1_benchmark", "model_type": "ConStyleV2PretrainModel",
        "num_gpu": 1 if device.type == "cuda" else 0, "dist": False, "rank": 0, "world_size": 1, "is_train": True,
        "datasets": {"train": {"type": "ConStylePretrainDataset", "degradation": dataset_params}},
        "network_g": {"type": "ConStyleMoCo", "queue_size": queue, "num_classes": num_classes},
        "path": {"pretrain_network_g": None, "models": str(workdir / "models"),
                 "training_states": str(workdir / "states")},
        "train": {"ema_decay": ema, "optim_g": optim, "class_iter": 50000, "kl_iter": None,
                  "degradation": {"implementation": implementation},
                  "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [400000], "restart_weights": [1],
                                "eta_min": 1e-4}},
    }
    return basicsr_build_model(opt)


def bench_pipeline(device: torch.device, batch: int, size: int, queue: int, iters: int, warmup: int, workers: int,
                   weather_prob: float, fused: bool, ema: float, seed: int, sample_dir: Path, workdir: Path,
                   profile: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    from constyle_plugin.data.datasets import ConStylePretrainDataset

    out: Dict[str, Any] = {}
    resize = int(round(size * 256 / 224))
    for variant in ("reference", "fast"):
        torch.manual_seed(seed)
        ds = ConStylePretrainDataset({"dataroot": "sample_classes", "sample_dir": str(sample_dir),
                                      "crops_per_photo": 2, "sample_crop_size": max(resize, 64), "resize": resize,
                                      "crop_size": size, "weather_prob": weather_prob,
                                      "degradation": variant == "fast", "repeat": 1000})
        num_classes = max(ds.num_classes, 2)
        model = build_model(device, queue, num_classes, variant, variant == "fast", fused, ema, workdir)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed))
        it = iter(loader)
        wall, wait, spans = [], [], []
        timer = GpuTimer(device)
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            data = next(it)
            t1 = time.perf_counter()
            with timer() if i >= warmup else contextlib.nullcontext():
                model.feed_data(data)
                model.optimize_parameters(i + 1)
            sync(device)
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                wait.append(t1 - t0)
        res: Dict[str, Any] = {"iteration_s": spread(wall), "data_wait_s": spread(wait),
                               "hours_for_total_iters": None}
        spans = timer.seconds()
        if spans:
            res["device_span_s"] = spread(spans)
            res["device_span_fraction"] = sum(spans) / sum(wall)
        if profile and device.type == "cuda":
            res["profile"] = profile_iterations(model, it, device, 3)
        out[variant] = res
        log(f"  pipeline {variant}: {statistics.median(wall) * 1000:.1f} ms per iteration "
            f"(data wait {statistics.median(wait) * 1000:.1f} ms)")
        del it, loader, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def profile_iterations(model, it, device: torch.device, n: int) -> Dict[str, Any]:
    """Summed CUDA kernel time of ``n`` iterations over their wall time (torch.profiler)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        batches = [next(it) for _ in range(n)]
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for data in batches:
                model.feed_data(data)
                model.optimize_parameters(10)
            sync(device)
            wall = time.perf_counter() - t0
        busy_us = 0.0
        for evt in prof.events():
            if getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA:
                busy_us += evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
        return {"iterations": n, "wall_s": wall, "kernel_busy_s": busy_us / 1e6,
                "kernel_busy_fraction": busy_us / 1e6 / wall}
    except Exception as exc:  # the measurement must not lose the rest of the report
        return {"error": f"{type(exc).__name__}: {exc}"}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def _ms(s: Optional[float]) -> str:
    return "-" if s is None else f"{s * 1000:.1f}"


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    st = report["settings"]
    dev = report["device"]
    lines = [f"# Stage 1 iteration time ({dev.upper()})", "",
             f"- command: `{report['command']}`",
             f"- device: {dev} ({report['device_name']}), torch {report['torch']}, {report['torch_threads']} "
             f"torch thread(s), {report['cpu_count']} CPUs, load average {report['load_average_start']} -> "
             f"{report['load_average_end']}; {report['date']}",
             f"- batch {st['batch']}, {st['size']} x {st['size']} px, queue {st['queue']}, {st['iters']} timed "
             f"iterations after {st['warmup']} warm-up, DataLoader workers {st['workers']}"
             + (" (SMOKE: numbers mean nothing)" if st["smoke"] else ""), ""]
    if dev == "cpu":
        lines += ["These are **CPU** numbers: they show the relative cost of the parts and what the fast "
                  "degradation saves on a CPU; the GPU's numbers (the issue's targets) need a GPU run.", ""]
    nets = report.get("networks")
    if nets:
        lines += ["## Networks alone (ConStyleMoCo step: five losses, AdamW)", "",
                  "Variants timed in turn (interleaved), each step synchronised; 'back to back': the mean over "
                  "steps issued without a sync between them.", "",
                  "| variant | ms per step (median) | vs baseline | back to back | GPU ms | GPU busy |",
                  "|---|---|---|---|---|---|"]
        for name, r in nets.items():
            if "error" in r:
                lines.append(f"| {name} | {r['error']} | | | | |")
                continue
            gpu = r.get("gpu_s", {}).get("median")
            busy = r.get("gpu_busy_fraction")
            lines.append(f"| {name} | {_ms(r['wall_s']['median'])} | {r['vs_baseline']:.3f} | "
                         f"{_ms(r['back_to_back_s'])} | {_ms(gpu)} | "
                         f"{'-' if busy is None else f'{busy:.0%}'} |")
        lines.append("")
    deg = report.get("degradation")
    if deg:
        lines += ["## Real-ESRGAN degradation of one batch", "",
                  "| path | ms per batch (median) | host issue ms | GPU ms |", "|---|---|---|---|"]
        for name in ("reference", "fast"):
            r = deg[name]
            lines.append(f"| {name}: parameters {r['params']} | {_ms(r['wall_s']['median'])} | "
                         f"{_ms(r['host_issue_s']['median'])} | {_ms(r.get('gpu_s', {}).get('median'))} |")
        lines += [f"| parameter drawing on the host, per batch (the workers' share) | "
                  f"{_ms(deg['params_host_s']['median'])} | - | - |", "",
                  f"fast / reference: {deg['speedup_fast_vs_reference']:.2f}x faster per batch.", ""]
    pipe = report.get("pipeline")
    if pipe:
        total = st["total_iters"]
        lines += [f"## Whole iterations (BasicSR ConStyleV2PretrainModel + DataLoader), extrapolated to "
                  f"{total:,} iterations", "",
                  "| variant | ms per iteration (median / mean) | data wait ms | hours | device span |",
                  "|---|---|---|---|---|"]
        for name, r in pipe.items():
            span = r.get("device_span_fraction")
            lines.append(f"| {name} | {_ms(r['iteration_s']['median'])} / {_ms(r['iteration_s']['mean'])} | "
                         f"{_ms(r['data_wait_s']['median'])} | {r['hours_for_total_iters']:.1f} | "
                         f"{'-' if span is None else f'{span:.0%}'} |")
        if "busy_estimate" in report:
            lines += ["", f"GPU busy estimate (networks' GPU time + fast degradation's, scaled by the "
                          f"non-weather share, / the fast iteration): {report['busy_estimate']:.0%}"]
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    path.write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32, the authors'; 2 with --smoke)")
    parser.add_argument("--size", type=int, default=None, help="crop size (default 224; 32 with --smoke)")
    parser.add_argument("--queue", type=int, default=None,
                        help="negatives in the queue, a multiple of the batch (default 65760; 16 with --smoke)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the pipeline (default: min(12, CPUs - 1) on CUDA, 0 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 with --smoke)")
    parser.add_argument("--channels-last", action="store_true", help="also time the networks in channels_last")
    parser.add_argument("--fused-adamw", action="store_true", help="also time the networks with AdamW(fused=True)")
    parser.add_argument("--no-host-checks", action="store_true",
                        help="also time the networks without the input checks that read back to the host (the "
                             "prompter's NaN/Inf check, the pretext loss's label range check)")
    parser.add_argument("--weather-prob", type=float, default=0.4)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the pipeline's model (0: none)")
    parser.add_argument("--total-iters", type=int, default=AUTHORS["total_iters"])
    parser.add_argument("--parts", nargs="+", choices=("networks", "degradation", "pipeline"),
                        default=["networks", "degradation", "pipeline"])
    parser.add_argument("--profile", action="store_true",
                        help="CUDA: kernel busy time of 3 iterations (torch.profiler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI; numbers mean nothing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    smoke = args.smoke
    batch = args.batch if args.batch is not None else (2 if smoke else AUTHORS["batch"])
    size = args.size if args.size is not None else (32 if smoke else AUTHORS["size"])
    queue = args.queue if args.queue is not None else (16 if smoke else AUTHORS["queue"])
    iters = args.iters if args.iters is not None else (1 if smoke else 20)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (
        min(12, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" and not smoke else 0)
    for name, value, low in (("--batch", batch, 2), ("--size", size, 16), ("--iters", iters, 1),
                             ("--warmup", warmup, 0), ("--workers", workers, 0),
                             ("--total-iters", args.total_iters, 1)):
        if value < low:
            raise SystemExit(f"{name}: must be >= {low} (got {value})")
    if queue % batch:
        raise SystemExit(f"--queue {queue} is not a multiple of --batch {batch} (ConStyleMoCo needs it)")
    if not 0.0 <= args.weather_prob <= 1.0:
        raise SystemExit(f"--weather-prob: must be in [0, 1] (got {args.weather_prob})")
    threads = args.threads if args.threads is not None else (1 if smoke else None)
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads: must be >= 1 (got {threads})")
        torch.set_num_threads(threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.time()
    report: Dict[str, Any] = {
        **report_header("stage1.py", argv, device),
        "settings": {"batch": batch, "size": size, "queue": queue, "iters": iters, "warmup": warmup,
                     "workers": workers, "weather_prob": args.weather_prob, "ema": args.ema,
                     "total_iters": args.total_iters, "channels_last": args.channels_last,
                     "fused_adamw": args.fused_adamw, "no_host_checks": args.no_host_checks, "parts": args.parts, "seed": args.seed, "smoke": smoke,
                     "optimizer": "AdamW(lr=3e-4, weight_decay=1e-4, betas=(0.9, 0.999))",
                     "losses": "infonce, content, style, class, kl (all on)"},
        "notes": [],
    }
    log(f"stage-1 benchmark on {device} ({report['device_name']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {batch}, {size} px, queue {queue}")
    num_classes = 1000
    if "networks" in args.parts:
        variants = [("baseline", False, False, True)]
        if args.channels_last:
            variants.append(("channels_last", True, False, True))
        if args.fused_adamw:
            variants.append(("fused_adamw", False, True, True))
        if args.channels_last and args.fused_adamw:
            variants.append(("channels_last+fused_adamw", True, True, True))
        if args.no_host_checks:
            variants.append(("no_host_checks", False, False, False))
            if args.channels_last and args.fused_adamw:
                variants.append(("channels_last+fused_adamw+no_host_checks", True, True, False))
        report["networks"] = bench_networks(device, batch, size, queue, iters, warmup, variants, num_classes,
                                            args.seed, log)
    if "degradation" in args.parts:
        report["degradation"] = bench_degradation(device, batch, size, iters, warmup, args.seed)
        d = report["degradation"]
        log(f"  degradation: reference {d['reference']['wall_s']['median'] * 1000:.1f} ms, fast "
            f"{d['fast']['wall_s']['median'] * 1000:.1f} ms per batch; drawing the parameters "
            f"{d['params_host_s']['median'] * 1000:.1f} ms per batch on the host")
    if "pipeline" in args.parts:
        with tempfile.TemporaryDirectory(prefix="stage1_bench_") as tmp:
            tmp_path = Path(tmp)
            for sub in ("models", "states"):
                (tmp_path / sub).mkdir()
            report["pipeline"] = bench_pipeline(device, batch, size, queue, iters, warmup, workers,
                                                args.weather_prob, args.fused_adamw, args.ema, args.seed,
                                                tmp_path / "samples", tmp_path, args.profile, log)
        for res in report["pipeline"].values():
            res["hours_for_total_iters"] = res["iteration_s"]["median"] * args.total_iters / 3600
        nets = report.get("networks", {}).get("baseline", {})
        deg = report.get("degradation", {}).get("fast", {})
        if device.type == "cuda" and "gpu_s" in nets and "gpu_s" in deg:
            report["busy_estimate"] = ((nets["gpu_s"]["median"] + deg["gpu_s"]["median"] * (1 - args.weather_prob))
                                       / report["pipeline"]["fast"]["iteration_s"]["median"])
        report["notes"].append("The pipeline's iterations include BasicSR's per-iteration host work (loss logging "
                               "reads each loss back, the EMA update) and the wait for data; 'data wait' is the "
                               "time next(loader) took.")
    if device.type == "cpu":
        report["notes"].append("CPU numbers: the relative cost of the parts on this CPU, not the GPU's; the issue's "
                               "targets are for a GPU (see the README for what a GPU run must record).")
    path = finish_report(report, started, args.out, f"stage1_{device.type}", write_markdown)
    log(f"wrote {path}.json, .md ({report['wall_time_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
