"""Shared by the all-in-one options tests: the ready files' validation entries and header commands, and tiny
runs of those files through the real commands (``basicsr train``, ``constyle train``, ``constyle evaluate``)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

from basicsr_runs import COMMAND as BASICSR
from basicsr_runs import ENV

# A tiny NAFNet and two iterations of 48 px patches; the data options come from each test.
TINY_BASICSR = ["num_gpu=auto", "train:total_iter=2", "val:val_freq=2", "logger:print_freq=1",
                "logger:save_checkpoint_freq=2", "datasets:train:batch_size_per_gpu=2", "datasets:train:gt_size=48",
                "datasets:train:num_worker_per_gpu=0", "network_g:backbone:width=8",
                "network_g:backbone:enc_blk_nums=[1,1,1,1]"]
TINY_MMENGINE = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
                 "default_hooks.logger.interval=1", "model.backbone.width=8", "model.backbone.enc_blk_nums=[1,1,1]",
                 "model.backbone.dec_blk_nums=[1,1,1]", "train_dataloader.batch_size=2",
                 "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                 "train_dataloader.dataset.gt_size=48", "val_dataloader.num_workers=0",
                 "val_dataloader.dataset.max_images=1"]


def load_options(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def parsed_options(path: Path) -> dict:
    """The options file as BasicSR's parser reads it (its ordered YAML loader)."""
    from basicsr.utils.options import ordered_yaml

    return yaml.load(path.read_text(), Loader=ordered_yaml()[0])


def option_check_warnings(opt: dict) -> List[str]:
    """The ``basicsr`` command's own option check (``prepare_options``) on ``opt`` as ``parse_options``
    leaves it, on the CPU, with the packaged prompter (a file of the right format, built quickly): the
    warnings it gave. An option it refuses raises ``OptionError``."""
    from constyle_plugin.integrations.basicsr import register
    from constyle_plugin.integrations.basicsr.cli import prepare_options

    register()
    opt.update(is_train=True, num_gpu=0)
    if opt["network_g"]["type"] == "ConStyleUNet":
        opt["network_g"]["prompter"]["pretrained"] = None
    warned: List[str] = []
    prepare_options(opt, warn=warned.append)
    return warned


def val_tasks(opt: dict) -> dict:
    """``{phase: dataset}`` of a BasicSR options dict's validation sets."""
    return {phase: d for phase, d in opt["datasets"].items() if phase.startswith("val")}


def header_command(path: Path, command: str) -> List[str]:
    """The file's header line running ``command`` (continuations joined), split as a shell would."""
    header = re.sub(r"\\\n#\s*", " ", path.read_text())
    lines = [line.lstrip("# ").strip() for line in header.splitlines() if line.startswith(f"#   {command}")]
    assert len(lines) == 1, (path.name, command, lines)
    return shlex.split(lines[0])


def basicsr_train_tiny(path: Path, cwd: Path, prompter_file: Path, test_root: Path,
                       extra: Sequence[str]) -> subprocess.CompletedProcess:
    """``basicsr train -opt path`` with :data:`TINY_BASICSR`, the test's own ``--force_yml`` items ``extra``
    (the training set's roots, ...) and every validation set on ``test_root``, one image each."""
    force = [*TINY_BASICSR, *extra, f"network_g:prompter:pretrained={prompter_file}"]
    for phase in val_tasks(load_options(path)):
        force += [f"datasets:{phase}:dataroot={test_root}", f"datasets:{phase}:max_images=1"]
    return subprocess.run(BASICSR + ["train", "-opt", str(path), "--force_yml", *force], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=600)


def logged_validation_psnr(log: str, opt: dict) -> Dict[str, float]:
    """``{task: PSNR}`` of each validation set, as a BasicSR log names it (asserting each is there)."""
    logged = {}
    for dataset in val_tasks(opt).values():
        found = re.search(rf"Validation {re.escape(dataset['name'])}\n\s*# psnr: ([\d.]+)", log)
        assert found, dataset["name"]
        logged[dataset["task"]] = float(found.group(1))
    return logged


def constyle_train_tiny(config: Path, cwd: Path, work: Path, prompter_file: Path,
                        data: Sequence[str]) -> subprocess.CompletedProcess:
    """``constyle train config`` with :data:`TINY_MMENGINE` and ``data`` (the data roots' ``--cfg-options``)."""
    return subprocess.run([sys.executable, "-m", "constyle_plugin.cli", "train", str(config), "--work-dir", str(work),
                           "--cfg-options", *TINY_MMENGINE, f"model.prompter.pretrained={prompter_file}", *data],
                          cwd=cwd, capture_output=True, text=True, env=ENV, timeout=600)


def evaluate_benchmark(checkpoint: Path, setting: str, root: Path, out: Path, cwd: Path) -> dict:
    """``constyle evaluate --benchmark setting`` on the first image of each test set: its metrics.json."""
    proc = subprocess.run([sys.executable, "-m", "constyle_plugin.cli", "evaluate", "--checkpoint", str(checkpoint),
                           "--benchmark", setting, "--root", str(root), "--output", str(out), "--max-images", "1",
                           "--samples", "0", "--device", "cpu"], cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())
