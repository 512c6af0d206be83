"""Issue 11 ("Reliability, round 2"), items 2, 5, 6 and 7 on the ``basicsr train|test`` side (PyPI BasicSR):
runs that would never train are refused before they save anything, ``--auto_resume`` passes over a
truncated checkpoint to the newest one that loads, a finished run can be extended with a longer
schedule, and option keys that nothing reads are reported (with a did-you-mean) before anything is
created on disk.

Each run is a fresh interpreter running the console script's function in a temporary folder, with a
tiny NAFNet, a few iterations and one thread.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from constyle_plugin.compat import ensure_basicsr_importable
from test_reliability import photos, prompter_file  # noqa: F401  (module-scoped fixtures)

ensure_basicsr_importable()

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ROOT / "options" / "nafnet_constyle.yml"
COMMAND = [sys.executable, "-c", "import sys; from constyle_plugin.integrations.basicsr.cli import main; sys.exit(main())"]
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


# ------------------------------------------------------------------------------------------------
# 2. Runs that would never train
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total_iter", ["0", "-5"])
def test_a_run_of_no_iterations_is_refused_before_anything_is_created(tmp_path, photos, prompter_file, capsys,
                                                                     monkeypatch, total_iter):
    opts = tiny(photos, prompter_file) + [f"train:total_iter={total_iter}"]
    line = refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml", *opts,
                        fragments=("train.total_iter",))
    assert total_iter in line
    assert not (tmp_path / "experiments").exists()


def test_a_batch_larger_than_the_dataset_is_refused_and_its_folder_taken_back(tmp_path, photos, prompter_file):
    """15 training photos, batch 16 and BasicSR's drop_last: an epoch has no batch. The experiment folder
    BasicSR made is removed, and an earlier run's folder of the same name gets its name back."""
    earlier = tmp_path / "experiments" / NAME
    (earlier / "models").mkdir(parents=True)
    (earlier / "models" / "net_g_8.pth").write_bytes(b"an earlier run")
    opts = tiny(photos, prompter_file) + ["datasets:train:batch_size_per_gpu=16"]
    proc = basicsr(tmp_path, "train", "-opt", str(OPTIONS), "--force_yml", *opts)
    refused(proc, "datasets.train.batch_size_per_gpu", "16", "15 training samples")
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == [NAME]  # no *_archived_* left
    assert sorted(str(p.relative_to(earlier)) for p in earlier.rglob("*")) == ["models", "models/net_g_8.pth"]
    assert (earlier / "models" / "net_g_8.pth").read_bytes() == b"an earlier run"

    shutil.rmtree(tmp_path / "experiments")
    refused(basicsr(tmp_path, "train", "-opt", str(OPTIONS), "--force_yml", *opts), "batch_size_per_gpu")
    assert not (tmp_path / "experiments").exists()


# ------------------------------------------------------------------------------------------------
# 5. Resuming from a truncated checkpoint; 6. extending a finished run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, photos, prompter_file) -> Path:
    """A finished 4-iteration run with states at iterations 2 and 4."""
    run_dir = tmp_path_factory.mktemp("finished")
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *tiny(photos, prompter_file),
               "train:scheduler:periods=[4]"))
    states = run_dir / "experiments" / NAME / "training_states"
    assert sorted(p.name for p in states.glob("*.state")) == ["2.state", "4.state"]
    return run_dir


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("broken", ["training_states/4.state", "models/net_g_4.pth"])
def test_auto_resume_passes_over_a_truncated_checkpoint(finished_run, tmp_path, photos, prompter_file, broken):
    run_dir = copy_of(finished_run, tmp_path)
    truncate(run_dir / "experiments" / NAME / broken)
    proc = ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                      *tiny(photos, prompter_file), "train:scheduler:periods=[4]"))
    named = f"experiments/{NAME}/{broken}"
    assert re.search(rf"skipped \S*{re.escape(named)} \(.*truncated", proc.stderr), proc.stderr[-3000:]
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1
    assert "Resuming training from epoch: 0, iter: 2." in resumed[0]
    assert re.search(rf"Resume: skipped \S*{re.escape(named)} \(", resumed[0])  # also in the run's log
    assert sorted(losses(resumed[0])) == [3, 4]


def test_an_explicit_resume_state_that_does_not_load_is_named(finished_run, tmp_path, photos, prompter_file):
    run_dir = copy_of(finished_run, tmp_path)
    state = run_dir / "experiments" / NAME / "training_states" / "4.state"
    truncate(state)
    before = sorted(p.name for p in (run_dir / "experiments" / NAME).iterdir())
    proc = basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *tiny(photos, prompter_file),
                   f"path:resume_state={state}")
    refused(proc, "path.resume_state", str(state), "truncated")
    assert sorted(p.name for p in (run_dir / "experiments" / NAME).iterdir()) == before


def test_auto_resume_with_no_state_that_loads_is_refused(finished_run, tmp_path, photos, prompter_file):
    run_dir = copy_of(finished_run, tmp_path)
    for state in (run_dir / "experiments" / NAME / "training_states").glob("*.state"):
        truncate(state)
    proc = basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml", *tiny(photos, prompter_file))
    refused(proc, "--auto_resume", "2.state", "4.state")
    assert sorted(p.name for p in (run_dir / "experiments").iterdir()) == [NAME]  # nothing archived, nothing new


def test_a_finished_run_extended_with_a_longer_schedule_trains_on(finished_run, tmp_path, photos, prompter_file):
    """After 4 iterations of a cosine schedule over 4, resume with total_iter 6 over periods [6]: iterations 5
    and 6 train at the learning rates of the options file's schedule."""
    run_dir = copy_of(finished_run, tmp_path)
    proc = ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                      *tiny(photos, prompter_file), "train:total_iter=6", "train:scheduler:periods=[6]"))
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1, proc.stderr[-3000:]
    assert "Resuming training from epoch: 0, iter: 4." in resumed[0]
    assert len(re.findall(r"the learning-rate schedule follows the options file", resumed[0])) == 1
    rates = losses(resumed[0])
    assert sorted(rates) == [5, 6]
    opt = yaml.safe_load(OPTIONS.read_text())
    base, eta_min = float(opt["train"]["optim_g"]["lr"]), float(opt["train"]["scheduler"]["eta_min"])
    for it in (5, 6):  # CosineAnnealingRestartLR over one period of 6, stepped from iteration 2 on (BaseModel)
        expected = eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * (it - 1) / 6))
        assert float(rates[it].strip(",")) == pytest.approx(expected, rel=2e-3), (it, rates[it], expected)
    assert (run_dir / "experiments" / NAME / "models" / "net_g_6.pth").is_file()


# ------------------------------------------------------------------------------------------------
# 7. Option keys that nothing reads; the command line itself
# ------------------------------------------------------------------------------------------------
def _rename(section, old, new):
    def edit(opt):
        node = opt
        for key in section:
            node = node[key]
        node[new] = node.pop(old)
    return edit


TYPOS = [
    (_rename(["train"], "ema_decay", "ema_decy"), "train.ema_decy", "ema_decay"),
    (_rename(["datasets", "train"], "use_hflip", "use_hflp"), "datasets.train.use_hflp", "use_hflip"),
    (_rename(["datasets", "val"], "gt_size", "gt_szie"), "datasets.val.gt_szie", "gt_size"),
    (_rename([], "network_g", "netwrok_g"), "netwrok_g", "network_g"),
    (_rename(["train"], "pixel_opt", "pixel_optt"), "train.pixel_optt", "pixel_opt"),
    (_rename(["val"], "pad_multiple", "pad_mutliple"), "val.pad_mutliple", "pad_multiple"),
    (_rename(["datasets"], "val", "vall"), "datasets.vall", "val"),
]


@pytest.mark.parametrize("edit, key, meant", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_misspelt_option_is_refused_with_a_did_you_mean_before_anything_is_created(tmp_path, photos, prompter_file,
                                                                                     capsys, monkeypatch, edit, key,
                                                                                     meant):
    path = options_file(tmp_path, edit)
    opts = tiny(photos, prompter_file)
    if key == "netwrok_g":
        opts = [o for o in opts if not o.startswith("network_g:")]
    if key == "datasets.vall":
        opts = [o for o in opts if not o.startswith("datasets:val:")]
    line = refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(path), "--force_yml", *opts,
                        fragments=(f"{key}: ", f"did you mean {meant!r}"))
    assert not (tmp_path / "experiments").exists(), line


def test_a_misspelt_force_yml_key_is_refused_naming_the_item(tmp_path, photos, prompter_file, capsys, monkeypatch):
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), "train:total_iters=3",
                 fragments=("train.total_iters", "did you mean 'total_iter'", "--force_yml train:total_iters=3"))
    assert not (tmp_path / "experiments").exists()


ARGUMENTS = [
    ("nafnet_origin.yml", "network_g:widht=8", "network_g.widht", "width"),
    ("nafnet_constyle.yml", "train:pixel_opt:loss_wieght=1", "train.pixel_opt.loss_wieght", "loss_weight"),
    ("nafnet_constyle.yml", "train:optim_g:weight_decy=0", "train.optim_g.weight_decy", "weight_decay"),
    ("nafnet_constyle.yml", "train:scheduler:period=[4]", "train.scheduler.period", "periods"),
    ("nafnet_constyle.yml", "train:scheduler:type=CosineAnnealingRestart", "train.scheduler.type",
     "CosineAnnealingRestartLR"),
    ("constyle_v2_pretrain.yml", "network_g:queue_sise=16", "network_g.queue_sise", "queue_size"),
]


@pytest.mark.parametrize("source, item, key, meant", ARGUMENTS, ids=[a[2] for a in ARGUMENTS])
def test_a_misspelt_argument_of_a_network_loss_optimiser_or_scheduler_is_refused_before_anything_is_created(
        tmp_path, capsys, monkeypatch, source, item, key, meant):
    """These options are passed as keyword arguments once BasicSR builds the model (after the experiment
    folder exists); a misspelt one was a TypeError there."""
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(ROOT / "options" / source), "--force_yml",
                 item, fragments=(f"{key}: ", f"did you mean {meant!r}"))
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("case", ["missing", "folder", "broken_yaml", "not_a_mapping", "no_equals", "two_equals",
                                  "no_section", "bad_list", "bare_word_list"])
def test_command_line_mistakes_are_one_line(tmp_path, capsys, monkeypatch, case):
    opt_file = str(OPTIONS)
    extra: List[str] = []
    fragments = []
    if case == "missing":
        opt_file, fragments = str(tmp_path / "nope.yml"), ["-opt", "not found", "nope.yml"]
    elif case == "folder":
        opt_file, fragments = str(tmp_path), ["-opt", "is a folder"]
    elif case == "broken_yaml":
        (tmp_path / "broken.yml").write_text("name: x\ntrain:\n  total_iter: [1, 2\nval: 3\n")
        opt_file, fragments = str(tmp_path / "broken.yml"), ["-opt", "broken.yml", "not valid YAML", "line"]
    elif case == "not_a_mapping":
        (tmp_path / "list.yml").write_text("- a\n- b\n")
        opt_file, fragments = str(tmp_path / "list.yml"), ["-opt", "expected a mapping"]
    elif case == "no_equals":
        extra, fragments = ["train:total_iter"], ["--force_yml", "'train:total_iter'", "key:sub=value"]
    elif case == "two_equals":
        extra, fragments = ["name=a=b"], ["--force_yml", "'name=a=b'"]
    elif case == "no_section":
        extra, fragments = ["trian:total_iter=3"], ["--force_yml", "`trian`", "did you mean 'train'"]
    elif case == "bad_list":
        extra, fragments = ["train:scheduler:periods=[6"], ["--force_yml", "not a list"]
    else:  # BasicSR evaluates lists as Python: NameError
        extra, fragments = ["datasets:val:photos=[camera]"], ["--force_yml", "strings quoted"]
    args = ["train", "-opt", opt_file] + (["--force_yml", *extra] if extra else [])
    refused_here(capsys, tmp_path, monkeypatch, *args, fragments=fragments)
    assert not (tmp_path / "experiments").exists()


def test_unread_keys_where_basicsr_allows_extras_are_warnings():
    """logger / path keys and far-off top-level keys: a warning each (the run goes on); the shipped
    options files give neither error nor warning (the control)."""
    from constyle_plugin.integrations.basicsr import check_option_keys, register

    register()
    for name in ("nafnet_constyle", "nafnet_origin", "restormer_constyle", "convunet_constyle",
                 "constyle_v2_pretrain"):
        opt = yaml.safe_load((ROOT / "options" / f"{name}.yml").read_text())
        opt["is_train"] = True
        said: List[str] = []
        check_option_keys(opt, warn=said.append)
        assert said == [], (name, said)
    opt = yaml.safe_load(OPTIONS.read_text())
    opt["logger"]["save_chekpoint_freq"] = 5
    opt["path"]["pretrain_netwrk_g"] = "x.pth"
    opt["my_notes"] = "hello"
    said = []
    check_option_keys(opt, warn=said.append)
    assert len(said) == 3, said
    assert any(s.startswith("logger.save_chekpoint_freq:") and "did you mean 'save_checkpoint_freq'" in s
               for s in said), said
    assert any(s.startswith("path.pretrain_netwrk_g:") and "did you mean 'pretrain_network_g'" in s for s in said)
    assert any(s.startswith("my_notes:") for s in said), said


def test_plugin_classes_declare_the_keys_they_read():
    """A dataset given exactly its declared keys builds; one undeclared key is refused by the check (the
    declaration is what the check uses, so a key the class reads must be declared to be accepted)."""
    from constyle_plugin.datasets import ConStylePretrainDataset, MixDegradationDataset
    from constyle_plugin.integrations.basicsr import OptionError, check_option_keys, register
    from constyle_plugin.integrations.basicsr.models import ConStyleSRModel, ConStyleV2PretrainModel

    register()
    assert {"gt_size", "use_hflip", "use_rot", "photos", "degradations"} <= MixDegradationDataset.OPTIONS
    assert {"dataroot", "crop_size", "weather_prob"} <= ConStylePretrainDataset.OPTIONS
    assert {"ema_decay", "pixel_opt", "total_iter", "optim_g", "scheduler"} <= ConStyleSRModel.TRAIN_OPTIONS
    assert {"class_iter", "kl_iter", "loss_weights"} <= ConStyleV2PretrainModel.TRAIN_OPTIONS
    opt = yaml.safe_load(OPTIONS.read_text())
    opt["datasets"]["train"]["dataroot_lq"] = "lq"  # read by PairedImageDataset, not by MixDegradationDataset
    with pytest.raises(OptionError) as info:
        check_option_keys(opt, warn=lambda m: None)
    assert info.value.key == "datasets.train.dataroot_lq"
    assert "MixDegradationDataset" in str(info.value)
    opt["datasets"]["train"]["type"] = "PairedImageDataset"  # BasicSR's own datasets are not checked
    check_option_keys(opt, warn=lambda m: None)
