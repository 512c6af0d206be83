"""Smoke runs of the benchmarks in benchmarks/: they run end to end and write sane reports (no timing asserted)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_overhead_smoke(tmp_path):
    out = tmp_path / "overhead"
    # --device cpu: the smoke run checks the CPU report on any machine (a GPU run writes overhead_cuda.json)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--smoke", "--device", "cpu",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "overhead_cpu.json").read_text())
    assert report["command"].startswith("python benchmarks/overhead.py --smoke")
    assert report["device"] == "cpu" and report["settings"]["smoke"] is True
    results = {r["arch"]: r for r in report["results"]}
    assert sorted(results) == ["convunet", "maxim", "nafnet", "restormer"]
    for arch, res in results.items():
        assert res["size"] == 32
        for mode in ("forward", "train"):
            for variant in ("bare", "wrapped"):
                assert res[mode][f"{variant}_s"] and all(_positive(t) for t in res[mode][f"{variant}_s"]), (arch, mode)
                assert _positive(res["memory"][mode][variant]["peak"]), (arch, mode, variant)
            assert _positive(res[mode]["ratio"]["median"]), (arch, mode)
            assert res[mode]["ratio"]["min"] <= res[mode]["ratio"]["median"] <= res[mode]["ratio"]["max"]
            assert _positive(res["memory"][mode]["ratio"]), (arch, mode)
            # The wrapper adds the prompter's and the adapters' work to the bare backbone's.
            macs = res["macs"][mode]
            assert macs["wrapped"] > macs["bare"] > 0 and macs["prompter"] > 0 and macs["adapters"] > 0, (arch, mode)
        fwd = res["macs"]["forward"]
        assert fwd["wrapped"] == fwd["bare"] + fwd["prompter"] + fwd["adapters"], arch
        # A training step costs more than a forward pass; the prompter runs forward only.
        assert res["macs"]["train"]["bare"] > fwd["bare"]
        assert res["macs"]["train"]["prompter"] == fwd["prompter"]
        assert res["params"]["adapters"] > 0 and res["params"]["bare"] > 0
        # The frozen prompter's own tensors are resident in the wrapped model only.
        assert res["memory"]["forward"]["wrapped"]["resident"] > res["memory"]["forward"]["bare"]["resident"]
    # SPEC section 5: the query encoder without classifier is 1.19 M parameters, about 0.35 GMACs at 128 x 128.
    check = report["prompter_check"]
    assert abs(check["params_without_classifier"] - 1.19e6) < 0.01e6
    assert abs(check["macs"] - 0.35e9) < 0.02e9
    assert [t["arch"] for t in report["targets"]] == ["nafnet"]
    md = (out / "overhead_cpu.md").read_text()
    assert "python benchmarks/overhead.py --smoke" in md
    assert all(f"| {arch} (smoke) | 32 |" in md for arch in results)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "overhead_cpu.png").stat().st_size > 1000



def test_overhead_prompt_size_smoke(tmp_path):
    out = tmp_path / "overhead"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--smoke", "--device", "cpu",
                           "--archs", "nafnet", "--sizes", "64", "--prompt-size", "full", "32", "--modes", "forward",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "overhead_cpu_prompt_size_forward.json").read_text())
    full, small = report["results"]
    assert (full["prompt_size"], small["prompt_size"]) == (None, 32)
    assert "train" not in full and _positive(small["forward"]["ratio"]["median"])
    # The prompter sees a 32 x 32 copy of the 64 x 64 input: a quarter of its convolutions' multiply-adds;
    # its two linear layers on the pooled vector (256 -> 128 -> 128) cost the same at any size.
    linear = 256 * 128 + 128 * 128
    assert small["macs"]["forward"]["prompter"] - linear == (full["macs"]["forward"]["prompter"] - linear) / 4
    assert small["macs"]["forward"]["bare"] == full["macs"]["forward"]["bare"]
    md = (out / "overhead_cpu_prompt_size_forward.md").read_text()
    assert "| nafnet (smoke), prompt 32 px | 64 |" in md and "not run" in md


def test_restore_speed_smoke(tmp_path):
    out = tmp_path / "restore"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "restore_speed.py"), "--smoke", "--device", "cpu",
                           "--threads", "1", "--prompt-size", "full", "32", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "restore_speed_cpu.json").read_text())
    results = report["results"]
    assert list(results) == ["bare", "wrapped, prompt full", "wrapped, prompt 32", "wrapped, prompt per tile (full)"]
    for name, res in results.items():
        assert _positive(res["tiled"]["median"]), name
    # 96 x 128 in tiles of 64 overlapping by 16: 2 x 3 tiles; one prompt per image unless prompted per tile
    assert results["wrapped, prompt 32"]["prompter_calls_tiled"] == 1
    assert results["wrapped, prompt full"]["prompter_calls_whole"] == 1
    assert results["wrapped, prompt per tile (full)"]["prompter_calls_tiled"] == 6
    assert "python benchmarks/restore_speed.py --smoke" in (out / "restore_speed_cpu.md").read_text()

def test_stage1_smoke(tmp_path):
    out = tmp_path / "stage1"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage1.py"), "--smoke", "--device", "cpu",
                           "--channels-last", "--fused-adamw", "--no-host-checks", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "stage1_cpu.json").read_text())
    assert report["command"].startswith("python benchmarks/stage1.py --smoke")
    assert report["device"] == "cpu" and report["settings"]["smoke"] is True
    nets = report["networks"]
    assert list(nets) == ["baseline", "channels_last", "fused_adamw", "channels_last+fused_adamw", "no_host_checks",
                          "channels_last+fused_adamw+no_host_checks"]
    for name, res in nets.items():
        if "error" in res:  # an AdamW(fused=True) this torch lacks is recorded, not fatal
            assert "fused" in name, res
            continue
        assert _positive(res["wall_s"]["median"]) and _positive(res["back_to_back_s"]), name
        assert res["losses"] == ["class", "content", "infonce", "kl", "style"], name
    assert nets["baseline"]["vs_baseline"] == 1.0
    deg = report["degradation"]
    for path in ("reference", "fast"):
        assert _positive(deg[path]["wall_s"]["median"]), path
    assert _positive(deg["params_host_s"]["median"]) and _positive(deg["speedup_fast_vs_reference"])
    total = report["settings"]["total_iters"]
    assert total == 400000
    for variant in ("reference", "fast"):
        res = report["pipeline"][variant]
        assert _positive(res["iteration_s"]["median"]) and res["data_wait_s"]["median"] >= 0, variant
        assert math.isclose(res["hours_for_total_iters"], res["iteration_s"]["median"] * total / 3600), variant
    md = (out / "stage1_cpu.md").read_text()
    assert "python benchmarks/stage1.py --smoke" in md and "**CPU** numbers" in md
    assert "| baseline |" in md and "| fast |" in md and "400,000 iterations" in md
