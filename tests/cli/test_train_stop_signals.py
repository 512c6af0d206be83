"""``constyle train`` (MMEngine) on SIGINT / SIGTERM: the current iteration finishes, its checkpoint is
saved as the CheckpointHook saves a scheduled one (same contents, ``last_checkpoint`` naming it), one
line says where and how to resume, the exit status is 130 / 143, and ``--resume`` then continues as
the uninterrupted run does. A tiny NAFNet, a few iterations, one thread."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

from cli_runs import MMENGINE_CONFIG, ROOT, TINY
from processes import quiet_env
from stop_signals import signal_when

CMD = [sys.executable, "-m", "constyle_plugin.cli", "train", str(MMENGINE_CONFIG)]
SIX = [o if not o.startswith("train_cfg.max_iters") else "train_cfg.max_iters=6" for o in TINY]
SIX = [o if not o.startswith("train_cfg.val_interval") else "train_cfg.val_interval=100" for o in SIX]
EVERY = ["default_hooks.logger.interval=1", "default_hooks.checkpoint.save_best=None",
         "default_hooks.checkpoint.max_keep_ckpts=-1"]


def env():
    return quiet_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def train_losses(text: str):
    return {int(m.group(1)): m.group(2) for m in
            re.finditer(r"Iter\(train\) \[\s*(\d+)/\d+\].*?\sloss: (\S+)", text)}


def logged(iteration: int):
    return lambda out: bool(re.search(rf"Iter\(train\) \[\s*{iteration}/6\]", out))


def test_sigint_saves_a_scheduled_checkpoint_and_resume_continues_as_the_uninterrupted_run(tmp_path):
    work = tmp_path / "stopped"
    args = ["--work-dir", str(work), "--cfg-options", *SIX, *EVERY, "default_hooks.checkpoint.interval=100"]
    code, out = signal_when(CMD + args, tmp_path, logged(2), signal.SIGINT)
    assert code == 130, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    stopped = re.search(r"constyle train: stopped by SIGINT after iteration (\d+); saved (\S+)\. Resume with: "
                        r"constyle (.*)$", out, flags=re.M)
    assert stopped, out[-4000:]
    k = int(stopped.group(1))
    assert 2 <= k < 6
    assert Path(stopped.group(2)) == work / f"iter_{k}.pth"
    assert stopped.group(3).endswith("--resume")
    assert sorted(p.name for p in work.glob("*.pth")) == [f"iter_{k}.pth"]
    assert Path((work / "last_checkpoint").read_text().strip()) == work / f"iter_{k}.pth"
    before = train_losses(out)

    resumed = subprocess.run(CMD + args + ["--resume"], cwd=tmp_path, capture_output=True, text=True, env=env(),
                             timeout=400)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert f"resumed epoch: 0, iter: {k}" in output
    again = train_losses(output)
    assert sorted(again) == list(range(k + 1, 7))

    ref = tmp_path / "reference"  # uninterrupted, with a scheduled checkpoint at every iteration
    proc = subprocess.run(CMD + ["--work-dir", str(ref), "--cfg-options", *SIX, *EVERY,
                                 "default_hooks.checkpoint.interval=1"],
                          cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    reference = train_losses(proc.stdout + proc.stderr)
    assert {i: before[i] for i in before} == {i: reference[i] for i in before}
    assert again == {i: reference[i] for i in again}

    mine = torch.load(work / f"iter_{k}.pth", map_location="cpu", weights_only=False)
    scheduled = torch.load(ref / f"iter_{k}.pth", map_location="cpu", weights_only=False)
    assert set(mine) == set(scheduled)
    assert (mine["meta"]["iter"], mine["meta"]["epoch"]) == (scheduled["meta"]["iter"], scheduled["meta"]["epoch"])
    assert all(torch.equal(mine["state_dict"][n], t) for n, t in scheduled["state_dict"].items())
    assert mine["param_schedulers"] == scheduled["param_schedulers"]
    assert mine["optimizer"]["param_groups"] == scheduled["optimizer"]["param_groups"]
    for i, state in scheduled["optimizer"]["state"].items():
        assert all(torch.equal(mine["optimizer"]["state"][i][n], v) for n, v in state.items())
    last = [torch.load(d / "iter_6.pth", map_location="cpu", weights_only=False)["state_dict"] for d in (work, ref)]
    assert all(torch.equal(last[0][n], t) for n, t in last[1].items())


def test_sigterm_saves_and_exits_143(tmp_path):
    work = tmp_path / "w"
    longer = [o if not o.startswith("train_cfg.max_iters") else "train_cfg.max_iters=100" for o in SIX]
    code, out = signal_when(CMD + ["--work-dir", str(work), "--cfg-options", *longer, *EVERY,
                                   "default_hooks.checkpoint.interval=1000"],
                            tmp_path, lambda o: bool(re.search(r"Iter\(train\) \[\s*1/100\]", o)), signal.SIGTERM)
    assert code == 143, out[-4000:]
    assert "Traceback" not in out
    k = int(re.search(r"stopped by SIGTERM after iteration (\d+)", out).group(1))
    assert (work / f"iter_{k}.pth").is_file()
