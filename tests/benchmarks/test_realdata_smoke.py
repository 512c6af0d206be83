"""Smoke test of benchmarks/realdata.py on the stand-ins it makes from the offline photos (no real data):
the report has every row, column and file manifest; the degraded-input row equals PSNR computed here from
the files; training data that is a test file is refused; the CBM3D cache resumes. No quality is asserted."""
import hashlib
import json
import math
import os
import subprocess
import sys
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "realdata.py"
PREVIOUS = REPO / "benchmarks" / "prompters" / "constyle_v2_prompter_2026-12-02.safetensors"
COLUMNS = ("cbsd68_15", "cbsd68_25", "cbsd68_50", "rain100l", "live1_q10", "live1_q20", "live1_q30", "live1_q40")
ROWS = ("origin", "constyle", "constyle_untrained", "learned", "previous")
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--no-progress", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("realdata")
    proc = _run("--out", str(out), "--compare", f"previous={PREVIOUS}")
    assert proc.returncode == 0, f"realdata.py --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "realdata.json").read_text())


def _realdata():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import realdata
    finally:
        sys.path.pop(0)
    return realdata


def test_every_row_column_and_manifest_is_reported(smoke_run):
    out, report = smoke_run
    assert [c["key"] for c in report["columns"]] == list(COLUMNS)
    assert report["rows"]["variants"] == list(ROWS)
    assert sorted((r["variant"], r["seed"]) for r in report["runs"]) == sorted((v, 0) for v in ROWS)
    for run in report["runs"]:
        for c in COLUMNS:
            assert all(math.isfinite(run["metrics"]["per_degradation"][c][k]) for k in METRICS), (run["variant"], c)
    assert len({r["data_fingerprint"] for r in report["runs"]}) == 1  # every row saw the same batches
    assert set(report["summary"]["paired_deltas"]) >= {"constyle - origin", "previous - origin"}
    assert report["rows"]["cbm3d"] is None  # not asked for, nothing cached
    # every file read, hashed: the sets and their roles
    manifests = report["data"]["manifests"]
    assert {k: m["role"] for k, m in manifests.items()} == {
        "BSD400": "train", "RainTrainL": "train", "CBSD68": "test", "Rain100L": "test", "LIVE1": "test"}
    assert {k: m["files"] for k, m in manifests.items()} == {
        "BSD400": 5, "RainTrainL": 6, "CBSD68": 2, "Rain100L": 4, "LIVE1": 2}
    for m in manifests.values():
        for path, digest in m["sha256"].items():
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, path
    # the identical pair is left out; the Rain100L background taken from a BSD400 photo is found, nothing else
    assert [(r["pair"], r["kept"]) for r in report["data"]["rain_pairs"]] == [
        ("rain-1.png", True), ("rain-2.png", True), ("rain-3.png", False)]
    shared = {k: sorted(v["matches"]) for k, v in report["data"]["photo_overlap"].items()}
    assert shared.pop("Rain100L | BSD400") == ["norain-001.png"]
    assert all(v == [] for v in shared.values()), shared
    assert {p["method"] for p in report["published"]["rows"]} == {"PromptIR", "AdaIR", "CBM3D"}
    md = (out / "realdata.md").read_text()
    for text in ("| degraded input |", "| +ConStyle v2 (packaged prompter) |", "| +ConStyle v2 (previous prompter) |",
                 "| PromptIR | 33.98 / 0.933", "### PSNR (dB), Y",
                 "Rain100L in BSD400: 1 (the field's standard overlap"):
        assert text in md, text


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _y(bgr: np.ndarray) -> np.ndarray:  # ITU-R BT.601 luma on the 16-235 scale, as the papers' Y
    return bgr.astype(np.float64) @ np.array([24.966, 128.553, 65.481]) / 255.0 + 16.0


def _centre16(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h % 16) // 2, (w % 16) // 2
    return img[top:top + h - h % 16, left:left + w - w % 16]


def test_input_row_is_the_psnr_of_the_degraded_files(smoke_run):
    out, report = smoke_run
    per_image = report["rows"]["input"]["per_image"]
    data = out / "standins"

    def recorded(column: str, name: str) -> dict:
        return next(r for r in per_image[column] if r["name"] == name)

    rainy = _centre16(cv2.imread(str(data / "rain100l" / "rainy" / "rain-001.png")))
    clean = _centre16(cv2.imread(str(data / "rain100l" / "norain-001.png")))
    assert recorded("rain100l", "rain-001")["psnr"] == pytest.approx(_psnr(rainy, clean), abs=1e-3)
    assert recorded("rain100l", "rain-001")["psnr_y"] == pytest.approx(_psnr(_y(rainy), _y(clean)), abs=1e-3)

    clean = _centre16(cv2.imread(str(data / "cbsd68" / "0.png")))
    noise = np.random.RandomState(zlib.crc32(b"0.png:25")).standard_normal(clean.shape) * 25.0
    noisy = np.clip(clean[..., ::-1] + noise, 0, 255).astype(np.uint8)[..., ::-1]  # noise drawn on RGB
    assert recorded("cbsd68_25", "0")["psnr"] == pytest.approx(_psnr(noisy, clean), abs=1e-3)

    clean = cv2.imread(str(data / "live1" / "0.bmp"))
    ok, buf = cv2.imencode(".jpg", clean, [int(cv2.IMWRITE_JPEG_QUALITY), 20])
    jpeg = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert recorded("live1_q20", "0")["psnr"] == pytest.approx(_psnr(jpeg, clean), abs=1e-3)
    assert recorded("live1_q20", "0")["psnr_y"] == pytest.approx(_psnr(_y(jpeg), _y(clean)), abs=1e-3)
    column = report["rows"]["input"]["per_degradation"]["live1_q20"]
    assert column["psnr"] == pytest.approx(np.mean([r["psnr"] for r in per_image["live1_q20"]]), abs=1e-3)


def test_runs_from_merges_without_training_and_refuses_other_settings(smoke_run, tmp_path):
    earlier_dir, earlier = smoke_run
    # the runs of the `previous` prompter are known by its file, here given under another name
    proc = _run("--out", str(tmp_path / "merged"), "--variants", "--compare", f"2026-12-02={PREVIOUS}",
                "--runs-from", str(earlier_dir / "realdata.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads((tmp_path / "merged" / "realdata.json").read_text())
    assert merged["config"]["variants_trained"] == []
    renamed = [{**r, "variant": "2026-12-02"} if r["variant"] == "previous" else r for r in earlier["runs"]]
    assert merged["runs"] == renamed
    assert merged["summary"]["variants"]["constyle"] == earlier["summary"]["variants"]["constyle"]
    assert merged["summary"]["variants"]["2026-12-02"] == earlier["summary"]["variants"]["previous"]
    assert merged["prompter"]["sha256"] == earlier["prompter"]["sha256"]
    assert "2026-12-02 (its previous runs)" in (tmp_path / "merged" / "realdata.md").read_text()
    # without that file, the runs of the previous prompter have no row: refused, never shown as `constyle`
    unnamed = _run("--out", str(tmp_path / "unnamed"), "--variants", "--runs-from", str(earlier_dir / "realdata.json"))
    assert unnamed.returncode == 2 and "its previous runs were trained with the prompter file" in unnamed.stderr
    bad = _run("--out", str(tmp_path / "bad"), "--variants", "--real-rain-share", "0.5",
               "--runs-from", str(earlier_dir / "realdata.json"))
    assert bad.returncode == 2 and "made with other settings (real_rain_share: 0.25 there, 0.5 here)" in bad.stderr


def test_a_training_file_that_is_a_test_file_is_refused(tmp_path):
    realdata = _realdata()
    photo = tmp_path / "a.png"
    cv2.imwrite(str(photo), np.full((8, 8, 3), 90, np.uint8))
    copy = tmp_path / "copy.png"
    copy.write_bytes(photo.read_bytes())
    link = tmp_path / "link.png"
    link.symlink_to(photo)

    def sets(train, test):
        return {"BSD400": realdata.manifest("train", [tmp_path], train),
                "CBSD68": realdata.manifest("test", [tmp_path], test)}

    with pytest.raises(realdata.LeakError, match="is also a training file"):
        realdata.check_no_leak(sets([photo], [link]), {})
    with pytest.raises(realdata.LeakError, match="same bytes"):
        realdata.check_no_leak(sets([photo], [copy]), {})
    same_photo = {"matches": {"x.png": "a.png"}}
    with pytest.raises(realdata.LeakError, match="CBSD68 image"):
        realdata.check_no_leak({}, {"CBSD68 | BSD400": same_photo})
    realdata.check_no_leak({}, {"Rain100L | BSD400": same_photo})  # the field's standard overlap: allowed


def test_cbm3d_cache_resumes_and_a_missing_package_is_one_line(tmp_path, monkeypatch):
    realdata = _realdata()
    import argparse

    paths = realdata.smoke_data(tmp_path / "data")
    items, _, _ = realdata.test_sets(argparse.Namespace(**paths, max_images=None))
    calls = []

    def fake_bm3d_rgb(noisy, sigma):
        calls.append(sigma)
        return cv2.GaussianBlur(noisy, (3, 3), 0)

    monkeypatch.setitem(sys.modules, "bm3d", types.SimpleNamespace(bm3d_rgb=fake_bm3d_rgb, __version__="fake"))
    cache = tmp_path / "cache"
    assert realdata.run_cbm3d(items, cache, [25], log=lambda line: None) is None
    assert calls == [25 / 255] * 2
    assert realdata.run_cbm3d(items, cache, [25], log=lambda line: None) is None
    assert len(calls) == 2  # resumed: nothing left to do
    row = realdata.cbm3d_row(items, cache)
    assert row["complete"] == {"cbsd68_25": True} and row["counts"]["cbsd68_25"] == {"done": 2, "of": 2}
    assert row["per_degradation"]["cbsd68_25"]["psnr"] > 0 and row["average"] is None
    record = json.loads((cache / "cbsd68_sigma25.json").read_text())
    record["images"].pop("1")
    (cache / "cbsd68_sigma25.json").write_text(json.dumps(record))
    assert realdata.cbm3d_row(items, cache)["counts"]["cbsd68_25"] == {"done": 1, "of": 2}
    monkeypatch.setitem(sys.modules, "bm3d", None)
    assert realdata.run_cbm3d(items, cache, [25]) == \
        "CBM3D not run: the bm3d package is not installed (pip install bm3d)"


def test_cbsd68_and_rain100l_columns_are_constyle_evaluates_three_task_images(tmp_path):
    import argparse

    from constyle_plugin.data.benchmark_layouts import benchmark_test_sets

    realdata = _realdata()
    paths = realdata.smoke_data(tmp_path / "data")
    items, _, _ = realdata.test_sets(argparse.Namespace(**paths, max_images=None))
    root = tmp_path / "test"
    (root / "denoise").mkdir(parents=True)
    (root / "denoise" / "bsd68").symlink_to(paths["cbsd68"])
    (root / "derain" / "Rain100L").mkdir(parents=True)
    (root / "derain" / "Rain100L" / "input").symlink_to(Path(paths["rain100l"]) / "rainy")
    (root / "derain" / "Rain100L" / "target").symlink_to(paths["rain100l"])
    for sub, name in (("input", "0001_0.8_0.2.png"), ("target", "0001.png")):  # three-task needs SOTS
        (root / "dehaze" / sub).mkdir(parents=True)
        cv2.imwrite(str(root / "dehaze" / sub / name), np.zeros((32, 32, 3), np.uint8))
    theirs = {t.key: t.images for t in benchmark_test_sets("three-task", root)}
    for column, key in (("cbsd68_15", "denoise_15"), ("cbsd68_50", "denoise_50"), ("rain100l", "derain")):
        mine = [item for c, item in items if c == column]
        assert [i.name for i in mine] == [i.name for i in theirs[key]]
        for a, b in zip(mine, theirs[key]):
            for x, y in zip(a.load(), b.load()):
                assert np.array_equal(x, y), (column, a.name)
