"""Shared helpers for the tests of the ``constyle`` command (``constyle train`` on MMEngine,
``constyle restore``, ``constyle evaluate``): a tiny MMEngine run, a BasicSR experiment layout, a tiny
saved wrapped net, the command in a fresh interpreter or in this process. Fixtures built on them are in
``tests/conftest.py``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from constyle_plugin import cli

ROOT = Path(__file__).resolve().parents[1]
MMENGINE_CONFIG = ROOT / "options" / "mmengine" / "nafnet_constyle.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# A two-iteration run of a tiny NAFNet; the dataloaders keep the config's persistent_workers=True
# for training (and ask for it in validation) while running without workers.
TINY = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "model.backbone.width=8",
        "model.backbone.enc_blk_nums=[1,1,1]", "model.backbone.dec_blk_nums=[1,1,1]",
        "train_dataloader.batch_size=2", "train_dataloader.num_workers=0", "train_dataloader.dataset.gt_size=32",
        "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=True",
        "val_dataloader.dataset.gt_size=32"]
TINY_BASICSR = """# GENERATE TIME: Wed Nov 25 12:00:00 2026
# CMD:
# basicsr train -opt Tiny.yml

name: Tiny
model_type: ConStyleSRModel
network_g:
  type: ConStyleUNet
  backbone: {type: NAFNet, img_channel: 3, width: 8, middle_blk_num: 1, enc_blk_nums: [1, 1, 1, 1],
             dec_blk_nums: [1, 1, 1, 1]}
  prompter: {pretrained: ~}
  inject: [encoder, bottleneck]
"""
STRAY = "open({marker!r}, 'w').write('ran')\n"


def write_png(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def constyle(*args: str, cwd=None, user=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "constyle_plugin.cli", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), ENV.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def run_cli(capsys, *args: str):
    """``constyle ARGS`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


def save_tiny_trained_net(folder: Path) -> Path:
    """A tiny wrapped NAFNet (width 8) off its wrap-time identity (every weight but the prompter's moved by
    seeded noise), as ``save_pretrained`` writes it to ``folder``: what ``constyle evaluate`` tests measure."""
    import torch

    from constyle_plugin import wrap_unet
    from constyle_plugin.archs import NAFNet

    torch.manual_seed(0)
    net = wrap_unet(NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.startswith("prompter."):
                p.add_(0.01 * torch.randn_like(p))
    net.save_pretrained(folder)
    return folder
