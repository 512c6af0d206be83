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


def _transfer_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import prompter_transfer
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return prompter_transfer


def test_development_sets_from_training_data_and_a_classifier_fitted_on_training_photos(tmp_path):
    from constyle_plugin.data import degradations as deg
    from constyle_plugin.data.samples import sample_photos

    photos, rainy = tmp_path / "photos", tmp_path / "rainy"
    photos.mkdir()
    rainy.mkdir()
    rng = np.random.default_rng(0)
    for i, (_, img) in enumerate(sorted(sample_photos())[:10]):
        small = cv2.resize(img, (144, 136))
        cv2.imwrite(str(photos / f"p{i:02d}.png"), small[..., ::-1])
        if i < 2:
            wet = deg.rain(small.astype(np.float32) / 255.0, rng)
            cv2.imwrite(str(rainy / f"rain-{i}.png"), (wet[..., ::-1] * 255).round().astype(np.uint8))
    options = tmp_path / "stage1.yml"
    options.write_text("datasets:\n  train:\n    degradation_ranges: {rain: {strength: [0.15, 0.9]}}\n")
    out = tmp_path / "out"
    transfer = _transfer_module()
    assert transfer.main(["--fit-photos", str(photos), "--fit-ranges", str(options), "--fit-crops", "2",
                          "--holdout-every", "5", "--dev-photos", str(photos), "--dev-rain", str(rainy),
                          "--crops-per-image", "1", "--probe-crops", "1", "--out", str(out)]) == 0
    report = json.loads((out / "prompter_transfer_dev.json").read_text())
    assert not (out / "prompter_transfer.json").exists()
    assert report["development"] is True
    c = report["classifier"]
    assert c["fitted_on"] == "fit_photos" and c["n"] == 2 * len(deg.ALL_IN_ONE)
    assert c["photos"] == 8 and c["ranges"] == {"rain": {"strength": [0.15, 0.9]}}
    # the two held-out photos (p00, p05) make the development noise / blur / JPEG; the rainy images the rain
    assert report["manifests"]["dev photos (held out)"]["sha256"].keys() == {"p00.png", "p05.png"}
    scores = report["prompters"]["packaged"]["real"]
    assert scores["dev rain: rain"]["n"] == 2
    assert scores["dev photos: JPEG quality 40"]["n"] == 2 and scores["dev photos: noise sigma 25"]["n"] == 2
    assert not any(k.startswith(("Rain100L", "CBSD68", "LIVE1")) for k in scores)
    text = (out / "prompter_transfer_dev.md").read_text()
    assert "development sets made from training data" in text and "8 training photos" in text


def test_development_and_test_sets_are_not_mixed(tmp_path, capsys):
    transfer = _transfer_module()
    try:
        transfer.parse_args(["--dev-photos", str(tmp_path), "--cbsd68", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--dev-photos with --cbsd68 was accepted")
    assert "replace the test sets" in capsys.readouterr().err
