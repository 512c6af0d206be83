"""The ready all-in-one options: ``options/allinone/*.yml`` (PyPI BasicSR) and ``options/mmengine/allinone/*.py``.

Each BasicSR file passes the ``basicsr`` command's own option check (on miniature layouts from
``tests/layouts.py``), and the command lines in its header pass the command-line check; each MMEngine config
loads; the recipe numbers (learning rate, batch, patch, iterations, warm-up, cosine) follow from the standard
training sets' sizes and the papers' epochs, and agree across the files; BasicSR's scheduler with these
options gives the papers' warm-up + cosine curve; each origin twin is its ConStyle twin without the prompter.
Then tiny real runs through the real commands: ``basicsr train`` on a miniature three-task layout (every
task validated, a checkpoint written) and ``constyle evaluate --benchmark three-task`` on its checkpoint;
``constyle train`` on a miniature five-task layout.
"""
from __future__ import annotations

import math
import re
import types
import warnings
from pathlib import Path

import pytest

from constyle_plugin.compat import ensure_basicsr_importable

from allinone_runs import (basicsr_train_tiny, constyle_train_tiny, evaluate_benchmark, header_command,
                           load_options, logged_validation_psnr, option_check_warnings, parsed_options, val_tasks)
from basicsr_runs import ROOT
from layouts import make_five_task, make_three_task

ensure_basicsr_importable()

BASICSR_DIR = ROOT / "options" / "allinone"
MMENGINE_DIR = ROOT / "options" / "mmengine" / "allinone"
BASICSR_FILES = sorted(BASICSR_DIR.glob("*_task.yml"))  # suite files: their own test file
MMENGINE_FILES = sorted(MMENGINE_DIR.glob("*_task.py"))  # suite twins: their own test file
SETTINGS = {"three_task": "three-task", "five_task": "five-task"}

# The standard training sets, as PromptIR / AdaIR train on them: the lines of their list files
# (data_dir/noisy/denoise.txt: BSD400 + WED, data_dir/rainy/rainTrain.txt: Rain100L train,
# data_dir/hazy/hazy_outside.txt: the RESIDE OTS subset), GoPro's 2 103 training pairs and LOL v1's 485.
TRAIN_SIZES = {"denoise": 5144, "derain": 200, "dehaze": 72135, "deblur": 2103, "enhance": 485}
# Times each list is repeated per epoch, training tasks, epochs, warm-up epochs and the epoch where the
# cosine reaches 0 (PromptIR: three-task; AdaIR: five-task).
PAPER_REPEAT = {"denoise_15": 3, "denoise_25": 3, "denoise_50": 3, "derain": 120, "dehaze": 1, "deblur": 5,
                "enhance": 20}
PAPERS = {"three-task": dict(tasks=["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"],
                             epochs=120, warmup=15, cosine_end=150),
          "five-task": dict(tasks=list(PAPER_REPEAT), epochs=150, warmup=15, cosine_end=180)}
GPUS, PER_GPU, LR, PATCH = 4, 8, 2e-4, 128


def _iters_per_epoch(setting: str) -> int:
    """Iterations per epoch on 4 GPUs x 8: DistributedSampler gives each GPU ceil(N / 4) samples and the
    last partial batch of 8 is dropped."""
    samples = sum(TRAIN_SIZES[t.split("_")[0]] * PAPER_REPEAT[t] for t in PAPERS[setting]["tasks"])
    return math.ceil(samples / GPUS) // PER_GPU


def _recipe(setting: str) -> dict:
    paper, per_epoch = PAPERS[setting], _iters_per_epoch(setting)
    return dict(total=paper["epochs"] * per_epoch, warmup=paper["warmup"] * per_epoch,
                cosine_end=paper["cosine_end"] * per_epoch)


def _setting(path: Path) -> str:
    return SETTINGS[re.search(r"(three_task|five_task)", path.stem).group(1)]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{setting: (train root, test root)}: miniature PromptIR / AdaIR layouts."""
    base = tmp_path_factory.mktemp("allinone")
    return {"three-task": make_three_task(base / "three", n=2), "five-task": make_five_task(base / "five", n=2)}


def test_the_ready_files_are_there():
    assert [p.name for p in BASICSR_FILES] == sorted(f"{net}_{v}_{s}.yml" for net in ("nafnet", "restormer")
                                                    for v in ("constyle", "origin") for s in SETTINGS)
    assert [p.name for p in MMENGINE_FILES] == [p.with_suffix(".py").name for p in BASICSR_FILES]  # one twin each


# ------------------------------------------------------------------------------------------------ BasicSR
@pytest.mark.parametrize("path", BASICSR_FILES, ids=lambda p: p.stem)
def test_every_allinone_options_file_passes_the_basicsr_option_check(path, layouts, tmp_path, monkeypatch):
    """The command's own checks: the command lines in the header (``check_command_line``: the -opt file,
    each --force_yml key exists), then the parsed options (``prepare_options``: types, option keys that
    nothing reads, the data roots, the network) with the data roots on a miniature layout. Nothing warned."""
    from constyle_plugin.integrations.basicsr.cli import check_command_line

    monkeypatch.chdir(ROOT)
    forced = check_command_line(header_command(path, "basicsr train")[2:])
    assert forced == {"datasets.train.dataroot": "datasets:train:dataroot=/data/allinone/Train"}

    opt = parsed_options(path)
    train_root, test_root = layouts[_setting(path)]
    opt["datasets"]["train"]["dataroot"] = str(train_root)
    for dataset in val_tasks(opt).values():
        dataset["dataroot"] = str(test_root)
    assert option_check_warnings(opt) == []


def test_the_option_check_refuses_a_missing_data_root(layouts, monkeypatch):
    """The control of the check above: the shipped placeholder roots do not exist here, and the check says so."""
    from constyle_plugin.integrations.basicsr import OptionError

    monkeypatch.chdir(ROOT)
    with pytest.raises(OptionError, match=r"datasets\.train\.dataroot.*datasets/allinone/Train"):
        option_check_warnings(parsed_options(BASICSR_DIR / "nafnet_origin_three_task.yml"))


@pytest.mark.parametrize("path", BASICSR_FILES, ids=lambda p: p.stem)
def test_basicsr_recipe_numbers_follow_from_the_dataset_sizes(path):
    from constyle_plugin.data.benchmark_layouts import DEFAULT_REPEAT, DEFAULT_TRAIN_TASKS, TEST_TASKS

    setting, opt = _setting(path), load_options(path)
    recipe = _recipe(setting)
    train, data = opt["train"], opt["datasets"]["train"]
    assert (data["type"], data["setting"]) == ("AllInOneTrainDataset", setting)
    assert data["tasks"] == PAPERS[setting]["tasks"] == list(DEFAULT_TRAIN_TASKS[setting])
    assert data["repeat"] == {t: PAPER_REPEAT[t] for t in data["tasks"]}
    assert data["repeat"] == {t: DEFAULT_REPEAT[t] for t in data["tasks"]}  # the dataset's defaults agree
    assert data["batch_size_per_gpu"] * opt["num_gpu"] == GPUS * PER_GPU == 32
    assert data["gt_size"] == PATCH and data["use_hflip"] and data["use_rot"]
    assert train["optim_g"]["type"] == "AdamW" and float(train["optim_g"]["lr"]) == LR
    assert float(train["optim_g"]["weight_decay"]) == 0.01  # torch's AdamW default, which the papers use
    assert train["pixel_opt"]["type"] == "L1Loss" and train["ema_decay"] == 0
    assert train["total_iter"] == recipe["total"] and train["warmup_iter"] == recipe["warmup"]
    assert train["scheduler"] == dict(type="CosineAnnealingRestartLR", restart_weights=[1, 1], eta_min=0,
                                      periods=[recipe["warmup"] - 2, recipe["cosine_end"] - recipe["warmup"] + 1])
    # one validation set per column of the papers' table, in its order
    vals = {p: d for p, d in opt["datasets"].items() if p.startswith("val")}
    assert [d["task"] for d in vals.values()] == list(TEST_TASKS[setting])
    assert all(d["type"] == "AllInOneTestDataset" and d["setting"] == setting and d["max_images"] == 10
               for d in vals.values())
    # the header's arithmetic says the same
    text = path.read_text()
    assert f"= {_iters_per_epoch(setting):,} iterations".replace(",", " ") in text
    assert f"{recipe['total']:,} iterations (train.total_iter)".replace(",", " ") in text


@pytest.mark.parametrize("setting", sorted(PAPERS))
def test_basicsr_learning_rate_follows_the_papers_schedule(setting):
    """BasicSR's own ``update_learning_rate`` and ``CosineAnnealingRestartLR`` with the options' numbers
    give the papers' curve: linear from 0 to 2e-4 over the warm-up, then a cosine to 0 at the papers'
    end epoch (evaluated per iteration), within 1e-5 of 2e-4 everywhere."""
    import torch
    from basicsr.models.base_model import BaseModel
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR

    opt = load_options(BASICSR_DIR / f"nafnet_constyle_{setting.replace('-', '_')}.yml")["train"]
    warmup, end = opt["warmup_iter"], _recipe(setting)["cosine_end"]
    options = {k: v for k, v in opt["scheduler"].items() if k != "type"}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=float(opt["optim_g"]["lr"]))
    scheduler = CosineAnnealingRestartLR(optimizer, **options)
    model = types.SimpleNamespace(optimizers=[optimizer], schedulers=[scheduler])
    model._get_init_lr = types.MethodType(BaseModel._get_init_lr, model)
    model._set_lr = types.MethodType(BaseModel._set_lr, model)

    def rate(iteration: int) -> float:  # BasicSR's scheduler has stepped iteration - 1 times by then
        scheduler.last_epoch = max(0, iteration - 2)
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no training here
            warnings.simplefilter("ignore", UserWarning)
            BaseModel.update_learning_rate(model, iteration, warmup)
        return optimizer.param_groups[0]["lr"]

    def paper(iteration: int) -> float:
        if iteration < warmup:
            return LR * iteration / warmup
        return LR * 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / (end - warmup)))

    total = opt["total_iter"]
    points = [1, 2, warmup // 2, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total, end - 1, end]
    for iteration in points:
        assert abs(rate(iteration) - paper(iteration)) < 1e-5 * LR, iteration
    assert rate(total) > 0.05 * LR  # the papers stop before the cosine reaches 0


@pytest.mark.parametrize("path", [p for p in BASICSR_FILES if "_origin_" in p.stem], ids=lambda p: p.stem)
def test_origin_twins_differ_only_in_the_network(path):
    origin, constyle = load_options(path), load_options(path.with_name(path.name.replace("_origin_", "_constyle_")))
    assert origin["network_g"] == constyle["network_g"]["backbone"]
    assert origin["name"] == constyle["name"].replace("ConStyle_v2", "origin")
    for opt in (origin, constyle):
        del opt["network_g"], opt["name"]
    assert origin == constyle


def test_restormer_and_nafnet_files_share_the_recipe():
    for setting in SETTINGS:
        nafnet, restormer = (load_options(BASICSR_DIR / f"{net}_constyle_{setting}.yml")
                             for net in ("nafnet", "restormer"))
        assert nafnet["network_g"]["backbone"]["type"] == "NAFNet"
        assert restormer["network_g"]["backbone"]["type"] == "Restormer"
        for opt in (nafnet, restormer):
            del opt["network_g"]["backbone"], opt["name"]
        assert nafnet == restormer


# ------------------------------------------------------------------------------------------------ MMEngine
@pytest.mark.parametrize("path", MMENGINE_FILES, ids=lambda p: p.stem)
def test_every_mmengine_allinone_config_loads_with_the_recipe(path):
    from mmengine import Config

    cfg = Config.fromfile(str(path))
    setting = _setting(path)
    recipe = _recipe(setting)
    twin = load_options(BASICSR_DIR / f"{path.stem}.yml")
    assert cfg.default_scope == "constyle"
    assert cfg.train_cfg.max_iters == recipe["total"] == twin["train"]["total_iter"]
    assert cfg.train_cfg.val_interval == twin["val"]["val_freq"]
    assert cfg.train_dataloader.batch_size * GPUS == 32
    dataset = cfg.train_dataloader.dataset
    assert (dataset.type, dataset.setting, dataset.gt_size) == ("AllInOneTrainDataset", setting, PATCH)
    assert dataset.tasks == twin["datasets"]["train"]["tasks"]
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr == LR
    assert cfg.optim_wrapper.optimizer.weight_decay == float(twin["train"]["optim_g"]["weight_decay"])
    warm, cosine = cfg.param_scheduler
    assert warm.type == "LinearLR" and (warm.begin, warm.end) == (0, recipe["warmup"]) and not warm.by_epoch
    assert math.isclose(warm.start_factor, 1 / recipe["warmup"]) and warm.end_factor == 1.0
    assert cosine.type == "CosineAnnealingLR" and not cosine.by_epoch
    assert (cosine.begin, cosine.end, cosine.eta_min) == (recipe["warmup"], recipe["total"], 0.0)
    assert cosine.begin + cosine.T_max == recipe["cosine_end"]
    assert cfg.model.pixel_loss.type == "L1Loss" and not cfg.get("custom_hooks")  # no EMA, as the papers
    backbone = twin["network_g"] if "_origin_" in path.stem else twin["network_g"]["backbone"]
    assert {k: v for k, v in cfg.model.backbone.items() if k != "type"} == {
        k: v for k, v in backbone.items() if k not in ("type", "img_channel")}
    if "_origin_" in path.stem:
        assert cfg.model.prompter is None
        constyle = Config.fromfile(str(path.with_name(path.name.replace("_origin_", "_constyle_"))))
        for c in (cfg, constyle):
            c.model.pop("prompter")
        assert cfg.to_dict() == constyle.to_dict()


# ------------------------------------------------------------------------------------------------ real runs
def test_basicsr_train_three_task_then_evaluate_the_checkpoint(layouts, prompter_file, tmp_path):
    """``basicsr train -opt options/allinone/nafnet_constyle_three_task.yml`` on a miniature three-task layout
    (tiny NAFNet, 2 iterations of 48 px patches), validating every task once; then ``constyle evaluate
    --checkpoint`` its checkpoint ``--benchmark three-task`` on the test root: every column measured."""
    path = BASICSR_DIR / "nafnet_constyle_three_task.yml"
    opt = load_options(path)
    train_root, test_root = layouts["three-task"]
    proc = basicsr_train_tiny(path, tmp_path, prompter_file, test_root,
                              ["train:warmup_iter=1", f"datasets:train:dataroot={train_root}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    experiment = tmp_path / "experiments" / opt["name"]
    log = next(experiment.glob("train_*.log")).read_text()
    assert re.search(r"iter:\s*2, lr:", log)
    logged = logged_validation_psnr(log, opt)  # each task validated, with its name in the log
    checkpoint = experiment / "models" / "net_g_latest.pth"
    assert checkpoint.is_file() and (experiment / "models" / "net_g_2.pth").is_file()

    metrics = evaluate_benchmark(checkpoint, "three-task", test_root, tmp_path / "eval", tmp_path)
    assert (metrics["benchmark"], metrics["channel"]) == ("three-task", "RGB")
    tasks = metrics["tasks"]
    assert list(tasks) == [d["task"] for d in val_tasks(opt).values()]  # the papers' columns, in order
    assert all(tasks[t]["n_images"] == 1 and 0 < tasks[t]["psnr"] < 100 and 0 < tasks[t]["ssim"] <= 1 for t in tasks)
    assert math.isclose(metrics["average"]["psnr"], sum(t["psnr"] for t in tasks.values()) / len(tasks))
    for task, psnr in logged.items():  # the table's numbers are the ones validation logged
        assert abs(tasks[task]["psnr"] - psnr) < 6e-5, (task, psnr)


def test_constyle_train_five_task_mmengine(layouts, prompter_file, tmp_path):
    """``constyle train options/mmengine/allinone/nafnet_constyle_five_task.py`` on a miniature five-task layout:
    2 iterations (tiny NAFNet, 48 px patches), one validation of every test set (each column's PSNR / SSIM and
    their averages logged), a checkpoint."""
    train_root, test_root = layouts["five-task"]
    work = tmp_path / "work"
    proc = constyle_train_tiny(MMENGINE_DIR / "nafnet_constyle_five_task.py", tmp_path, work, prompter_file,
                               [f"train_dataloader.dataset.dataroot={train_root}",
                                f"val_dataloader.dataset.dataroot={test_root}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "iter_2.pth").is_file()
    logs = "\n".join(p.read_text() for p in work.rglob("*.log"))
    assert re.search(r"Iter\(train\) \[2/2\]", logs)
    columns = ["SOTS", "Rain100L", "BSD68_s25", "GoPro", "LOL"]  # the papers' five-task columns, in order
    for name in ("PSNR", "SSIM"):
        per_task = r"\s+".join(rf"{name}/{c}: [\d.]+" for c in columns)
        assert re.search(rf"Iter\(val\) \[5/5\]\s+.*{per_task}\s+{name}: [\d.]+", logs), name
