"""``constyle train --launcher pytorch`` (MMEngine) on the CPU: 2 processes (gloo) through
``torch.distributed.run``; both ranks train, one checkpoint is written, the prompter stays frozen.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from processes import NO_CUDA, quiet_env, torchrun, visible

ROOT = Path(__file__).resolve().parents[3]


def test_mmengine_launcher_pytorch_on_cpu_two_processes(tmp_path, prompter_file):
    import uuid

    from constyle_plugin import ConStyleV2

    work = tmp_path / "work"
    opts = {
        "experiment_name": f"t{uuid.uuid4().hex[:12]}",
        "train_cfg.max_iters": 2, "train_cfg.val_interval": 100, "default_hooks.checkpoint.interval": 2,
        "default_hooks.logger.interval": 1, "model.backbone.width": 8, "model.backbone.enc_blk_nums": [1, 1, 1],
        "model.backbone.dec_blk_nums": [1, 1, 1], "model.probe_size": 64, "model.prompter.pretrained": prompter_file,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "train_dataloader.dataset.gt_size": 32,
    }
    cli_opts = [f"{k}={v}".replace(" ", "") for k, v in opts.items()]
    proc = subprocess.run(torchrun("-m", "constyle_plugin.cli", "train", str(ROOT / "options" / "mmengine" /
                                    "nafnet_constyle.py"), "--launcher", "pytorch", "--work-dir", str(work),
                                    "--cfg-options", *cli_opts),
                          cwd=tmp_path, capture_output=True, text=True, env=quiet_env(**NO_CUDA), timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "unused parameters" not in out
    logs = list(work.glob("*/*.log"))
    assert logs, out[-2000:]
    log = logs[0].read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log, log[:3000]  # world size 2
    losses = [float(v) for v in re.findall(r"Iter\(train\) \[\s*\d+/2\].*?\bloss: ([-\d.e+]+)", log)]
    assert len(losses) == 2 and all(abs(v) < 1e6 for v in losses), log[-2000:]
    assert visible(work).count("iter_2.pth") == 1
    from constyle_plugin.integrations.mmengine.runner import mmengine_checkpoint_globals

    with mmengine_checkpoint_globals():
        ckpt = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    state = ckpt["state_dict"]
    names = {n: [k for k in state if k.endswith("prompter." + n)] for n in reference}
    assert all(names.values()), [n for n, v in names.items() if not v][:5]
    assert all(torch.equal(state[k], reference[n]) for n, ks in names.items() for k in ks)
