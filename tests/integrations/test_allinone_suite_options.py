"""The ready options for the ConStyle v2 authors' suite: ``options/allinone/*_constyle_v2.yml`` (PyPI BasicSR).

Each file passes the ``basicsr`` command's own option check (its header's command line, then the parsed
options with the data roots on a miniature suite and miniature paired training folders); its recipe is the
authors' stage-2 recipe as ``options/{nafnet,restormer}_{constyle,origin}.yml`` hold it (the same ``train``
section, network, batch, patch and validation metrics); it validates on every column of the suite, in the
table's order, at the suite's crop; each origin twin is its ConStyle twin without the prompter. Then one tiny
real run through the real commands: ``basicsr train`` on the miniature suite (every task validated, a
checkpoint written) and ``constyle evaluate --benchmark constyle-v2`` on its checkpoint, whose numbers are the
ones validation logged.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import ENV, ROOT
from basicsr_runs import COMMAND as BASICSR
from layouts import make_constyle_v2_suite, picture, write

ensure_basicsr_importable()

SETTING = "constyle-v2"
OPTIONS_DIR = ROOT / "options"
NETS, VARIANTS = ("nafnet", "restormer"), ("constyle", "origin")
FILES = [OPTIONS_DIR / "allinone" / f"{net}_{variant}_constyle_v2.yml" for net in NETS for variant in VARIANTS]
# The training-set keys that carry the authors' recipe (the rest say where the data is and how it is read).
RECIPE_DATA_KEYS = ("gt_size", "use_hflip", "use_rot", "batch_size_per_gpu", "num_worker_per_gpu",
                    "dataset_enlarge_ratio")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _stage2(path: Path) -> Path:
    """The authors' stage-2 options file the suite file follows: options/<net>_<variant>.yml."""
    return OPTIONS_DIR / (path.stem.replace("_constyle_v2", "") + ".yml")


def _val_tasks(opt: dict) -> dict:
    return {phase: d for phase, d in opt["datasets"].items() if phase.startswith("val")}


def _header_line(path: Path, command: str) -> list:
    """The header's ``command`` line (continuations joined), split as a shell would."""
    header = re.sub(r"\\\n#\s*", " ", path.read_text())
    lines = [line.lstrip("# ").strip() for line in header.splitlines() if line.startswith(f"#   {command}")]
    assert len(lines) == 1, (path.name, command, lines)
    return shlex.split(lines[0])


def _paired_folders(root: Path, n: int = 2) -> tuple:
    """Miniature paired training folders as BasicSR's PairedImageDataset reads them: ``(hq, lq)``, one noisy
    input per clean picture, the same file name in both."""
    rng = np.random.default_rng(0)
    for i in range(n):
        clean = picture(200 + i)
        write(root / "hq" / f"{i:04d}.png", clean)
        write(root / "lq" / f"{i:04d}.png", np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1))
    return root / "hq", root / "lq"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """``(test root, (hq, lq))``: a miniature ``Test_small/`` and miniature paired training folders."""
    base = tmp_path_factory.mktemp("constyle_v2_suite")
    return make_constyle_v2_suite(base, n=2), _paired_folders(base / "train")


def test_the_ready_files_are_there():
    assert [p.name for p in FILES if p.is_file()] == [p.name for p in FILES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_suite_options_file_passes_the_basicsr_option_check(path, suite, monkeypatch):
    """The command's own checks: the header's ``basicsr train`` line (``check_command_line``: the -opt file,
    each --force_yml key exists) and the options it parses (``prepare_options``: types, option keys that nothing
    reads, the data roots, paired folders of equal size, the network) with the data roots on the miniature
    suite. Nothing warned. The header's evaluate line evaluates this run's checkpoint on the suite."""
    from basicsr.utils.options import ordered_yaml

    from constyle_plugin.integrations.basicsr import register
    from constyle_plugin.integrations.basicsr.cli import check_command_line, prepare_options

    register()
    monkeypatch.chdir(ROOT)
    forced = check_command_line(_header_line(path, "basicsr train")[2:])
    assert forced == {"datasets.train.dataroot_gt": "datasets:train:dataroot_gt=/data/mix_degradations/hq",
                      "datasets.train.dataroot_lq": "datasets:train:dataroot_lq=/data/mix_degradations/lq"}

    opt = yaml.load(path.read_text(), Loader=ordered_yaml()[0])
    evaluate = _header_line(path, "constyle evaluate")
    assert evaluate[evaluate.index("--benchmark") + 1] == SETTING
    assert evaluate[evaluate.index("--checkpoint") + 1] == f"experiments/{opt['name']}/models/net_g_latest.pth"

    test_root, (hq, lq) = suite
    opt["datasets"]["train"].update(dataroot_gt=str(hq), dataroot_lq=str(lq))
    for dataset in _val_tasks(opt).values():
        dataset["dataroot"] = str(test_root)
    opt.update(is_train=True, num_gpu=0)  # what parse_options sets; the CPU here
    if opt["network_g"]["type"] == "ConStyleUNet":  # a prompter file of the right format, built quickly
        opt["network_g"]["prompter"]["pretrained"] = None
    warned = []
    prepare_options(opt, warn=warned.append)
    assert warned == []


def test_the_option_check_refuses_the_placeholder_training_folders(suite, monkeypatch):
    """The control of the check above: the shipped placeholder folders do not exist here, and the check says so."""
    from basicsr.utils.options import ordered_yaml

    from constyle_plugin.integrations.basicsr import OptionError, register
    from constyle_plugin.integrations.basicsr.cli import prepare_options

    register()
    monkeypatch.chdir(ROOT)
    opt = yaml.load(FILES[1].read_text(), Loader=ordered_yaml()[0])
    for dataset in _val_tasks(opt).values():
        dataset["dataroot"] = str(suite[0])
    opt.update(is_train=True, num_gpu=0)
    with pytest.raises(OptionError, match=r"datasets\.train\.dataroot_(gt|lq).*datasets/mix_degradations/"):
        prepare_options(opt)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_recipe_is_the_authors_stage2_recipe(path):
    """The ``train`` section, the network, the run's model / seed / checkpoint key and the training set's
    patch, augmentation and batch are those of ``options/<net>_<variant>.yml`` (the authors' stage 2), so the
    suite file cannot drift from it; the training set is BasicSR's paired folders."""
    opt, authors = _load(path), _load(_stage2(path))
    assert opt["train"] == authors["train"]
    assert opt["network_g"] == authors["network_g"]
    for key in ("model_type", "scale", "num_gpu", "manual_seed"):
        assert opt[key] == authors[key], key
    assert opt["path"] == authors["path"]
    assert opt["val"]["val_freq"] == authors["val"]["val_freq"] and opt["val"]["metrics"] == authors["val"]["metrics"]
    assert opt["logger"]["save_checkpoint_freq"] == authors["logger"]["save_checkpoint_freq"]
    data = opt["datasets"]["train"]
    assert {k: data[k] for k in RECIPE_DATA_KEYS} == {k: authors["datasets"]["train"][k] for k in RECIPE_DATA_KEYS}
    assert (data["type"], data["filename_tmpl"]) == ("PairedImageDataset", "{}")
    assert set(data) >= {"dataroot_gt", "dataroot_lq"}
    # the numbers the header and the docs state
    assert (opt["train"]["total_iter"], data["batch_size_per_gpu"], data["gt_size"]) == (703632, 16, 128)
    assert opt["train"]["ema_decay"] == 0.999 and float(opt["train"]["optim_g"]["lr"]) == 3e-4


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_validation_is_the_suite_at_its_crop(path):
    """One ``val_<task>`` per column of the suite's table, in its order, every image of each set, and
    ``pad_multiple`` the suite's crop, so validation runs the images unpadded as ``constyle evaluate`` does."""
    from constyle_plugin.benchmark_layouts import CROP, TEST_TASKS

    opt = _load(path)
    vals = _val_tasks(opt)
    assert list(vals) == [f"val_{task}" for task in TEST_TASKS[SETTING]]
    assert [d["task"] for d in vals.values()] == list(TEST_TASKS[SETTING])
    assert all(d["type"] == "AllInOneTestDataset" and d["setting"] == SETTING and d["dataroot"] == "datasets/Test_small"
               and "max_images" not in d for d in vals.values())
    assert len({d["name"] for d in vals.values()}) == len(vals)  # each task's log line can be told apart
    assert opt["val"]["pad_multiple"] == CROP[SETTING][0]


@pytest.mark.parametrize("net", NETS)
def test_origin_twins_differ_only_in_the_network_and_name(net):
    directory = OPTIONS_DIR / "allinone"
    origin, constyle = (_load(directory / f"{net}_{v}_constyle_v2.yml") for v in VARIANTS[::-1])
    assert origin["network_g"] == constyle["network_g"]["backbone"]
    assert origin["name"] == constyle["name"].replace("ConStyle_v2", "origin") != constyle["name"]
    for opt in (origin, constyle):
        del opt["network_g"], opt["name"]
    assert origin == constyle


def test_restormer_and_nafnet_files_share_everything_but_the_backbone():
    directory = OPTIONS_DIR / "allinone"
    nafnet, restormer = (_load(directory / f"{net}_constyle_constyle_v2.yml") for net in NETS)
    assert (nafnet["network_g"]["backbone"]["type"], restormer["network_g"]["backbone"]["type"]) == ("NAFNet",
                                                                                                    "Restormer")
    for opt in (nafnet, restormer):
        del opt["network_g"]["backbone"], opt["name"]
    assert nafnet == restormer


def test_basicsr_train_constyle_v2_suite_then_evaluate_the_checkpoint(suite, prompter_file, tmp_path):
    """``basicsr train -opt options/allinone/nafnet_constyle_constyle_v2.yml`` on miniature paired training
    folders (tiny NAFNet, 2 iterations of 48 px patches), validating every task of a miniature suite once
    (one image each); then ``constyle evaluate --checkpoint`` its checkpoint ``--benchmark constyle-v2``:
    the eight columns in the table's order, each the PSNR validation logged."""
    path = FILES[0]
    opt = _load(path)
    test_root, (hq, lq) = suite
    force = ["num_gpu=auto", "train:total_iter=2", "val:val_freq=2", "logger:print_freq=1",
             "logger:save_checkpoint_freq=2", f"datasets:train:dataroot_gt={hq}", f"datasets:train:dataroot_lq={lq}",
             "datasets:train:batch_size_per_gpu=2", "datasets:train:gt_size=48", "datasets:train:num_worker_per_gpu=0",
             "network_g:backbone:width=8", "network_g:backbone:enc_blk_nums=[1,1,1,1]",
             f"network_g:prompter:pretrained={prompter_file}"]
    for phase in _val_tasks(opt):
        force += [f"datasets:{phase}:dataroot={test_root}", f"datasets:{phase}:max_images=1"]
    proc = subprocess.run(BASICSR + ["train", "-opt", str(path), "--force_yml", *force], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / "experiments" / opt["name"]
    log = next(experiment.glob("train_*.log")).read_text()
    assert re.search(r"iter:\s*2, lr:", log)
    logged = {}
    for dataset in _val_tasks(opt).values():  # each task validated, with its name in the log
        found = re.search(rf"Validation {re.escape(dataset['name'])}\n\s*# psnr: ([\d.]+)", log)
        assert found, dataset["name"]
        logged[dataset["task"]] = float(found.group(1))
    checkpoint = experiment / "models" / "net_g_latest.pth"
    assert checkpoint.is_file() and (experiment / "models" / "net_g_2.pth").is_file()

    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "constyle_plugin.cli", "evaluate", "--checkpoint", str(checkpoint),
                           "--benchmark", SETTING, "--root", str(test_root), "--output", str(out),
                           "--max-images", "1", "--samples", "0", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["benchmark"], metrics["channel"]) == (SETTING, "RGB")
    tasks = metrics["tasks"]
    assert list(tasks) == ["gopro", "sots", "rain", "cbsd68_25", "live1_20", "lol", "defocus", "snow"]
    assert all(tasks[t]["n_images"] == 1 and 0 < tasks[t]["psnr"] < 100 and 0 < tasks[t]["ssim"] <= 1 for t in tasks)
    assert math.isclose(metrics["average"]["psnr"], sum(t["psnr"] for t in tasks.values()) / len(tasks))
    for task, psnr in logged.items():  # the table's numbers are the ones validation logged
        assert abs(tasks[task]["psnr"] - psnr) < 6e-5, (task, tasks[task]["psnr"], psnr)
