"""Smoke test of benchmarks/allinone.py: the seconds-long mode runs end to end and records what it
promises (finite metrics for every variant and degradation, a photo split with no overlap, both
figures). No quality and no timing is asserted."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "allinone.py"
VARIANTS = ("origin", "constyle", "constyle_untrained", "learned")
DEGRADATIONS = ("noise", "jpeg", "motion_blur", "defocus_blur", "haze", "rain", "snow", "low_light")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("allinone")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--no-progress",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"allinone.py --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "allinone.json").read_text()), proc.stdout


def test_metrics_are_finite_for_every_variant_and_degradation(smoke_run):
    _, report, _ = smoke_run
    assert report["degradations"] == list(DEGRADATIONS)
    runs = report["runs"]
    assert sorted(r["variant"] for r in runs) == sorted(VARIANTS)
    for run in runs:
        per_deg = run["metrics"]["per_degradation"]
        assert set(per_deg) == set(DEGRADATIONS)
        for d in DEGRADATIONS:
            assert per_deg[d]["n_images"] >= 1
            for key in ("psnr", "psnr_y", "ssim"):
                assert math.isfinite(per_deg[d][key]), (run["variant"], d, key, per_deg[d][key])
        assert math.isfinite(run["metrics"]["average"]["psnr"])
    for v in VARIANTS:
        for d in DEGRADATIONS + ("average",):
            assert math.isfinite(report["summary"]["variants"][v][d]["psnr"]["mean"])
    # every variant of a seed trained on exactly the same batches
    assert len({r["data_fingerprint"] for r in runs}) == 1
    # the probe ran for both prompters and its accuracies are proportions
    for key in ("pretrained", "untrained"):
        acc = report["probe"][key]["z2"]["test_accuracy"]
        assert 0.0 <= acc <= 1.0


def test_held_out_photos_never_reach_training(smoke_run):
    _, report, _ = smoke_run
    split = report["split"]
    train, test = set(split["train_photos"]), set(split["test_photos"])
    assert train and test
    assert not train & test
    assert set(split["dataset_photos"]) == train  # what the training dataset actually reads
    assert {im["photo"] for im in report["test_set"]["images"]} <= test
    assert report["test_set"]["n_images"] == len(report["test_set"]["images"])


def test_outputs_exist_and_the_random_prompter_is_declared(smoke_run):
    out, report, stdout = smoke_run
    for name in ("allinone.json", "allinone.md", "allinone_examples.png", "allinone_latents.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("allinone_examples.png", "allinone_latents.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert report["command"].startswith("python benchmarks/allinone.py --smoke")
    assert report["config"]["smoke"] is True
    md = (out / "allinone.md").read_text()
    assert "| **average** |" in md
    if report["prompter"]["random"]:  # no packaged prompter here: the run must say so, loudly
        assert "RANDOM" in stdout and "RANDOM" in md
    assert len(report["prompter"]["sha256"]) == 64


def test_refuses_to_run_without_a_prompter_outside_smoke_mode(tmp_path):
    from constyle_plugin.core.prompter import default_prompter_path

    args = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--iters", "1", "--seeds", "0"]
    if default_prompter_path() is not None:
        args += ["--prompter", str(tmp_path / "missing.safetensors")]
        expected = "missing.safetensors"
    else:
        expected = "--prompter"
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert not (tmp_path / "allinone.json").exists()


def test_probe_only_trains_nothing_and_records_both_separabilities(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    from constyle_plugin import ConStyleV2

    torch.manual_seed(7)
    other = tmp_path / "other.safetensors"
    ConStyleV2().save_pretrained(other)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--probe-only", "--threads", "1",
                           "--no-progress", "--out", str(tmp_path), "--compare", f"previous={other}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "allinone.json").exists()  # nothing trained, no full report
    report = json.loads((tmp_path / "allinone_probe.json").read_text())
    assert "--probe-only" in report["command"]
    assert report["compared"]["previous"]["path"] == str(other)
    for key in ("pretrained", "untrained", "previous"):
        for feat in ("z2", "f1_mean", "f2_mean", "f3_mean"):
            p = report["probe"][key][feat]
            assert p["separability_test"] >= 0 and p["separability_by_photo_test"] >= 0
            assert 0.0 <= p["test_accuracy"] <= 1.0 and p["spread_test"] >= 0
    md = (tmp_path / "allinone_probe.md").read_text()
    assert "separability (photo)" in md and "| pretrained | z2" in md and "| previous | mean of f1" in md


def test_the_learned_variant_trains_its_conditioning_network_and_the_untrained_one_stays_frozen():
    import argparse

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import allinone
    finally:
        sys.path.pop(0)
    args = argparse.Namespace(width=8, middle_blocks=1, blocks=1, levels=3)
    prompters = {"untrained": allinone.random_prompter(allinone.UNTRAINED_PROMPTER_SEED)}
    learned = allinone.build_model("learned", args, 0, prompters)
    frozen = allinone.build_model("constyle_untrained", args, 0, prompters)
    # same network, same initial weights: the ablations differ only in what is trained
    assert all(torch.equal(a, b) for a, b in zip(learned.prompter.state_dict().values(),
                                                  frozen.prompter.state_dict().values()))
    for net in (learned, frozen):
        before = {k: v.clone() for k, v in net.prompter.state_dict().items()}
        opt = torch.optim.AdamW(allinone.trainable(net), lr=1e-2)
        torch.manual_seed(0)
        for _ in range(3):  # the injections start at zero: the conditioning gets gradients from step 2
            x = torch.rand(2, 3, 32, 32)
            loss = (net(x) - x).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        moved = not all(torch.equal(before[k], v) for k, v in net.prompter.state_dict().items())
        assert moved == (net is learned)


def test_batches_made_in_worker_processes_are_the_same_for_every_variant(tmp_path):
    """--workers 2: the training batches come from two data workers (as on a GPU machine); every
    variant of a seed must still see exactly the same batches (the script asserts it too)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--no-progress", "--workers", "2",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((tmp_path / "allinone.json").read_text())
    assert report["config"]["workers"] == 2
    runs = report["runs"]
    assert sorted(r["variant"] for r in runs) == sorted(VARIANTS)
    assert len({r["data_fingerprint"] for r in runs}) == 1


def test_runs_from_reuses_an_earlier_reports_runs_and_refuses_other_settings(smoke_run, tmp_path):
    """Only `constyle` trained again; the other variants' runs come from the smoke report, whose
    training batches must be the ones this run draws (the script compares their fingerprints)."""
    earlier_dir, earlier, _ = smoke_run
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    base = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--no-progress"]
    proc = subprocess.run(base + ["--out", str(tmp_path / "again"), "--variants", "constyle",
                                  "--runs-from", str(earlier_dir / "allinone.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((tmp_path / "again" / "allinone.json").read_text())
    assert report["config"]["variants_trained"] == ["constyle"]
    assert sorted(report["config"]["variants"]) == sorted(VARIANTS)
    old = {(r["variant"], r["seed"]): r for r in earlier["runs"]}
    for r in report["runs"]:
        if r["variant"] != "constyle":
            assert r == old[(r["variant"], r["seed"])]
        else:  # trained again, deterministically: the same numbers as in the earlier report
            assert r["metrics"]["per_image_psnr"] == old[("constyle", r["seed"])]["metrics"]["per_image_psnr"]
    assert [r["variants"] for r in report["reused"]] == [["constyle_untrained", "learned", "origin"]]
    assert "come from" in (tmp_path / "again" / "allinone.md").read_text()
    bad = subprocess.run(base + ["--out", str(tmp_path / "bad"), "--variants", "constyle", "--lr", "0.5",
                                 "--runs-from", str(earlier_dir / "allinone.json")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "made with other settings (lr: 0.001 there, 0.5 here)" in bad.stderr


def test_runs_from_two_reports_merges_them_without_training(smoke_run, tmp_path):
    """Two reports merged, nothing trained: a `constyle`-only report (the smoke report's constyle run, its
    time marked) named first and the smoke report; the merged report holds every run once, each from the
    file named first that has it."""
    earlier_dir, earlier, _ = smoke_run
    alone = dict(earlier, runs=[dict(r, train_time_s=-1.0) for r in earlier["runs"] if r["variant"] == "constyle"])
    (tmp_path / "alone.json").write_text(json.dumps(alone))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    base = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--no-progress"]
    merged = subprocess.run(base + ["--out", str(tmp_path / "merged"), "--variants", "--runs-from",
                                    str(tmp_path / "alone.json"), str(earlier_dir / "allinone.json")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    report = json.loads((tmp_path / "merged" / "allinone.json").read_text())
    assert report["config"]["variants_trained"] == []
    assert sorted((r["variant"], r["seed"]) for r in report["runs"]) == sorted((v, 0) for v in VARIANTS)
    assert [r["train_time_s"] for r in report["runs"] if r["variant"] == "constyle"] == [-1.0]
    assert all(r["train_time_s"] >= 0 for r in report["runs"] if r["variant"] != "constyle")
    assert "constyle - origin" in report["summary"]["paired_deltas"]
    assert not (tmp_path / "merged" / "allinone_examples.png").exists()


def test_a_report_without_origin_has_no_paired_differences(smoke_run):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import allinone
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    _, earlier, _ = smoke_run
    constyle = [r for r in earlier["runs"] if r["variant"] == "constyle"]
    summary = allinone.summarise(constyle, ["constyle"], DEGRADATIONS)
    assert summary["paired_deltas"] == {} and set(summary["variants"]) == {"constyle"}
    both = allinone.summarise(earlier["runs"], list(VARIANTS), DEGRADATIONS)
    assert set(both["paired_deltas"]) >= {"constyle - origin", "constyle - constyle_untrained", "constyle - learned"}
