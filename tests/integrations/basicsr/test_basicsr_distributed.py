"""``basicsr train --launcher pytorch`` on the CPU: 2 processes (gloo) through ``torch.distributed.run``,
a tiny NAFNet + ConStyle v2; both ranks finish, rank 0 writes the checkpoints, the prompter stays frozen.
"""
from __future__ import annotations

import re
import subprocess

import torch

from basicsr_runs import NAME, OPTIONS_DIR, losses_by_iter, tiny_options
from processes import NO_CUDA, quiet_env, torchrun, visible


def test_basicsr_launcher_pytorch_on_cpu_two_processes(tmp_path, photos, prompter_file):
    from constyle_plugin import ConStyleV2

    opts = tiny_options(photos, prompter_file, total_iter=2, ckpt_freq=2)
    proc = subprocess.run(torchrun("-m", "constyle_plugin.integrations.basicsr.cli", "train", "-opt",
                                    str(OPTIONS_DIR / "nafnet_constyle.yml"), "--launcher", "pytorch",
                                    "--force_yml", *opts),
                          cwd=tmp_path, capture_output=True, text=True, env=quiet_env(**NO_CUDA), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # both ranks exited 0
    assert "unused parameters" not in proc.stderr
    exp = tmp_path / "experiments" / NAME
    log = next(exp.glob("train_*.log")).read_text()
    assert re.search(r"^\s*dist: True$", log, re.M) and re.search(r"^\s*world_size: 2$", log, re.M)
    losses = losses_by_iter(log)
    assert set(losses) == {1, 2}
    assert all(float(v) == float(v) and abs(float(v)) < 1e6
               for line in losses.values() for v in re.findall(r"l_\w+: ([-\d.e+]+)", line))
    # each rank saved its generator state; the networks and the training state were written once,
    # by rank 0 (BasicSR's @master_only), and load
    assert visible(exp / "training_states") == ["2.rank0.rng", "2.rank1.rng", "2.state"]
    assert visible(exp / "models") == ["net_g_2.pth", "net_g_latest.pth"]
    ckpt = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    for key in ("params", "params_ema"):  # the prompter stayed frozen (BatchNorm buffers included)
        assert all(torch.equal(ckpt[key][f"prompter.{n}"], v) for n, v in reference.items()), key
    assert not any(k.startswith("module.") for k in ckpt["params"])
