#!/usr/bin/env python
"""What the ConStyle v2 prompter costs: speed and memory of a U-Net, bare versus wrapped.

For each reference U-Net (``constyle_plugin.archs``: NAFNet, Restormer, ConvUNet, MAXIM-1S) and each input
size, one process builds the bare backbone and ``wrap_unet(copy_of_it, prompter=ConStyleV2())`` (same
weights, default injection: encoder + bottleneck) and measures, interleaved (bare, wrapped, then
wrapped, bare, ... so that a change of machine load hits both alike):

* **forward**: inference, ``eval()`` and ``torch.no_grad()``;
* **train step**: ``zero_grad`` + forward + L1 loss + backward + AdamW step (lr 3e-4, wd 1e-4;
  the wrapper's optimiser gets the trainable parameters only: backbone + adapters);
* **peak memory** of each, in an untimed pass (see ``MEMORY_METHODS``);
* **parameters and MACs** of the backbone, the prompter (query encoder without the classifier, which
  never runs in stage 2) and the adapters. MACs = FLOPs / 2 from ``torch.utils.flop_counter``
  (convolutions, matmuls, linears; element-wise ops are not counted), counted on the ``meta`` device
  so they cost nothing, for the forward pass and for forward + backward.

The headline numbers are the ratios wrapped / bare: the median over repeats of the per-pair ratio
(each pair = one bare and one wrapped run, back to back), with min / max and the quartiles. Targets:
train step <= 1.05x and inference <= 1.10x the bare backbone, on NAFNet width 32.

Outputs in ``--out``: ``overhead_<device>.json`` (command, versions, device, load average, every
sample), ``overhead_<device>.md`` (tables) and ``overhead_<device>.png`` (bar chart of the ratios).
``--prompt-size full 512 256 128`` measures the wrapped net once per prompt size (the longer side of the
image copy the prompter sees, ``wrap_unet(..., prompt_size=N)``), each against the bare backbone in its own
interleaved pairs; such a run writes ``overhead_<device>_prompt_size.*`` instead (``..._forward.*`` or
``..._train.*`` with ``--modes forward`` or ``--modes train`` alone).

``--smoke`` runs in seconds (tiny widths, 32 px, one repeat) for CI; its numbers mean nothing.

Example (the CPU run recorded in benchmarks/results)::

    python benchmarks/overhead.py --device cpu --batch 1 --repeats 3 --preset restormer=reduced

and the prompt-size curves of NAFNet-width32 (inference at 512 px, training steps at 256 px)::

    python benchmarks/overhead.py --device cpu --batch 1 --repeats 8 --threads 1 --archs nafnet --sizes 512 \
        --prompt-size full 512 256 128 --modes forward
    python benchmarks/overhead.py --device cpu --batch 1 --repeats 3 --threads 1 --archs nafnet --sizes 256 \
        --prompt-size full 128 --modes train
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet the profiler's start/stop chatter on stderr

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402
from _host import load_average, report_header, resolve_device  # noqa: E402  (benchmarks/_host.py)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from constyle_plugin import ConStyleV2, wrap_unet  # noqa: E402
from constyle_plugin.core.promptmaps import parse_prompt_size  # noqa: E402
from constyle_plugin.archs import MAXIM, ConvUNet, NAFNet, Restormer  # noqa: E402
from constyle_plugin.core.unet import DEFAULT_INJECT, INJECT_TARGETS  # noqa: E402

ARCHS: Dict[str, Callable[..., nn.Module]] = {"nafnet": NAFNet, "restormer": Restormer, "convunet": ConvUNet,
                                              "maxim": MAXIM}

# Keyword arguments per architecture and preset. "full" is each class's default configuration.
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "nafnet": {
        "full": {},  # NAFNet-width32 (GoPro config): width 32, enc (1, 1, 1, 28), middle 1, dec (1, 1, 1, 1)
        "light": {"width": 32, "enc_blk_nums": (1, 1, 1, 1), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)},
        "smoke": {"width": 8, "enc_blk_nums": (1, 1, 1, 1), "middle_blk_num": 1, "dec_blk_nums": (1, 1, 1, 1)},
    },
    "restormer": {
        "full": {},  # dim 48, blocks (4, 6, 6, 8), 4 refinement blocks, heads (1, 2, 4, 8)
        "reduced": {"dim": 24, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1},
        "smoke": {"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1},
    },
    "convunet": {
        "full": {},  # width 32, depth 4, 2 convs per level
        "smoke": {"width": 8},
    },
    "maxim": {
        "full": {},  # MAXIM-1S: width 32, depth 3, 2 groups, 2 bottleneck blocks, blocks / grids 16 and 8
        "smoke": {"width": 4, "num_groups": 1, "num_bottleneck_blocks": 1, "block_size_hr": 4, "grid_size_hr": 4,
                  "block_size_lr": 2, "grid_size_lr": 2},
    },
}

TARGETS = {"arch": "nafnet", "train_step": 1.05, "forward": 1.10}
SPEC_PROMPTER_MACS_128 = 0.35e9  # SPEC section 5: "about 0.35 GMACs at 128 x 128"
SPEC_PROMPTER_PARAMS = 1.19e6  # SPEC section 5: query encoder without classifier
MODES = ("forward", "train")
VARIANTS = ("bare", "wrapped")
MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus what was allocated "
            "before the call, plus this model's own resident tensors (parameters, buffers, optimiser state "
            "in train mode, input and target). Counts the caching allocator's tensors, not its reserve.",
    "cpu": "torch.profiler (profile_memory=True): running sum of the CPU allocator's alloc/free events during "
           "one call, its maximum, plus this model's own resident tensors (parameters, buffers, optimiser "
           "state in train mode, input and target); the CPU analogue of max_memory_allocated. Sees only "
           "tensors allocated through torch's CPU allocator: oneDNN/MKL scratch buffers, Python objects and "
           "allocator fragmentation are not counted, and it is not the process RSS (tracemalloc sees none "
           "of it; an RSS delta would mostly show glibc's reuse of freed pages).",
}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def parse_presets(items: Sequence[str]) -> Dict[str, str]:
    chosen = {arch: "full" for arch in ARCHS}
    for item in items:
        arch, sep, preset = item.partition("=")
        if not sep or arch not in PRESETS:
            raise SystemExit(f"--preset {item!r}: expected ARCH=PRESET with ARCH in {sorted(PRESETS)}")
        if preset not in PRESETS[arch]:
            raise SystemExit(f"--preset {item!r}: {arch} presets are {sorted(PRESETS[arch])}")
        chosen[arch] = preset
    return chosen


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(tensor_bytes(state.values()) for state in opt.state.values())


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, min, max and quartiles (statistics.quantiles, 'inclusive') of a sample."""
    vals = sorted(values)
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1 = q3 = vals[0]
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "q25": q1, "q75": q3, "n": len(vals)}


# ------------------------------------------------------------------------------------------------
# One (architecture, size) case
# ------------------------------------------------------------------------------------------------
class Case:
    """A bare backbone and its wrapped twin (same weights), their optimisers and a fixed batch."""

    def __init__(self, arch: str, preset: str, size: int, batch: int, device: torch.device,
                 inject: Sequence[str], seed: int, prompt_size: Optional[int] = None, clock: str = "wall") -> None:
        torch.manual_seed(seed)
        self.clock = clock
        self.arch, self.preset, self.size, self.batch, self.device = arch, preset, size, batch, device
        self.prompt_size = prompt_size
        self.config = PRESETS[arch][preset]
        bare = ARCHS[arch](**self.config).to(device)
        prompter = ConStyleV2().freeze()  # random weights: the cost does not depend on them
        wrapped = wrap_unet(copy.deepcopy(bare), prompter=prompter, inject=tuple(inject), prompt_size=prompt_size)
        self.models: Dict[str, nn.Module] = {"bare": bare, "wrapped": wrapped}
        self.opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-4,
                                          weight_decay=1e-4) for k, m in self.models.items()}
        gen = torch.Generator().manual_seed(seed + 1)
        self.x = torch.rand(batch, 3, size, size, generator=gen).to(device)
        self.target = torch.rand(batch, 3, size, size, generator=gen).to(device)
        # One step on a small batch creates the AdamW state, so that the measured steps (memory
        # included) are steady-state steps, not the first one.
        small = torch.rand(1, 3, 32, 32, generator=gen).to(device)
        for k in VARIANTS:
            self._train_step(k, small, small)

    def _train_step(self, k: str, x: torch.Tensor, target: torch.Tensor) -> None:
        model, opt = self.models[k], self.opts[k]
        opt.zero_grad(set_to_none=True)
        loss = F.l1_loss(model(x), target)
        loss.backward()
        opt.step()

    def _forward(self, k: str) -> None:
        with torch.no_grad():
            self.models[k](self.x)

    def call(self, mode: str, k: str) -> Callable[[], None]:
        """Put the model in the mode's state and return the (untimed-setup-free) call to run."""
        model = self.models[k]
        if mode == "forward":
            model.eval()
            return lambda: self._forward(k)
        model.train()
        return lambda: self._train_step(k, self.x, self.target)

    def time_once(self, mode: str, k: str) -> float:
        fn = self.call(mode, k)
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        now = time.thread_time if self.clock == "cpu" else time.perf_counter
        t0 = now()
        fn()
        return now() - t0

    def resident_bytes(self, mode: str, k: str) -> int:
        model = self.models[k]
        own = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers()) + tensor_bytes([self.x])
        if mode == "train":
            own += optimizer_state_bytes(self.opts[k]) + tensor_bytes([self.target])
        return own

    def peak_memory(self, mode: str, k: str) -> Dict[str, Optional[int]]:
        """Peak bytes of one call (also serves as a warm-up call; untimed)."""
        fn = self.call(mode, k)
        resident = self.resident_bytes(mode, k)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            transient = torch.cuda.max_memory_allocated(self.device) - base
        else:
            transient = cpu_peak_transient(fn)
        return {"resident": resident, "transient": transient,
                "peak": None if transient is None else resident + transient}


def cpu_peak_transient(fn: Callable[[], None]) -> Optional[int]:
    """Maximum of the running sum of CPU allocator events during ``fn()`` (bytes), or None."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a torch without this (semi-private) accessor: no CPU memory figure
        return None
    deltas = [(e.start_ns(), e.nbytes()) for e in events
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    deltas.sort(key=lambda d: d[0])
    running = peak = 0
    for _, nbytes in deltas:
        running += nbytes
        peak = max(peak, running)
    return peak


# ------------------------------------------------------------------------------------------------
# Parameters and MACs (meta device: no compute)
# ------------------------------------------------------------------------------------------------
def count_params(params) -> int:
    return sum(p.numel() for p in params)


def prompter_params(prompter: nn.Module) -> int:
    return count_params(p for n, p in prompter.named_parameters() if not n.startswith("classifier."))


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient (input, weight) costs one forward.

    Replaces torch's formula, which counts the weight gradient of a grouped (depthwise) convolution as
    if it were dense, ``groups`` times too many: 17x the forward for Restormer's depthwise convs.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def macs_of(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor]) -> Tuple[int, Dict[str, int]]:
    """(total MACs, MACs per module name) of a forward (target None, no_grad) or forward + backward."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if target is None:
            with torch.no_grad():
                model(x)
        else:
            F.l1_loss(model(x), target).backward()
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, per_module


def count_macs(case: Case) -> Dict[str, Any]:
    bare = copy.deepcopy(case.models["bare"]).to("meta")
    wrapped = copy.deepcopy(case.models["wrapped"]).to("meta")
    wrapped.prompter.check_finite = False  # a meta tensor has no values to check
    x = torch.empty(case.x.shape, device="meta")
    root = type(wrapped).__name__
    out: Dict[str, Any] = {}
    for mode in MODES:
        bare.train(mode == "train")
        wrapped.train(mode == "train")
        target = None if mode == "forward" else torch.empty(case.x.shape, device="meta")
        b_total, _ = macs_of(bare, x, target)
        w_total, per = macs_of(wrapped, x, target)
        adapters = sum(v for name, v in per.items()
                       if name.startswith(f"{root}.injections.") and name.count(".") == 2)
        out[mode] = {"bare": b_total, "wrapped": w_total, "prompter": per.get(f"{root}.prompter", 0),
                     "adapters": adapters, "ratio": w_total / b_total if b_total else None}
    return out


def prompter_sanity(device_free_size: int = 128) -> Dict[str, Any]:
    prompter = ConStyleV2().freeze().to("meta")
    prompter.check_finite = False
    macs, _ = macs_of(prompter, torch.empty(1, 3, device_free_size, device_free_size, device="meta"), None)
    params = prompter_params(prompter)
    return {"size": device_free_size, "batch": 1, "macs": macs, "spec_macs": SPEC_PROMPTER_MACS_128,
            "macs_relative_to_spec": macs / SPEC_PROMPTER_MACS_128,
            "params_without_classifier": params, "spec_params": SPEC_PROMPTER_PARAMS,
            "params_total": count_params(prompter.parameters())}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def run_case(case: Case, repeats: int, warmup: int, log: Callable[[str], None],
             modes: Sequence[str] = MODES) -> Dict[str, Any]:
    wrapped = case.models["wrapped"]
    result: Dict[str, Any] = {
        "arch": case.arch, "preset": case.preset, "config": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in case.config.items()},
        "size": case.size, "batch": case.batch, "prompt_size": case.prompt_size,
        "stages": repr(wrapped.stages),
        "params": {"bare": count_params(case.models["bare"].parameters()),
                   "adapters": count_params(wrapped.prompt_parameters()),
                   "prompter_without_classifier": prompter_params(wrapped.prompter),
                   "prompter_total": count_params(wrapped.prompter.parameters())},
        "macs": count_macs(case),
    }
    # Warm-up: the first full-size call of each (mode, variant) is the memory measurement.
    memory: Dict[str, Dict[str, Any]] = {m: {} for m in modes}
    for mode in modes:
        for k in VARIANTS:
            memory[mode][k] = case.peak_memory(mode, k)
    for _ in range(warmup - 1):
        for mode in modes:
            for k in VARIANTS:
                case.call(mode, k)()
    for mode in modes:
        b, w = memory[mode]["bare"]["peak"], memory[mode]["wrapped"]["peak"]
        memory[mode]["ratio"] = w / b if b and w else None
    result["memory"] = memory
    times: Dict[str, Dict[str, List[float]]] = {m: {k: [] for k in VARIANTS} for m in modes}
    for r in range(repeats):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for mode in modes:
            for k in order:
                times[mode][k].append(case.time_once(mode, k))
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(
            f"{mode} {times[mode]['bare'][-1]:.3f}s / {times[mode]['wrapped'][-1]:.3f}s" for mode in modes))
    for mode in modes:
        ratios = [w / b for b, w in zip(times[mode]["bare"], times[mode]["wrapped"])]
        result[mode] = {"bare_s": times[mode]["bare"], "wrapped_s": times[mode]["wrapped"],
                        "bare": spread(times[mode]["bare"]), "wrapped": spread(times[mode]["wrapped"]),
                        "ratios": ratios, "ratio": spread(ratios)}
    return result


def check_targets(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    verdicts = []
    for res in results:
        if res["arch"] != TARGETS["arch"] or not all(mode in res for mode in MODES):
            continue
        fwd, train = res["forward"]["ratio"]["median"], res["train"]["ratio"]["median"]
        verdicts.append({
            "arch": res["arch"], "preset": res["preset"], "size": res["size"],
            "width32_reference_config": res["preset"] == "full",
            "forward_ratio": fwd, "forward_target": TARGETS["forward"], "forward_met": fwd <= TARGETS["forward"],
            "train_ratio": train, "train_target": TARGETS["train_step"],
            "train_met": train <= TARGETS["train_step"],
            "mac_forward_ratio": res["macs"]["forward"]["ratio"], "mac_train_ratio": res["macs"]["train"]["ratio"],
        })
    return verdicts


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _mib(nbytes: Optional[int]) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:.1f}"


def _ratio(s: Optional[Dict[str, float]]) -> str:
    return "not run" if s is None else f"**{s['median']:.3f}** [{s['min']:.3f}-{s['max']:.3f}]"


def _median_ms(res: Dict[str, Any], mode: str, k: str) -> str:
    return _ms(res[mode][k]["median"]) if mode in res else "-"


def _label(res: Dict[str, Any]) -> str:
    preset = "" if res["preset"] == "full" else f" ({res['preset']})"
    prompt = "" if res.get("prompt_size") is None else f", prompt {res['prompt_size']} px"
    return f"{res['arch']}{preset}{prompt}"


def write_markdown(path: Path, report: Dict[str, Any]) -> None:
    lines = [f"# Prompter overhead: {report['device']} ({report['device_name']})", "",
             "Command:", "", "```", report["command"], "```", "",
             f"{report['date']}; torch {report['torch']}; {report['torch_threads']} torch threads on "
             f"{report['cpu_count']} CPUs; load average (1/5/15 min) {report['load_average_start']} at start, "
             f"{report['load_average_end']} at end; wall time {report['wall_time_s']:.0f} s; "
             f"batch {report['settings']['batch']}, {report['settings']['repeats']} timed repeats after "
             f"{report['settings']['warmup']} warm-up; inject {'+'.join(report['settings']['inject'])}.", "",
             ("Times are CPU time of the measuring thread (time.thread_time, one torch thread), which leaves "
              "out the time spent waiting for a core on the shared machine. "
              if report["settings"].get("clock") == "cpu" else "")
             + "Ratios are wrapped / bare: median of the per-pair ratios over the repeats, [min-max]. "
             "Times are medians in ms. MAC ratios are the device-independent count (convolutions and "
             "matmuls only).", "",
             "## Time", "",
             "| backbone | size | forward bare | forward wrapped | forward ratio | train bare | train wrapped "
             "| train ratio | MAC ratio fwd | MAC ratio train |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in report["results"]:
        f, t = res.get("forward", {}), res.get("train", {})
        lines.append(f"| {_label(res)} | {res['size']} | {_median_ms(res, 'forward', 'bare')} "
                     f"| {_median_ms(res, 'forward', 'wrapped')} | {_ratio(f.get('ratio'))} "
                     f"| {_median_ms(res, 'train', 'bare')} | {_median_ms(res, 'train', 'wrapped')} "
                     f"| {_ratio(t.get('ratio'))} | {res['macs']['forward']['ratio']:.3f} "
                     f"| {res['macs']['train']['ratio']:.3f} |")
    lines += ["", "## Targets (NAFNet width 32: train step <= 1.05x, inference <= 1.10x)", ""]
    if not report["targets"]:
        lines.append("NAFNet was not part of this run, or not in both modes.")
    for v in report["targets"]:
        ref = "" if v["width32_reference_config"] else f" (preset {v['preset']}, not the reference config)"
        mac_f, mac_t = v["mac_forward_ratio"], v["mac_train_ratio"]
        lines.append(f"- {v['size']} px{ref}: inference {v['forward_ratio']:.3f}x -> "
                     f"{'met' if v['forward_met'] else 'NOT met'}; train step {v['train_ratio']:.3f}x -> "
                     f"{'met' if v['train_met'] else 'NOT met'}. If time followed the multiply-add count "
                     f"(as on a compute-bound device): inference {mac_f:.3f}x ({'within' if mac_f <= v['forward_target'] else 'above'}"
                     f" target), train step {mac_t:.3f}x ({'within' if mac_t <= v['train_target'] else 'above'} target).")
    lines += ["", "## Peak memory (MiB)", "", f"Method: {report['memory_method']}", "",
              "| backbone | size | forward bare | forward wrapped | ratio | train bare | train wrapped | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    missing = {"ratio": None, "bare": {"peak": None}, "wrapped": {"peak": None}}
    for res in report["results"]:
        mf, mt = res["memory"].get("forward", missing), res["memory"].get("train", missing)
        fr = "n/a" if mf["ratio"] is None else f"{mf['ratio']:.3f}"
        tr = "n/a" if mt["ratio"] is None else f"{mt['ratio']:.3f}"
        lines.append(f"| {_label(res)} | {res['size']} | {_mib(mf['bare']['peak'])} | {_mib(mf['wrapped']['peak'])} "
                     f"| {fr} | {_mib(mt['bare']['peak'])} | {_mib(mt['wrapped']['peak'])} | {tr} |")
    lines += ["", "## Parameters and MACs (per batch of the size above; G = 1e9)", "",
              "| backbone | size | params bare | params adapters | params prompter | GMACs fwd bare "
              "| GMACs fwd prompter | GMACs fwd adapters | GMACs train bare | GMACs train wrapped |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in report["results"]:
        p, m = res["params"], res["macs"]
        lines.append(f"| {_label(res)} | {res['size']} | {p['bare'] / 1e6:.3f} M | {p['adapters'] / 1e6:.3f} M "
                     f"| {p['prompter_without_classifier'] / 1e6:.3f} M | {m['forward']['bare'] / 1e9:.2f} "
                     f"| {m['forward']['prompter'] / 1e9:.3f} | {m['forward']['adapters'] / 1e9:.3f} "
                     f"| {m['train']['bare'] / 1e9:.2f} | {m['train']['wrapped'] / 1e9:.2f} |")
    s = report["prompter_check"]
    lines += ["", f"Prompter sanity check at {s['size']} x {s['size']}, batch 1: {s['macs'] / 1e9:.4f} GMACs "
              f"({s['macs_relative_to_spec']:.3f}x SPEC's 'about 0.35 GMACs'); "
              f"{s['params_without_classifier'] / 1e6:.3f} M parameters without the classifier "
              f"(SPEC: 1.19 M), {s['params_total'] / 1e6:.3f} M with it.", ""]
    for arch in dict.fromkeys(r["arch"] for r in report["results"]):
        res = next(r for r in report["results"] if r["arch"] == arch)
        lines.append(f"- {_label(res)}: config {res['config'] or 'class defaults'}; hook points {res['stages']}")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, report: Dict[str, Any]) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"no plot: matplotlib is not importable ({err})"
    results = report["results"]
    labels = [f"{_label(r)}\n{r['size']} px" for r in results]
    nan = {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    series = [("forward (time)", lambda r: r["forward"]["ratio"] if "forward" in r else nan),
              ("train step (time)", lambda r: r["train"]["ratio"] if "train" in r else nan)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(results) + 2), 4.2))
    width = 0.2
    xs = range(len(results))
    for i, (name, get) in enumerate(series):
        med = [get(r)["median"] for r in results]
        lo = [get(r)["median"] - get(r)["min"] for r in results]
        hi = [get(r)["max"] - get(r)["median"] for r in results]
        ax.bar([x + (i - 1.5) * width for x in xs], med, width, yerr=[lo, hi], capsize=3, label=name)
    for i, mode in enumerate(MODES):
        ax.bar([x + (i + 0.5) * width for x in xs], [r["macs"][mode]["ratio"] for r in results], width,
               alpha=0.45, hatch="//", label=f"{'forward' if mode == 'forward' else 'train step'} (MACs)")
    ax.axhline(1.10, color="tab:blue", ls="--", lw=1, label="inference target 1.10 (NAFNet)")
    ax.axhline(1.05, color="tab:orange", ls="--", lw=1, label="train target 1.05 (NAFNet)")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("wrapped / bare")
    lows = [min(r[m]["ratio"]["min"] for m in MODES if m in r) for r in results]
    ax.set_ylim(min(0.9, min(lows) - 0.02), None)
    ax.set_title(f"ConStyle v2 prompter overhead, {report['device']} ({report['device_name']}), "
                 f"batch {report['settings']['batch']}\nmedian over {report['settings']['repeats']} paired repeats, "
                 "error bars min-max", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 4; 1 with --smoke)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="square input sizes (default 256 512)")
    parser.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=None,
                        help="backbones (default: nafnet restormer convunet maxim)")
    parser.add_argument("--preset", nargs="*", default=[], metavar="ARCH=PRESET",
                        help="configuration per backbone; presets: "
                             + "; ".join(f"{a}: {', '.join(p)}" for a, p in PRESETS.items())
                             + " (default full = the class defaults)")
    parser.add_argument("--inject", nargs="+", choices=INJECT_TARGETS, default=list(DEFAULT_INJECT))
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per mode (default 5; 1 with --smoke)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per mode and variant before timing (>= 1; the first one measures memory)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's; 1 with --smoke). On a CPU shared with other "
                             "processes, 1 avoids oversubscription (there, 2 threads ran 5-10x slower than 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu (CPU device, --threads 1): the measuring thread's CPU time "
                             "(time.thread_time), which leaves out the time spent waiting for a core on a shared "
                             "machine")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's notes (e.g. what else ran on the machine); repeatable")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="what to time: forward (inference) and / or train (one training step); default both")
    parser.add_argument("--prompt-size", dest="prompt_sizes", nargs="+", default=[None], metavar="full|PIXELS",
                        type=parse_prompt_size,
                        help="prompt sizes of the wrapped net, each measured against the bare one (default: full)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long CI run: tiny widths, 32 px, one repeat (numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="measure nothing: rewrite the markdown table and the plot of a recorded "
                             "overhead_<device>.json into --out")
    return parser


def render(path: Path, out: Path) -> Dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"--render {path}: cannot read the recorded report ({err})")
    if not isinstance(report, dict) or "results" not in report or "device" not in report:
        raise SystemExit(f"--render {path}: not an overhead_<device>.json report")
    out.mkdir(parents=True, exist_ok=True)
    stem = report.get("stem", f"overhead_{report['device']}")
    plot_note = write_plot(out / f"{stem}.png", report)
    if plot_note:
        print(plot_note, flush=True)
    write_markdown(out / f"{stem}.md", report)
    print(f"wrote {out / stem}.md{'' if plot_note else ', .png'} from {path}", flush=True)
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)
    presets = parse_presets(args.preset)
    if args.smoke:
        presets = {arch: "smoke" for arch in ARCHS}
    batch = args.batch if args.batch is not None else (1 if args.smoke else 4)
    sizes = args.sizes or ([32] if args.smoke else [256, 512])
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 5)
    archs = args.archs or list(ARCHS)
    for name, value, low in (("--batch", batch, 1), ("--repeats", repeats, 1), ("--warmup", args.warmup, 1)):
        if value < low:
            raise SystemExit(f"{name}: must be >= {low} (got {value})")
    bad = [s for s in sizes if s < 16]
    if bad:
        raise SystemExit(f"--sizes: each size must be >= 16 pixels (got {bad})")
    prompt_sizes = list(args.prompt_sizes)
    threads = args.threads if args.threads is not None else (1 if args.smoke else None)
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads: must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    device = resolve_device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or threads != 1):
        raise SystemExit("--clock cpu: measures one thread's CPU time; use it with --device cpu --threads 1")

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.time()
    report: Dict[str, Any] = {
        **report_header("overhead.py", argv, device),
        "settings": {"batch": batch, "sizes": sizes, "archs": archs, "presets": {a: presets[a] for a in archs},
                     "inject": list(args.inject), "prompt_sizes": prompt_sizes, "modes": list(args.modes),
                     "clock": args.clock, "repeats": repeats, "warmup": args.warmup, "seed": args.seed,
                     "smoke": args.smoke, "optimizer": "AdamW(lr=3e-4, weight_decay=1e-4)", "loss": "L1"},
        "memory_method": MEMORY_METHODS[device.type],
        "prompter_weights": "random, frozen (eval mode); the cost does not depend on the weights",
        "prompter_check": prompter_sanity(),
        "results": [],
        "notes": list(args.note),
    }
    if device.type == "cpu":
        report["notes"].append("CPU timings: the prompter's dense 3x3 convolutions run efficiently on CPU while "
                               "the backbones' depthwise convolutions and element-wise ops are memory-bound, so "
                               "the relative cost on a GPU can differ; the MAC ratios are the device-independent "
                               "reference.")
    log(f"overhead benchmark on {device} ({report['device_name']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {report['load_average_start']}")
    for arch in archs:
        for size in sizes:
            for prompt_size in prompt_sizes:
                log(f"{arch} ({presets[arch]}) at {size} x {size}, batch {batch}, prompt size "
                    f"{prompt_size or 'full'}")
                case = Case(arch, presets[arch], size, batch, device, args.inject, args.seed, prompt_size,
                            args.clock)
                report["results"].append(run_case(case, repeats, args.warmup, log, args.modes))
                res = report["results"][-1]
                log("  ratios: " + ", ".join(f"{m} {res[m]['ratio']['median']:.3f}" for m in args.modes)
                    + f" (MACs {res['macs']['forward']['ratio']:.3f}, {res['macs']['train']['ratio']:.3f})")
                del case
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    report["targets"] = check_targets(report["results"])
    report["load_average_end"] = load_average()
    report["wall_time_s"] = time.time() - started

    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"overhead_{device.type}" + ("" if prompt_sizes == [None] else "_prompt_size")
            + ("" if list(args.modes) == list(MODES) else "_" + "_".join(args.modes))
            + ("_cpu_clock" if args.clock == "cpu" else ""))
    report["stem"] = stem
    plot_note = write_plot(args.out / f"{stem}.png", report)
    if plot_note:
        report["notes"].append(plot_note)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_markdown(args.out / f"{stem}.md", report)
    log(f"wrote {args.out / stem}.json, .md{'' if plot_note else ', .png'}")
    for v in report["targets"]:
        log(f"target check nafnet ({v['preset']}) {v['size']} px: inference {v['forward_ratio']:.3f} "
            f"({'met' if v['forward_met'] else 'not met'}), train {v['train_ratio']:.3f} "
            f"({'met' if v['train_met'] else 'not met'})")
    return report


if __name__ == "__main__":
    main()
