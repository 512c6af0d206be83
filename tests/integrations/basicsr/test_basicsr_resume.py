"""Resuming ``basicsr train``: ``--auto_resume`` after a SIGKILL resumes from the last complete state,
passes over a truncated checkpoint to the newest one that loads, and refuses when none loads; an
explicit resume state that does not load is named; a finished run can be extended with a longer
schedule; a training state that would run code when loaded is refused and nothing runs.

Each run is a fresh interpreter running the console script's function in a temporary folder, with a
tiny NAFNet, a few iterations and one thread.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import (BASICSR_MAIN, NAME, OPTIONS, OPTIONS_DIR, basicsr, losses_by_iter, logs, losses, ok, refused,
                          tiny, tiny_options)
from payloads import RunsCodeOnLoad
from processes import kill_when, quiet_env

ensure_basicsr_importable()


# ------------------------------------------------------------------------------------------------
# 5. Resuming from a truncated checkpoint; 6. extending a finished run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, photos, prompter_file) -> Path:
    """A finished 4-iteration run with states at iterations 2 and 4."""
    run_dir = tmp_path_factory.mktemp("finished")
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *tiny(photos, prompter_file),
               "train:scheduler:periods=[4]"))
    states = run_dir / "experiments" / NAME / "training_states"
    assert sorted(p.name for p in states.glob("*.state")) == ["2.state", "4.state"]
    return run_dir


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("broken", ["training_states/4.state", "models/net_g_4.pth"])
def test_auto_resume_passes_over_a_truncated_checkpoint(finished_run, tmp_path, photos, prompter_file, broken):
    run_dir = copy_of(finished_run, tmp_path)
    truncate(run_dir / "experiments" / NAME / broken)
    proc = ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                      *tiny(photos, prompter_file), "train:scheduler:periods=[4]"))
    named = f"experiments/{NAME}/{broken}"
    assert re.search(rf"skipped \S*{re.escape(named)} \(.*truncated", proc.stderr), proc.stderr[-3000:]
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1
    assert "Resuming training from epoch: 0, iter: 2." in resumed[0]
    assert re.search(rf"Resume: skipped \S*{re.escape(named)} \(", resumed[0])  # also in the run's log
    assert sorted(losses(resumed[0])) == [3, 4]


def test_an_explicit_resume_state_that_does_not_load_is_named(finished_run, tmp_path, photos, prompter_file):
    run_dir = copy_of(finished_run, tmp_path)
    state = run_dir / "experiments" / NAME / "training_states" / "4.state"
    truncate(state)
    before = sorted(p.name for p in (run_dir / "experiments" / NAME).iterdir())
    proc = basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *tiny(photos, prompter_file),
                   f"path:resume_state={state}")
    refused(proc, "path.resume_state", str(state), "truncated")
    assert sorted(p.name for p in (run_dir / "experiments" / NAME).iterdir()) == before


def test_auto_resume_with_no_state_that_loads_is_refused(finished_run, tmp_path, photos, prompter_file):
    run_dir = copy_of(finished_run, tmp_path)
    for state in (run_dir / "experiments" / NAME / "training_states").glob("*.state"):
        truncate(state)
    proc = basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml", *tiny(photos, prompter_file))
    refused(proc, "--auto_resume", "2.state", "4.state")
    assert sorted(p.name for p in (run_dir / "experiments").iterdir()) == [NAME]  # nothing archived, nothing new


def test_a_finished_run_extended_with_a_longer_schedule_trains_on(finished_run, tmp_path, photos, prompter_file):
    """After 4 iterations of a cosine schedule over 4, resume with total_iter 6 over periods [6]: iterations 5
    and 6 train at the learning rates of the options file's schedule."""
    run_dir = copy_of(finished_run, tmp_path)
    proc = ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                      *tiny(photos, prompter_file), "train:total_iter=6", "train:scheduler:periods=[6]"))
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1, proc.stderr[-3000:]
    assert "Resuming training from epoch: 0, iter: 4." in resumed[0]
    assert len(re.findall(r"the learning-rate schedule follows the options file", resumed[0])) == 1
    rates = losses(resumed[0])
    assert sorted(rates) == [5, 6]
    opt = yaml.safe_load(OPTIONS.read_text())
    base, eta_min = float(opt["train"]["optim_g"]["lr"]), float(opt["train"]["scheduler"]["eta_min"])
    for it in (5, 6):  # CosineAnnealingRestartLR over one period of 6, stepped from iteration 2 on (BaseModel)
        expected = eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * (it - 1) / 6))
        assert float(rates[it].strip(",")) == pytest.approx(expected, rel=2e-3), (it, rates[it], expected)
    assert (run_dir / "experiments" / NAME / "models" / "net_g_6.pth").is_file()



def test_a_resume_at_or_past_total_iter_is_refused(finished_run, tmp_path, photos, prompter_file):
    """Resuming the run at iteration 4 with total_iter 3 would end at once, exit 0, without a word: refused."""
    run_dir = copy_of(finished_run, tmp_path)
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    proc = basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                   *tiny(photos, prompter_file, total_iter=3))
    refused(proc, "train.total_iter: 3", "already at iteration 4", "nothing would be trained")
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


def test_a_resume_with_another_batch_size_skips_the_samples_already_trained_on(finished_run, tmp_path, photos,
                                                                              prompter_file):
    """Iteration 2 of batch 2 used 4 samples of epoch 0: a resume with batch 1 skips 4 samples, not 2."""
    run_dir = copy_of(finished_run, tmp_path)
    for path in (run_dir / "experiments" / NAME).rglob("4.*"):
        path.unlink()
    (run_dir / "experiments" / NAME / "models" / "net_g_4.pth").unlink()
    proc = ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                      *tiny(photos, prompter_file), "datasets:train:batch_size_per_gpu=1"))
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1, proc.stderr[-3000:]
    assert "Resuming training from epoch: 0, iter: 2." in resumed[0]
    assert "with batch size 1 (it was 2): skipping its first 4 samples" in resumed[0], resumed[0][-3000:]
    assert sorted(losses(resumed[0])) == [3, 4]


# ------------------------------------------------------------------------------------------------
# --auto_resume after a SIGKILL
# ------------------------------------------------------------------------------------------------
def test_auto_resume_after_sigkill_resumes_from_the_last_complete_state(tmp_path, photos, prompter_file):
    opts = tiny_options(photos, prompter_file, total_iter=10, ckpt_freq=4)
    cmd = [sys.executable, "-c", BASICSR_MAIN, "train", "-opt", str(OPTIONS_DIR / "nafnet_constyle.yml")]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    states = run_dir / "experiments" / NAME / "training_states"
    # killed once iteration 7 is logged: the state of iteration 4 is complete, 5..7 were trained after it
    killed = kill_when(cmd + ["--force_yml", *opts], run_dir, lambda out: bool(re.search(r"iter:\s+7, lr", out)))
    saved = sorted(int(p.name.split(".")[0]) for p in states.glob("*.state"))
    assert saved == [4], saved
    assert not (run_dir / "experiments" / NAME / "models" / "net_g_latest.pth").exists()  # it did not finish

    proc = subprocess.run(cmd + ["--auto_resume", "--force_yml", *opts], cwd=run_dir, capture_output=True,
                          text=True, env=quiet_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = sorted((run_dir / "experiments").glob(f"{NAME}*/train_*.log"))
    resumed = [p.read_text() for p in log if "Resuming training from" in p.read_text()]
    assert len(resumed) == 1
    assert "Resuming training from epoch: 0, iter: 4." in resumed[0]
    again = losses_by_iter(resumed[0])
    assert set(again) == set(range(5, 11))
    before = losses_by_iter(killed)
    both = sorted(set(before) & set(again))
    # iterations trained by both runs: 5 (weights and data of the state) and 6, 7 (also the optimiser's state)
    assert both == [5, 6, 7], both
    for i in both:
        assert before[i] == again[i], (i, before[i], again[i])
    # the log has 4 digits; the weights are exact: the resumed run ends where an uninterrupted one does
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref = subprocess.run(cmd + ["--force_yml", *opts], cwd=ref_dir, capture_output=True, text=True, env=quiet_env(),
                         timeout=400)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = losses_by_iter(next((ref_dir / "experiments" / NAME).glob("train_*.log")).read_text())
    assert all(again[i] == reference[i] for i in again), (again, reference)
    for name in ("net_g_8.pth", "net_g_latest.pth"):
        a = torch.load(run_dir / "experiments" / NAME / "models" / name, weights_only=True)
        b = torch.load(ref_dir / "experiments" / NAME / "models" / name, weights_only=True)
        for key in ("params", "params_ema"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)



# ------------------------------------------------------------------------------------------------
# Untrusted training states (BasicSR resume)
# ------------------------------------------------------------------------------------------------
def test_basicsr_resume_state_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    from constyle_plugin.integrations.basicsr.cli import load_state_file

    marker, path = tmp_path / "pwned", tmp_path / "4.state"
    torch.save({"epoch": 0, "iter": 4, "optimizers": [], "schedulers": [], "x": RunsCodeOnLoad(marker)}, path)
    with pytest.raises(RuntimeError, match=re.escape(str(path))):
        load_state_file(str(path))
    assert not marker.exists()
    good = tmp_path / "2.state"
    torch.save({"epoch": 0, "iter": 2, "optimizers": [], "schedulers": [{"milestones": __import__("collections").Counter({1: 1})}]}, good)
    assert load_state_file(str(good))["iter"] == 2
