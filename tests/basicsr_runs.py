"""Shared helpers for the tests that run the ``basicsr`` command on a tiny NAFNet + ConStyle v2 (the
PyPI BasicSR): options, overrides that make a run tiny, the command in a fresh interpreter, and
readers of its logs. Fixtures (``photos``, ``prompter_file``) are in ``tests/conftest.py``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import yaml

ROOT = Path(__file__).resolve().parents[1]
OPTIONS_DIR = ROOT / "options"
OPTIONS = OPTIONS_DIR / "nafnet_constyle.yml"
BASICSR_MAIN = "import sys; from constyle_plugin.integrations.basicsr.cli import main; sys.exit(main())"
COMMAND = [sys.executable, "-c", BASICSR_MAIN]
NAME = "NAFNet_ConStyle_v2"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny(photos: Path, prompter_file: Path, total_iter: int = 4, ckpt_freq: int = 2) -> List[str]:
    return [f"train:total_iter={total_iter}", "val:val_freq=1000", "logger:print_freq=1",
            f"logger:save_checkpoint_freq={ckpt_freq}", "datasets:train:batch_size_per_gpu=2",
            "datasets:train:gt_size=32", "datasets:train:num_worker_per_gpu=0", "datasets:val:gt_size=32",
            "datasets:train:repeat=1", f"datasets:train:sample_dir={photos}", f"datasets:val:sample_dir={photos}",
            "datasets:val:photos=['camera']", "network_g:backbone:width=8", "network_g:backbone:enc_blk_nums=[1,1,1,1]",
            f"network_g:prompter:pretrained={prompter_file}"]


def basicsr(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(COMMAND + list(args), cwd=cwd, capture_output=True, text=True, env=ENV, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, and ONE error line naming every fragment; returns that line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error in the options" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def refused_here(capsys, cwd: Path, monkeypatch, *args: str, fragments=()) -> str:
    """The same as :func:`refused`, running the command's ``main`` in this process (for refusals that
    come before anything is built)."""
    from constyle_plugin.integrations.basicsr.cli import main

    monkeypatch.chdir(cwd)
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    return refused(subprocess.CompletedProcess(args, 2, "", err), *fragments)


def losses(log: str) -> Dict[int, str]:
    return {int(m.group(1).replace(",", "")): m.group(2)
            for m in re.finditer(r"iter:\s*([\d,]+), lr:\(([^)]*)\)\]", log)}


def logs(run_dir: Path) -> List[str]:
    return [p.read_text() for p in sorted((run_dir / "experiments" / NAME).glob("train_*.log"))]


def options_file(tmp_path: Path, edit) -> Path:
    opt = yaml.safe_load(OPTIONS.read_text())
    edit(opt)
    path = tmp_path / "edited.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path



def tiny_options(photos: Path, prompter_file: Path, total_iter: int, ckpt_freq: int) -> List[str]:
    return [f"train:total_iter={total_iter}", f"val:val_freq={10 * total_iter}", "logger:print_freq=1",
            f"logger:save_checkpoint_freq={ckpt_freq}", "datasets:train:batch_size_per_gpu=2",
            "datasets:train:gt_size=32", "datasets:train:num_worker_per_gpu=0", "datasets:val:gt_size=32",
            f"datasets:train:sample_dir={photos}", f"datasets:val:sample_dir={photos}",
            "network_g:backbone:width=8", "network_g:backbone:enc_blk_nums=[1,1,1,1]",
            f"network_g:prompter:pretrained={prompter_file}"]


def log_losses(log: str):
    """``{iter: 'l_pix: ...'}`` from BasicSR's log lines."""
    return {int(m.group(1).replace(",", "")): m.group(2).strip()
            for m in re.finditer(r"iter:\s*([\d,]+), lr:.*?\] (l_.*)$", log, flags=re.M)}
