"""A benchmark layout that is not right stops a run before it creates anything: the trainers' option
checks look at the all-in-one datasets' folders, pairs and task names (the datasets themselves are built
only after BasicSR has made the experiment folder, and after MMEngine has made the work dir)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from allinone_runs import load_options, val_tasks
from basicsr_runs import ROOT, refused_here
from layouts import make_five_task, make_three_task

BASICSR_FILE = ROOT / "options" / "allinone" / "nafnet_constyle_three_task.yml"
MMENGINE_FILE = ROOT / "options" / "mmengine" / "allinone" / "nafnet_constyle_five_task.py"


def _val_phases() -> list:
    return list(val_tasks(load_options(BASICSR_FILE)))


def _basicsr_args(train_root: Path, test_root: Path, *extra: str) -> list:
    roots = [f"datasets:{phase}:dataroot={test_root}" for phase in _val_phases()]
    return ["train", "-opt", str(BASICSR_FILE), "--force_yml", "num_gpu=0", f"datasets:train:dataroot={train_root}",
            *roots, *extra]


def test_basicsr_refuses_an_unpaired_training_file_before_the_experiment_folder(tmp_path, capsys, monkeypatch):
    train_root, test_root = make_three_task(tmp_path / "data")
    lone = sorted((train_root / "Derain" / "gt").iterdir())[0]  # norain-1.png: rain-1.png loses its partner
    lone.unlink()
    line = refused_here(capsys, tmp_path, monkeypatch, *_basicsr_args(train_root, test_root),
                        fragments=("datasets.train.dataroot", "rain-1.png", "norain-1.png"))
    assert "docs/allinone-benchmarks.md" in line
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()


def test_basicsr_refuses_a_misspelt_validation_task_and_a_test_root_of_another_layout(tmp_path, capsys, monkeypatch):
    train_root, test_root = make_three_task(tmp_path / "data")
    phase = _val_phases()[0]
    refused_here(capsys, tmp_path, monkeypatch, *_basicsr_args(train_root, test_root, f"datasets:{phase}:task=dehaz"),
                 fragments=(f"datasets.{phase}.task", "'dehaz'", "did you mean 'dehaze'"))
    refused_here(capsys, tmp_path, monkeypatch, *_basicsr_args(train_root, train_root),
                 fragments=(f"datasets.{phase}.dataroot", "training root"))
    assert not (tmp_path / "experiments").exists()


def test_mmengine_refuses_a_five_task_folder_present_but_incomplete_before_the_work_dir(tmp_path, capsys):
    # an absent task is a missing column (partial settings); a task folder without its targets is a
    # broken layout and stops the run
    pytest.importorskip("mmengine")
    from constyle_plugin import cli

    train_root, test_root = make_five_task(tmp_path / "data")
    shutil.rmtree(test_root / "enhance" / "lol" / "target")
    work = tmp_path / "work"
    code = cli.main(["train", str(MMENGINE_FILE), "--work-dir", str(work), "--cfg-options",
                     f"train_dataloader.dataset.dataroot={train_root}", f"val_dataloader.dataset.dataroot={test_root}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "val_dataloader.dataset.dataroot" in err and "enhance/lol" in err
    assert not work.exists()


def _three_task_options(train_root: Path, test_root: Path) -> dict:
    from allinone_runs import parsed_options

    opt = parsed_options(BASICSR_FILE)
    opt["datasets"]["train"]["dataroot"] = str(train_root)
    for phase in _val_phases():
        opt["datasets"][phase]["dataroot"] = str(test_root)
    opt["path"] = {"experiments_root": "unused"}
    return opt


def test_basicsr_validates_on_the_sets_a_root_holds_and_says_which_it_left_out(tmp_path):
    # partial settings: a three-task root without SOTS validates on Rain100L and CBSD68 (with a warning),
    # as `constyle evaluate --benchmark` measures four columns of it
    from allinone_runs import option_check_warnings

    train_root, test_root = make_three_task(tmp_path / "data")
    shutil.rmtree(test_root / "dehaze")
    opt = _three_task_options(train_root, test_root)
    warned = option_check_warnings(opt)
    val = sorted(p for p in opt["datasets"] if p.startswith("val"))
    assert len(val) == len(_val_phases()) - 1 and all(opt["datasets"][p]["task"] != "dehaze" for p in val)
    [line] = [w for w in warned if "partial validation" in w]
    assert "dehaze" in line and "absent" in line and "partial" in line


def test_basicsr_still_refuses_a_set_there_but_broken_and_a_root_holding_none_of_the_sets(tmp_path):
    from allinone_runs import option_check_warnings
    from constyle_plugin.errors import OptionError

    train_root, test_root = make_three_task(tmp_path / "data")
    shutil.rmtree(test_root / "dehaze" / "target")  # SOTS's hazy inputs without their clear images
    with pytest.raises(OptionError, match="dehaze"):
        option_check_warnings(_three_task_options(train_root, test_root))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OptionError, match="none of the test sets"):
        option_check_warnings(_three_task_options(train_root, empty))
