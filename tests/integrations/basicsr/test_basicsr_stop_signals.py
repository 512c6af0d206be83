"""``basicsr train`` on SIGINT / SIGTERM: the current iteration finishes, a resumable state is written
(networks, training state, generator states, atomically, as a scheduled checkpoint), one line says
where and how to resume, and the exit status is 130 / 143; ``--auto_resume`` then continues exactly
as an uninterrupted run. Tiny NAFNet, a few iterations, one thread."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import torch

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import BASICSR_MAIN, NAME, OPTIONS_DIR, losses_by_iter, tiny_options
from processes import quiet_env
from stop_signals import signal_when

ensure_basicsr_importable()

CMD = [sys.executable, "-c", BASICSR_MAIN, "train", "-opt", str(OPTIONS_DIR / "nafnet_constyle.yml")]


def logged(iteration: int):
    return lambda out: bool(re.search(rf"iter:\s+{iteration}, lr", out))


def test_sigint_saves_after_the_current_iteration_and_auto_resume_continues_exactly(tmp_path, photos, prompter_file):
    opts = tiny_options(photos, prompter_file, total_iter=7, ckpt_freq=100)  # no scheduled checkpoint
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    experiment = run_dir / "experiments" / NAME
    code, out = signal_when(CMD + ["--force_yml", *opts], run_dir, logged(2), signal.SIGINT)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    stopped = re.search(r"basicsr train: stopped by SIGINT after iteration (\d+); saved (.*)\. Resume with: "
                        r"basicsr train (.*)$", out, flags=re.M)
    assert stopped, out[-3000:]
    k = int(stopped.group(1))
    assert 2 <= k < 7, k
    assert f"models/net_g_{k}.pth" in stopped.group(2) and f"training_states/{k}.state" in stopped.group(2)
    assert stopped.group(3).endswith("--auto_resume")
    states = experiment / "training_states"
    assert sorted(p.name for p in states.iterdir()) == [f"{k}.rank0.rng", f"{k}.state"]  # no temporary files
    assert sorted(p.name for p in (experiment / "models").iterdir()) == [f"net_g_{k}.pth"]
    before = losses_by_iter(out)
    assert max(before) <= k

    proc = subprocess.run(CMD + ["--force_yml", *opts, "--auto_resume"], cwd=run_dir, capture_output=True,
                          text=True, env=quiet_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = [p.read_text() for p in sorted(experiment.glob("train_*.log")) if "Resuming training" in p.read_text()]
    assert len(resumed) == 1 and f"Resuming training from epoch: 0, iter: {k}." in resumed[0]
    again = losses_by_iter(resumed[0])
    assert sorted(again) == list(range(k + 1, 8))

    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref = subprocess.run(CMD + ["--force_yml", *opts], cwd=ref_dir, capture_output=True, text=True,
                         env=quiet_env(), timeout=400)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = losses_by_iter(next((ref_dir / "experiments" / NAME).glob("train_*.log")).read_text())
    assert {i: before[i] for i in before} == {i: reference[i] for i in before}
    assert {i: again[i] for i in again} == {i: reference[i] for i in again}
    a = torch.load(experiment / "models" / "net_g_latest.pth", weights_only=True)
    b = torch.load(ref_dir / "experiments" / NAME / "models" / "net_g_latest.pth", weights_only=True)
    for key in ("params", "params_ema"):
        assert all(torch.equal(a[key][n], b[key][n]) for n in b[key]), key


def test_sigterm_saves_and_exits_143(tmp_path, photos, prompter_file):
    opts = tiny_options(photos, prompter_file, total_iter=50, ckpt_freq=100)
    code, out = signal_when(CMD + ["--force_yml", *opts], tmp_path, logged(1), signal.SIGTERM)
    assert code == 143, out[-3000:]
    assert "Traceback" not in out
    k = int(re.search(r"stopped by SIGTERM after iteration (\d+)", out).group(1))
    assert (tmp_path / "experiments" / NAME / "training_states" / f"{k}.state").is_file()
    assert (tmp_path / "experiments" / NAME / "models" / f"net_g_{k}.pth").is_file()
