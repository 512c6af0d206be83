"""The ready options for the ConStyle v2 authors' suite: ``options/allinone/*_constyle_v2.yml`` (PyPI BasicSR) and
their MMEngine twins ``options/mmengine/allinone/*_constyle_v2.py``.

Each BasicSR file passes the ``basicsr`` command's own option check (its header's command line, then the parsed
options with the data roots on a miniature suite and miniature paired training folders); its recipe is the
authors' stage-2 recipe as ``options/{nafnet,restormer}_{constyle,origin}.yml`` hold it (the same ``train``
section, network, batch, patch and validation metrics); it validates on every column of the suite, in the
table's order, at the suite's crop; each origin twin is its ConStyle twin without the prompter. Each MMEngine
config is the authors' stage-2 MMEngine config (``options/mmengine/nafnet_constyle.py``) with the data swapped:
everything else compares equal to it. Then tiny real runs through the real commands: ``basicsr train`` and
``constyle train`` on the miniature suite (every task validated, a checkpoint written) and ``constyle evaluate
--benchmark constyle-v2`` on each checkpoint, whose numbers are the ones validation logged.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from constyle_plugin.compat import ensure_basicsr_importable

from allinone_runs import (basicsr_train_tiny, constyle_train_tiny, evaluate_benchmark, header_command,
                           load_options, logged_validation_psnr, option_check_warnings, parsed_options, val_tasks)
from basicsr_runs import ROOT
from layouts import make_constyle_v2_suite, picture, write

ensure_basicsr_importable()

SETTING = "constyle-v2"
OPTIONS_DIR = ROOT / "options"
NETS, VARIANTS = ("nafnet", "restormer"), ("constyle", "origin")
FILES = [OPTIONS_DIR / "allinone" / f"{net}_{variant}_constyle_v2.yml" for net in NETS for variant in VARIANTS]
# The training-set keys that carry the authors' recipe (the rest say where the data is and how it is read).
RECIPE_DATA_KEYS = ("gt_size", "use_hflip", "use_rot", "batch_size_per_gpu", "num_worker_per_gpu",
                    "dataset_enlarge_ratio")
MMENGINE_DIR = OPTIONS_DIR / "mmengine"
MMENGINE_FILES = [MMENGINE_DIR / "allinone" / f"{net}_{variant}_constyle_v2.py" for net in NETS for variant in VARIANTS]
# The keys of an MMEngine suite config's header command line: where the data is.
MMENGINE_DATA_OPTIONS = ("train_dataloader.dataset.lq_folder", "train_dataloader.dataset.gt_folder",
                         "val_dataloader.dataset.dataroot")


def _stage2(path: Path) -> Path:
    """The authors' stage-2 options file the suite file follows: options/<net>_<variant>.yml."""
    return OPTIONS_DIR / (path.stem.replace("_constyle_v2", "") + ".yml")


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
    from constyle_plugin.integrations.basicsr.cli import check_command_line

    monkeypatch.chdir(ROOT)
    forced = check_command_line(header_command(path, "basicsr train")[2:])
    assert forced == {"datasets.train.dataroot_gt": "datasets:train:dataroot_gt=/data/mix_degradations/hq",
                      "datasets.train.dataroot_lq": "datasets:train:dataroot_lq=/data/mix_degradations/lq"}

    opt = parsed_options(path)
    evaluate = header_command(path, "constyle evaluate")
    assert evaluate[evaluate.index("--benchmark") + 1] == SETTING
    assert evaluate[evaluate.index("--checkpoint") + 1] == f"experiments/{opt['name']}/models/net_g_latest.pth"

    test_root, (hq, lq) = suite
    opt["datasets"]["train"].update(dataroot_gt=str(hq), dataroot_lq=str(lq))
    for dataset in val_tasks(opt).values():
        dataset["dataroot"] = str(test_root)
    assert option_check_warnings(opt) == []


def test_the_option_check_refuses_the_placeholder_training_folders(suite, monkeypatch):
    """The control of the check above: the shipped placeholder folders do not exist here, and the check says so."""
    from constyle_plugin.integrations.basicsr import OptionError

    monkeypatch.chdir(ROOT)
    opt = parsed_options(FILES[1])
    for dataset in val_tasks(opt).values():
        dataset["dataroot"] = str(suite[0])
    with pytest.raises(OptionError, match=r"datasets\.train\.dataroot_(gt|lq).*datasets/mix_degradations/"):
        option_check_warnings(opt)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_recipe_is_the_authors_stage2_recipe(path):
    """The ``train`` section, the network, the run's model / seed / checkpoint key and the training set's
    patch, augmentation and batch are those of ``options/<net>_<variant>.yml`` (the authors' stage 2), so the
    suite file cannot drift from it; the training set is BasicSR's paired folders."""
    opt, authors = load_options(path), load_options(_stage2(path))
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
    from constyle_plugin.data.benchmark_layouts import CROP, TEST_TASKS

    opt = load_options(path)
    vals = val_tasks(opt)
    assert list(vals) == [f"val_{task}" for task in TEST_TASKS[SETTING]]
    assert [d["task"] for d in vals.values()] == list(TEST_TASKS[SETTING])
    assert all(d["type"] == "AllInOneTestDataset" and d["setting"] == SETTING and d["dataroot"] == "datasets/Test_small"
               and "max_images" not in d for d in vals.values())
    assert len({d["name"] for d in vals.values()}) == len(vals)  # each task's log line can be told apart
    assert opt["val"]["pad_multiple"] == CROP[SETTING][0]


@pytest.mark.parametrize("net", NETS)
def test_origin_twins_differ_only_in_the_network_and_name(net):
    directory = OPTIONS_DIR / "allinone"
    origin, constyle = (load_options(directory / f"{net}_{v}_constyle_v2.yml") for v in VARIANTS[::-1])
    assert origin["network_g"] == constyle["network_g"]["backbone"]
    assert origin["name"] == constyle["name"].replace("ConStyle_v2", "origin") != constyle["name"]
    for opt in (origin, constyle):
        del opt["network_g"], opt["name"]
    assert origin == constyle


def test_restormer_and_nafnet_files_share_everything_but_the_backbone():
    directory = OPTIONS_DIR / "allinone"
    nafnet, restormer = (load_options(directory / f"{net}_constyle_constyle_v2.yml") for net in NETS)
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
    opt = load_options(path)
    test_root, (hq, lq) = suite
    proc = basicsr_train_tiny(path, tmp_path, prompter_file, test_root,
                              [f"datasets:train:dataroot_gt={hq}", f"datasets:train:dataroot_lq={lq}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / "experiments" / opt["name"]
    log = next(experiment.glob("train_*.log")).read_text()
    assert re.search(r"iter:\s*2, lr:", log)
    logged = logged_validation_psnr(log, opt)  # each task validated, with its name in the log
    checkpoint = experiment / "models" / "net_g_latest.pth"
    assert checkpoint.is_file() and (experiment / "models" / "net_g_2.pth").is_file()

    metrics = evaluate_benchmark(checkpoint, SETTING, test_root, tmp_path / "eval", tmp_path)
    assert (metrics["benchmark"], metrics["channel"]) == (SETTING, "RGB")
    tasks = metrics["tasks"]
    assert list(tasks) == ["gopro", "sots", "rain", "cbsd68_25", "live1_20", "lol", "defocus", "snow"]
    assert all(tasks[t]["n_images"] == 1 and 0 < tasks[t]["psnr"] < 100 and 0 < tasks[t]["ssim"] <= 1 for t in tasks)
    assert math.isclose(metrics["average"]["psnr"], sum(t["psnr"] for t in tasks.values()) / len(tasks))
    for task, psnr in logged.items():  # the table's numbers are the ones validation logged
        assert abs(tasks[task]["psnr"] - psnr) < 6e-5, (task, tasks[task]["psnr"], psnr)


# ------------------------------------------------------------------------------------------------ MMEngine
def _config(path: Path):
    from mmengine import Config

    return Config.fromfile(str(path))


def _mmengine_stage2(path: Path) -> Path:
    """The authors' stage-2 MMEngine config a suite config follows: options/mmengine/nafnet_<variant>.py (the
    Restormer configs swap the backbone only)."""
    return MMENGINE_DIR / ("nafnet_origin.py" if "_origin_" in path.stem else "nafnet_constyle.py")


def _without_data(cfg: dict) -> dict:
    """A config as a dict without what says where the data is and how validation reads it."""
    cfg = copy.deepcopy(cfg)
    for key in ("train_lq", "train_gt", "test_root"):
        cfg.pop(key, None)
    for loader in ("train_dataloader", "val_dataloader"):
        cfg[loader].pop("dataset")
    cfg.pop("val_evaluator")
    return cfg


def test_the_mmengine_twins_are_there():
    assert [p.name for p in MMENGINE_FILES if p.is_file()] == [p.name for p in MMENGINE_FILES]
    assert sorted(p.name for p in (MMENGINE_DIR / "allinone").glob("*_constyle_v2.py")) == sorted(
        p.name for p in MMENGINE_FILES)
    assert [p.stem for p in MMENGINE_FILES] == [p.stem for p in FILES]  # one twin per BasicSR suite file


@pytest.mark.parametrize("path", MMENGINE_FILES, ids=lambda p: p.stem)
def test_every_mmengine_suite_config_keeps_the_authors_stage2_recipe(path):
    """Everything but the data (runtime, optimiser, schedule, EMA hook, iterations, checkpoints, batch, workers,
    sampler, model, preprocessor) equals ``options/mmengine/nafnet_<variant>.py``'s, so the suite config cannot
    drift from it; the training set is paired folders with the authors' patch and augmentations."""
    cfg, authors = _config(path), _config(_mmengine_stage2(path))
    mine, theirs = _without_data(cfg.to_dict()), _without_data(authors.to_dict())
    if path.stem.startswith("restormer"):  # the Restormer of the three-task configs
        restormer = _config(MMENGINE_DIR / "allinone" / "restormer_constyle_three_task.py")
        assert mine["model"].pop("backbone") == restormer.model.backbone.to_dict()
        assert theirs["model"].pop("backbone")["type"] == "NAFNet"
    assert mine == theirs

    # the recipe the header states, read from the config (so the comparison above compares something)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ("AdamW", 3e-4, 1e-4)
    assert [(h.type, h.momentum) for h in cfg.custom_hooks] == [("EMAHook", 0.001)]  # EMA 0.999
    (cosine,) = cfg.param_scheduler
    assert (cosine.type, cosine.T_max, cosine.eta_min) == ("CosineAnnealingLR", cfg.train_cfg.max_iters, 1e-6)
    assert cfg.train_cfg.max_iters == authors.train_cfg.max_iters and cfg.train_dataloader.batch_size == 16
    assert (cfg.model.prompter is None) == ("_origin_" in path.stem)

    data, their_data = cfg.train_dataloader.dataset, authors.train_dataloader.dataset
    assert (data.type, data.phase, data.filename_tmpl) == ("PairedFolderDataset", "train", "{}")
    assert [data[k] for k in ("gt_size", "use_hflip", "use_rot")] == [their_data[k] for k in ("gt_size", "use_hflip",
                                                                                               "use_rot")]
    assert (data.lq_folder, data.gt_folder) == ("datasets/mix_degradations/lq", "datasets/mix_degradations/hq")
    assert cfg.val_evaluator == [dict(type="PSNR"), dict(type="SSIM")]  # RGB, as constyle evaluate's table


@pytest.mark.parametrize("path", MMENGINE_FILES, ids=lambda p: p.stem)
def test_mmengine_suite_config_validates_every_task_unpadded(path, suite, prompter_file):
    """One validation dataloader over every test set of the suite (the table's columns, in order, every image),
    and the built model's preprocessor pads to the suite's crop multiple, so no image of the miniature suite is
    padded: validation sees what ``constyle evaluate`` sees."""
    from constyle_plugin.data.benchmark_layouts import CROP, TEST_TASKS
    from constyle_plugin.integrations.mmengine import DATASETS, MODELS

    cfg = _config(path)
    val = cfg.val_dataloader.dataset
    assert (val.type, val.setting, val.dataroot, val.task) == ("AllInOneTestDataset", SETTING, "datasets/Test_small",
                                                             None)
    assert "max_images" not in val and cfg.val_dataloader.batch_size == 1
    assert cfg.model.data_preprocessor.size_multiple == CROP[SETTING][0]

    dataset = DATASETS.build(dict(val.to_dict(), dataroot=str(suite[0])))
    assert dataset.metainfo["tasks"] == list(TEST_TASKS[SETTING]) and dataset.metainfo["sizes"] == [2] * 8
    if cfg.model.prompter is not None:
        cfg.model.prompter.pretrained = str(prompter_file)
    model = MODELS.build(cfg.model)
    assert model.data_preprocessor.multiple == CROP[SETTING][0]
    heights = set()
    for i in range(len(dataset)):
        item = dataset[i]
        out = model.data_preprocessor({"inputs": [item["inputs"]], "data_samples": [item["data_samples"]]})
        (sample,) = out["data_samples"]
        assert tuple(sample.metainfo["pad_shape"]) == tuple(sample.metainfo["ori_shape"]), item["data_samples"].task
        heights.add(sample.metainfo["ori_shape"][0])
    assert len(heights) > 1  # images of several sizes went through


@pytest.mark.parametrize("path", MMENGINE_FILES, ids=lambda p: p.stem)
def test_mmengine_header_commands_pass_the_config_check(path, suite, prompter_file):
    """The header's ``constyle train`` line sets the data folders by keys the config has; with them on the
    miniature suite the runner's config check passes, and with the shipped placeholder folders it names the
    training folders. The header's evaluate line evaluates that run's last checkpoint on the suite."""
    from constyle_plugin.integrations.mmengine import ConfigError, check_config

    train = header_command(path, "constyle train")
    assert train[2] == path.relative_to(ROOT).as_posix()
    options = dict(item.split("=", 1) for item in train[train.index("--cfg-options") + 1:])
    assert tuple(options) == MMENGINE_DATA_OPTIONS
    evaluate = header_command(path, "constyle evaluate")
    cfg = _config(path)
    assert evaluate[evaluate.index("--benchmark") + 1] == SETTING
    assert evaluate[evaluate.index("--root") + 1] == options["val_dataloader.dataset.dataroot"]
    assert evaluate[evaluate.index("--checkpoint") + 1] == f"work_dirs/{path.stem}/iter_{cfg.train_cfg.max_iters}.pth"

    if cfg.model.prompter is not None:
        cfg.model.prompter.pretrained = str(prompter_file)
    placeholders = copy.deepcopy(cfg)
    test_root, (hq, lq) = suite
    cfg.merge_from_dict(dict(zip(MMENGINE_DATA_OPTIONS, (str(lq), str(hq), str(test_root)))))
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"train_dataloader\.dataset\.lq_folder.*datasets/mix_degradations/lq"):
        check_config(placeholders)


def test_mmengine_origin_twins_are_constyle_without_the_prompter():
    directory = MMENGINE_DIR / "allinone"
    for net in NETS:
        origin, constyle = (_config(directory / f"{net}_{v}_constyle_v2.py").to_dict() for v in VARIANTS[::-1])
        assert origin["model"].pop("prompter") is None and constyle["model"].pop("prompter") is not None
        assert origin == constyle, net


@pytest.fixture(scope="module")
def mmengine_suite_run(suite, prompter_file, tmp_path_factory):
    """``constyle train options/mmengine/allinone/nafnet_constyle_constyle_v2.py`` on miniature paired training
    folders (tiny NAFNet, 2 iterations of 48 px patches, the authors' EMA), validating every task of the
    miniature suite once (one image each): ``(work dir, the finished process)``."""
    test_root, (hq, lq) = suite
    base = tmp_path_factory.mktemp("mmengine_suite_run")
    work = base / "work"
    proc = constyle_train_tiny(MMENGINE_FILES[0], base, work, prompter_file,
                               [f"train_dataloader.dataset.lq_folder={lq}", f"train_dataloader.dataset.gt_folder={hq}",
                                f"val_dataloader.dataset.dataroot={test_root}"])
    return work, proc


def _suite_labels() -> dict:
    from constyle_plugin.data.benchmark_layouts import COLUMNS, TEST_TASKS

    return {task: COLUMNS[task].replace(" ", "_") for task in TEST_TASKS[SETTING]}


def _logged_scalars(work: Path) -> dict:
    """The validation record of MMEngine's scalars.json (there is one)."""
    (scalars,) = [json.loads(x) for p in work.glob("*/vis_data/scalars.json") for x in p.read_text().splitlines()
                  if '"PSNR' in x]
    return scalars


def test_constyle_train_constyle_v2_suite_validates_every_task(mmengine_suite_run):
    """The run trains 2 iterations, writes its checkpoint and logs, in one validation line, every column's PSNR
    and SSIM in the table's order, then their averages (the mean over the columns)."""
    work, proc = mmengine_suite_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "iter_2.pth").is_file()
    labels = _suite_labels()
    log = "\n".join(p.read_text() for p in work.rglob("*.log"))
    assert re.search(r"Iter\(train\) \[2/2\]", log)
    line = re.search(rf"Iter\(val\) \[{len(labels)}/{len(labels)}\]\s+PSNR.*", log)  # the summary line
    assert line, log[-3000:]
    logged = dict(re.findall(r"(\S+): ([\d.]+)", line.group(0)))
    scalars = _logged_scalars(work)
    for name in ("PSNR", "SSIM"):
        assert [k for k in logged if k.startswith(name + "/")] == [f"{name}/{label}" for label in labels.values()]
        for label in labels.values():
            assert abs(float(logged[f"{name}/{label}"]) - scalars[f"{name}/{label}"]) < 6e-5, (name, label)
        per_task = [scalars[f"{name}/{label}"] for label in labels.values()]
        assert scalars[name] == pytest.approx(sum(per_task) / len(per_task), abs=1e-9)
    assert [p.name for p in work.glob("best_PSNR_iter_*.pth")] == ["best_PSNR_iter_2.pth"]


def test_constyle_evaluate_on_the_suite_run_gives_the_numbers_validation_logged(mmengine_suite_run, suite, tmp_path):
    """``constyle evaluate --benchmark constyle-v2 --max-images 1`` on the run's checkpoint: the eight columns in
    the table's order, each the PSNR and SSIM validation logged (both ran the averaged weights)."""
    work, proc = mmengine_suite_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    labels = _suite_labels()
    scalars = _logged_scalars(work)
    metrics = evaluate_benchmark(work / "iter_2.pth", SETTING, suite[0], tmp_path / "eval", tmp_path)
    assert (metrics["benchmark"], metrics["channel"]) == (SETTING, "RGB")
    table = metrics["tasks"]
    assert list(table) == list(labels) and all(table[t]["n_images"] == 1 for t in table)
    for task, label in labels.items():  # the table's numbers are the ones validation logged
        assert abs(table[task]["psnr"] - scalars[f"PSNR/{label}"]) < 6e-5, (task, table[task]["psnr"])
        assert abs(table[task]["ssim"] - scalars[f"SSIM/{label}"]) < 6e-5, (task, table[task]["ssim"])
