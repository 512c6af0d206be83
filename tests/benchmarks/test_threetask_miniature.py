"""benchmarks/threetask_miniature.py: its layout builder writes the PromptIR / AdaIR three-task layout that the
plugin's own readers accept, with test photos disjoint from the training photos (and from what the packaged
prompter was pre-trained on); its schedule keeps the papers' shape; and the whole script (``basicsr train`` and
``constyle evaluate`` for both variants) runs end to end in its seconds-long ``--smoke`` mode. No quality is
asserted."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from constyle_plugin.data.benchmark_layouts import benchmark_test_sets, benchmark_train_pairs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "threetask_miniature.py"
TRAIN_PHOTOS = ("astronaut", "brick", "rocket")
TEST_PHOTOS = ("camera", "text")
COLUMNS = ["SOTS", "Rain100L", "BSD68 s15", "BSD68 s25", "BSD68 s50"]  # the papers' three-task order


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("threetask_miniature", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def layout(script, tmp_path_factory):
    root = tmp_path_factory.mktemp("threetask")
    manifest = script.build_layout(root, TRAIN_PHOTOS, TEST_PHOTOS, train_crops=2, test_crops=2, hazy_per_clear=2,
                                   train_sides=(48, 80), test_sides=(40, 72))
    return root, manifest


def _photo(manifest, root: Path, path: Path) -> str:
    return manifest["sources"][path.relative_to(root).as_posix()]["photo"]


def test_the_layout_is_the_promptir_layout_the_readers_accept(layout):
    root, manifest = layout
    pairs = benchmark_train_pairs("three-task", root / "Train")
    assert list(pairs) == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    crops = 2 * len(TRAIN_PHOTOS)
    assert [len(pairs[t]) for t in ("denoise_15", "derain")] == [crops, crops]
    assert crops < len(pairs["dehaze"]) <= 2 * crops  # two hazy images per clear crop (one when both round alike)
    assert all(p.lq is None for p in pairs["denoise_25"])
    for pair in pairs["derain"]:  # Rain100L train names
        assert re.fullmatch(r"rain-\d+\.png", pair.lq.name) and pair.gt.name == "no" + pair.lq.name
    for pair in pairs["dehaze"]:  # RESIDE OTS: synthetic/part1/XXXX_A_B.jpg -> original/XXXX.jpg
        assert pair.lq.parent.name == "part1" and pair.lq.parent.parent.name == "synthetic"
        stem, a, beta = pair.lq.stem.split("_")
        assert pair.gt.name == f"{stem}.jpg" and 0.7 <= float(a) <= 1.0 and 0.8 <= float(beta) <= 2.5

    tasks = benchmark_test_sets("three-task", root / "test")
    assert [t.column for t in tasks] == COLUMNS
    for task in tasks:
        assert len(task.images) == 2 * len(TEST_PHOTOS), task.key
        lq, gt = task.images[0].load()
        assert lq.shape == gt.shape and lq.shape[0] % 16 == 0 and lq.shape[1] % 16 == 0
        assert np.abs(lq - gt).mean() > 0.005, task.key  # degraded: haze, rain or noise


def test_rain_and_haze_are_the_plugins_degradations_of_the_clean_crop(layout):
    root, manifest = layout
    pair = benchmark_train_pairs("three-task", root / "Train")["derain"][0]
    clean, rainy = (cv2.imread(str(p)).astype(np.int16) for p in (pair.gt, pair.lq))
    assert clean.shape == rainy.shape
    assert (rainy >= clean - 1).all() and (rainy > clean + 20).mean() > 0.002  # streaks only brighten
    info = manifest["sources"][pair.gt.relative_to(root).as_posix()]
    assert info == manifest["sources"][pair.lq.relative_to(root).as_posix()]
    assert (info["height"], info["width"]) == clean.shape[:2]


def test_test_photos_are_disjoint_from_training_photos(layout, script):
    root, manifest = layout
    files = [p for sub in ("Train", "test") for p in (root / sub).rglob("*") if p.is_file()]
    assert {f.relative_to(root).as_posix() for f in files} == set(manifest["sources"])  # every file traced
    train = {_photo(manifest, root, p) for task in benchmark_train_pairs("three-task", root / "Train").values()
             for pair in task for p in (pair.gt, pair.lq) if p is not None}
    test = {_photo(manifest, root, p) for task in benchmark_test_sets("three-task", root / "test")
            for im in task.images for p in (im.gt, im.lq) if p is not None}
    assert train == set(TRAIN_PHOTOS) and test == set(TEST_PHOTOS)
    with pytest.raises(ValueError, match="camera"):
        script.build_layout(root / "again", ["camera", "brick"], ["camera"], train_crops=1, test_crops=1)


def test_the_benchmarks_held_out_photos_were_never_read_by_the_packaged_prompter(script):
    from constyle_plugin.data.samples import SAMPLE_NAMES

    record = json.loads((ROOT / "constyle_plugin" / "weights" / "constyle_v2_prompter.json").read_text())
    read = record["data"].split("Held out")[0]  # the sentence naming the photos its pre-training read
    listed = {name for name in SAMPLE_NAMES if re.search(rf"\b{name}\b", read)}
    assert listed and not listed & set(script.HOLDOUT)
    assert set(script.HOLDOUT) <= set(SAMPLE_NAMES)


def test_the_same_arguments_write_the_same_layout(script, layout, tmp_path):
    root, _ = layout
    script.build_layout(tmp_path, TRAIN_PHOTOS, TEST_PHOTOS, train_crops=2, test_crops=2, hazy_per_clear=2,
                        train_sides=(48, 80), test_sides=(40, 72))
    assert script.layout_sha256(tmp_path) == script.layout_sha256(root)


@pytest.mark.parametrize("iters", [40, 1000, 1200])
def test_schedule_keeps_the_papers_shape(script, iters):
    s = script.schedule(iters)
    # PromptIR: warm-up 15 of 120 epochs, cosine to 0 at epoch 150; the options' BasicSR spelling
    assert s["warmup_iter"] == round(iters * 15 / 120)
    assert s["periods"][0] == s["warmup_iter"] - 2
    assert s["warmup_iter"] + s["periods"][1] - 1 == s["cosine_end"] == round(iters * 150 / 120)


def test_mixture_gives_the_papers_shares(script):
    counts = {"denoise": 96, "derain": 96, "dehaze_hazy": 190}
    repeat = script.mixture(counts)
    epoch = {t: {"derain": 96, "dehaze": 190}.get(t, 96) * r for t, r in repeat.items()}
    total = sum(epoch.values())
    papers = {"denoise_15": 15432, "derain": 24000, "dehaze": 72135}  # PromptIR's epoch: 142 431 samples
    for task, n in papers.items():
        assert abs(epoch[task] / total - n / 142431) < 0.03, (task, repeat)


def test_smoke_run_trains_and_evaluates_both_variants(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--parallel", "2", "--work", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "threetask_miniature.json").read_text())
    assert report["command"].startswith("python benchmarks/threetask_miniature.py --smoke")
    assert report["layout"]["disjoint"] and not set(report["layout"]["train_photos"]) & set(report["layout"]["test_photos"])
    runs = {r["variant"]: r for r in report["runs"]}
    assert sorted(runs) == ["constyle", "origin"]
    for variant, run in runs.items():
        assert run["train_command"].startswith("basicsr train -opt ") and "--force_yml" in run["train_command"]
        assert run["options"] == str(ROOT / "options" / "allinone" / f"nafnet_{variant}_three_task.yml")
        assert f"-opt {run['options']} " in run["train_command"]
        assert f" manual_seed={run['seed']} " in run["train_command"]  # the seed goes in by --force_yml
        assert run["evaluate_command"].startswith("constyle evaluate --checkpoint ")
        assert Path(run["checkpoint"]).is_file()
        columns = [t["column"] for t in run["metrics"]["tasks"].values()]
        assert columns == COLUMNS
        psnrs = [t["psnr"] for t in run["metrics"]["tasks"].values()]
        assert all(math.isfinite(v) and 0 < v < 100 for v in psnrs)
        assert math.isclose(run["metrics"]["average"]["psnr"], sum(psnrs) / len(psnrs))
    paired = report["summary"]["paired"]["average"]["psnr"]["mean"]
    assert math.isclose(paired, runs["constyle"]["metrics"]["average"]["psnr"] - runs["origin"]["metrics"]["average"]["psnr"])
    md = (tmp_path / "threetask_miniature.md").read_text()
    assert "SMOKE RUN" in md and "| Method | " + " | ".join(COLUMNS) + " | Average |" in md
    assert "| NAFNet + ConStyle v2 |" in md and "| NAFNet (origin) |" in md and "**constyle - origin**" in md


def test_runs_from_takes_the_other_variants_runs_of_a_report_with_the_same_settings(script, tmp_path, capsys):
    """--runs-from: the runs of the variants not trained here come from the report; a report made with other
    settings, or lacking a seed, is refused with a one-line error naming it."""
    args = script.parse_args(["--variants", "constyle", "--seeds", "10", "11"])
    config = {k: getattr(args, k) for k in script.REUSE_MUST_MATCH}
    runs = [{"variant": v, "seed": s, "metrics": {}} for v in ("origin", "constyle") for s in (10, 11, 12)]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"config": config, "runs": runs, "command": "c", "date": "d",
                                   "layout": {"sha256": "abc"}}))
    args = script.parse_args(["--variants", "constyle", "--seeds", "10", "11", "--runs-from", str(earlier)])
    assert args.reused == [r for r in runs if r["variant"] == "origin" and r["seed"] in (10, 11)]
    assert args.runs_from_reports == [{"file": str(earlier), "command": "c", "date": "d", "variants": ["origin"],
                                       "layout_sha256": "abc"}]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config": {**config, "iters": 7}, "runs": runs}))
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"config": config, "runs": [r for r in runs if r["seed"] != 11]}))
    for source, message in ((other, f"made with other settings (iters: 7 there, {args.iters} here)"),
                            (lacking, "lacks runs [('origin', 11)]"),
                            (tmp_path / "absent.json", "cannot read a threetask_miniature.json report")):
        with pytest.raises(SystemExit) as exc:
            script.parse_args(["--variants", "constyle", "--seeds", "10", "11", "--runs-from", str(source)])
        assert exc.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"--runs-from {source}: {message}" in error


def test_runs_from_refuses_constyle_runs_of_another_prompter_file(script, tmp_path, capsys):
    """A report's constyle runs made with a prompter file other than the packaged one never enter this report's
    constyle row; origin runs of that report are still taken when constyle is trained here."""
    args = script.parse_args(["--variants", "origin", "--seeds", "10"])
    config = {k: getattr(args, k) for k in script.REUSE_MUST_MATCH}
    packaged = script.packaged_prompter()["sha256"]
    assert packaged and len(packaged) == 64
    runs = [{"variant": v, "seed": 10, "metrics": {}} for v in ("origin", "constyle")]
    replaced = tmp_path / "replaced.json"
    replaced.write_text(json.dumps({"config": config, "runs": runs, "prompter": {"sha256": "f" * 64}}))
    with pytest.raises(SystemExit) as exc:
        script.parse_args(["--variants", "origin", "--seeds", "10", "--runs-from", str(replaced)])
    assert exc.value.code == 2
    assert f"its constyle runs were trained with the prompter file of sha256 {'f' * 16}" in capsys.readouterr().err
    args = script.parse_args(["--variants", "constyle", "--seeds", "10", "--runs-from", str(replaced)])
    assert [r["variant"] for r in args.reused] == ["origin"]
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"config": config, "runs": runs, "prompter": {"sha256": packaged}}))
    args = script.parse_args(["--variants", "origin", "--seeds", "10", "--runs-from", str(same)])
    assert [(r["variant"], r["prompter_sha256"]) for r in args.reused] == [("constyle", packaged)]
