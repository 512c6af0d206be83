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


# ------------------------------------------------- the shipped options files, tiny (test_basicsr_cli)
TINY_BACKBONE = {
    "nafnet": ["width=8", "enc_blk_nums=[1,1,1,1]"],
    "restormer": ["dim=8", "num_blocks=[1,1,1,1]", "num_refinement_blocks=1", "heads=[1,1,1,1]"],
    "convunet": ["width=8", "blocks_per_level=1"],
}
SHORT_RUN = ["train:total_iter=2", "val:val_freq=2", "logger:print_freq=1", "logger:save_checkpoint_freq=2",
             "datasets:train:batch_size_per_gpu=2", "datasets:train:gt_size=32", "datasets:train:num_worker_per_gpu=0",
             "datasets:val:gt_size=32"]
STAGE2 = [f"{family}_{variant}" for family in TINY_BACKBONE for variant in ("constyle", "origin")]


def overrides(name: str) -> List[str]:
    family, variant = name.split("_")
    prefix = "network_g:backbone:" if variant == "constyle" else "network_g:"
    return SHORT_RUN + [prefix + o for o in TINY_BACKBONE[family]]


def apply(opt: Dict, entries: List[str]) -> Dict:
    """``--force_yml`` semantics (BasicSR's value parsing) on a loaded options dict."""
    from basicsr.utils.options import _postprocess_yml_value

    for entry in entries:
        keys, value = entry.split("=")
        node = opt
        *parents, last = keys.split(":")
        for key in parents:
            node = node[key]
        node[last] = _postprocess_yml_value(value)
    return opt


def run(cwd: Path, *args: str, ok: bool = True, cpu: bool = False) -> subprocess.CompletedProcess:
    # One intra-op thread: the networks are tiny, and on a shared CPU two spinning OpenMP threads per
    # process make a run several times slower. cpu=True hides the GPUs (CUDA kernels are not
    # bit-for-bit deterministic, which a test of exact resumption must not depend on).
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}
    proc = subprocess.run(COMMAND + list(args), cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if ok and proc.returncode != 0:
        raise AssertionError(f"basicsr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def train_log(experiment: Path) -> str:
    logs = sorted(experiment.glob("train_*.log"))
    assert logs, f"no training log in {experiment}"
    return logs[-1].read_text()


def losses_by_iter(log: str) -> Dict[int, str]:
    """``{iter: 'l_pix: 1.2345e-02 ...'}`` from BasicSR's log lines."""
    found = {}
    for match in re.finditer(r"iter:\s*([\d,]+), lr:.*?\] (l_.*)$", log, flags=re.M):
        found[int(match.group(1).replace(",", ""))] = match.group(2).strip()
    return found
