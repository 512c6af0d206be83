"""A code-running checkpoint through every MMEngine and restore loading path runs nothing, even where
torch's default is unsafe loading.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` gives torch 2.14 the default of torch < 2.6 (which setup.cfg
allows): a ``torch.load`` that does not pass ``weights_only=True`` itself would run the payload.
The BasicSR paths (``pretrain_network_g`` / ``basicsr test``, forks included, and ``--auto_resume``)
are in ``tests/integrations/basicsr/test_basicsr_forks.py`` and ``test_basicsr_resume.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from payloads import RunsCodeOnLoad

ROOT = Path(__file__).resolve().parents[2]
UNSAFE_DEFAULT = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def constyle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "constyle_plugin.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **UNSAFE_DEFAULT})


@pytest.fixture
def evil(tmp_path: Path):
    marker = tmp_path / "ran"
    path = tmp_path / "iter_2.pth"
    torch.save({"meta": {}, "state_dict": {"net.x": torch.zeros(1)}, "message_hub": RunsCodeOnLoad(marker)}, path)
    return path, marker


def test_the_unsafe_default_is_really_in_force(evil):
    """The control: with the variable set, a plain torch.load runs the payload."""
    path, marker = evil
    code = f"import torch; torch.load({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **UNSAFE_DEFAULT}, capture_output=True, timeout=120)
    assert marker.exists()


TINY = [f"experiment_name=t{uuid.uuid4().hex[:12]}", "train_cfg.max_iters=2", "train_cfg.val_interval=100",
        "model.backbone.width=8", "model.backbone.enc_blk_nums=[1,1,1]", "model.backbone.dec_blk_nums=[1,1,1]",
        "model.probe_size=64", "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
        "train_dataloader.dataset.gt_size=32"]


@pytest.mark.parametrize("how", ["load_from", "resume"])
def test_constyle_train_load_from_and_resume_run_nothing(tmp_path, evil, how):
    path, marker = evil
    work = tmp_path / "work"
    work.mkdir()
    config = str(ROOT / "options" / "mmengine" / "nafnet_constyle.py")
    if how == "load_from":
        proc = constyle("train", config, "--work-dir", str(work), "--cfg-options", *TINY, f"load_from={path}",
                        cwd=tmp_path)
    else:
        proc = constyle("train", config, "--work-dir", str(work), "--resume", str(path), "--cfg-options", *TINY,
                        cwd=tmp_path)
    assert not marker.exists(), "the checkpoint's code ran"
    assert proc.returncode != 0
    assert "iter_2.pth" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("layout", ["basicsr", "mmengine"])
def test_constyle_restore_runs_nothing(tmp_path, layout):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "net_g_latest.pth"
    if layout == "basicsr":
        torch.save({"params": {"backbone.x": torch.zeros(1)}, "payload": RunsCodeOnLoad(marker)}, ckpt)
        config = tmp_path / "options.yml"
        config.write_text(yaml.safe_dump({"network_g": {"type": "NAFNet", "width": 8}}))
    else:
        torch.save({"meta": {}, "state_dict": {"net.x": torch.zeros(1)}, "message_hub": RunsCodeOnLoad(marker)}, ckpt)
        config = ROOT / "options" / "mmengine" / "nafnet_constyle.py"
    images = tmp_path / "in"
    images.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.png"), np.zeros((16, 16, 3), np.uint8))
    proc = constyle("restore", "--checkpoint", str(ckpt), "--config", str(config), "--input", str(images),
                    "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert not marker.exists(), "the checkpoint's code ran"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "net_g_latest.pth" in proc.stderr
