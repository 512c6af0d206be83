"""Smoke runs of benchmarks/prompter_transfer.py and benchmarks/rain_statistics.py on stand-ins they make
themselves (no real data): they run end to end and write sane reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_prompter_transfer_smoke_scores_every_real_condition_for_every_prompter(tmp_path):
    _run("prompter_transfer.py", "--smoke", "--threads", "1", "--out", str(tmp_path))
    report = json.loads((tmp_path / "prompter_transfer.json").read_text())
    assert report["command"].startswith("python benchmarks/prompter_transfer.py --smoke")
    assert set(report["prompters"]) == {"packaged", "random network"}
    conditions = {"Rain100L: rain"} | {f"CBSD68: noise sigma {s}" for s in (15, 25, 50)} | {
        f"CBSD68: Pillow GaussianBlur {r}" for r in (1.5, 2.5)} | {f"LIVE1: JPEG quality {q}" for q in (10, 20, 30, 40)}
    for name, scores in report["prompters"].items():
        assert set(scores["real"]) == conditions, name
        for key, r in scores["real"].items():
            assert 0.0 <= r["recall"] <= 1.0 and r["n"] == sum(r["predicted"].values()) > 0, (name, key)
        assert 0.0 <= scores["heldout_probe_accuracy"] <= 1.0
    assert set(report["manifests"]) == {"Rain100L (rainy)", "CBSD68", "LIVE1"}
    assert all(len(m["sha256"]) == m["files"] == 4 for m in report["manifests"].values())
    text = (tmp_path / "prompter_transfer.md").read_text()
    assert "| Rain100L rain |" in text and "| LIVE1 JPEG |" in text and "random network" in text


def test_rain_statistics_tells_streaks_from_a_misaligned_pair(tmp_path):
    # a pair differing by vertical white streaks, one differing by a horizontal shift, one identical pair
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rng = np.random.default_rng(0)
    clean = (rng.random((64, 80, 3)) * 120 + 60).astype(np.uint8)
    clean = cv2.GaussianBlur(clean, (0, 0), 3)
    streaks = clean.copy()
    streaks[:, 5::9] = np.clip(streaks[:, 5::9].astype(int) + 60, 0, 255).astype(np.uint8)
    cv2.imwrite(str(pairs / "rain-1.png"), streaks)
    cv2.imwrite(str(pairs / "norain-1.png"), clean)
    cv2.imwrite(str(pairs / "rain-2.png"), np.roll(clean, 3, axis=0))
    cv2.imwrite(str(pairs / "norain-2.png"), clean)
    cv2.imwrite(str(pairs / "rain-3.png"), clean)
    cv2.imwrite(str(pairs / "norain-3.png"), clean)
    _run("rain_statistics.py", "--pairs", str(pairs), "--out", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "rain_statistics.json").read_text())
    rows = {r["file"]: r for r in report["real"]}
    assert rows["rain-3.png"]["identical"] and not rows["rain-1.png"]["identical"]
    assert abs(rows["rain-1.png"]["orientation_deg"] - 90) < 5 and rows["rain-1.png"]["coherence"] > 0.8
    assert abs(rows["rain-1.png"]["intensity"] - 60 / 255) < 0.02
    generated = report["sources"]["rain generator, default parameters"]
    assert all(60 < r["orientation_deg"] < 120 for r in generated)
