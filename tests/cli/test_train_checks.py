"""``constyle train`` (MMEngine): refuses runs that would never train and misspelt options before its
work dir exists, runs with ``num_workers=0``, says when ``--resume`` has nothing to resume, passes over a
truncated latest checkpoint, and reports a broken config or ``--cfg-options`` value in one line."""
from __future__ import annotations

import pytest
import torch

from constyle_plugin import cli

from cli_runs import MMENGINE_CONFIG, TINY, constyle, run_cli, write_png


def test_train_resume_with_nothing_to_resume_says_it_starts_from_scratch(mmengine_run):
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "nothing to resume" in output and "starts from scratch" in output
    assert "Auto resumed from the latest checkpoint None" not in output


# ------------------------------------------------ num_workers=0 just works
def test_train_with_num_workers_0_runs_despite_persistent_workers(mmengine_run):
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "persistent_workers" not in proc.stderr
    assert (work / "iter_2.pth").is_file()


def test_fit_dataloaders_turns_persistent_workers_off_only_without_workers():
    from mmengine.config import Config

    from constyle_plugin.integrations.mmengine.runner import fit_dataloaders

    cfg = Config(dict(train_dataloader=dict(num_workers=0, persistent_workers=True),
                      val_dataloader=dict(persistent_workers=True),
                      test_dataloader=dict(num_workers=2, persistent_workers=True)))
    fit_dataloaders(cfg)
    assert cfg.train_dataloader.persistent_workers is False and cfg.val_dataloader.persistent_workers is False
    assert cfg.test_dataloader.persistent_workers is True


# ------------------------------------ items 2 and 7, MMEngine: refuse before the work dir exists
# (hooks, batch sizes, numbers, randomness and a backbone that refuses its arguments: issue 27, 2 and 10)
@pytest.mark.parametrize("option, key, hint", [
    ("train_cfg.max_iter=2", "train_cfg.max_iter", "did you mean 'max_iters'"),
    ("train_dataloader.batchsize=4", "train_dataloader.batchsize", "did you mean 'batch_size'"),
    ("train_cfg.max_iters=0", "train_cfg.max_iters", "positive"),
    ("train_cfg.max_iters=-5", "train_cfg.max_iters", "positive"),
    ("optim_wrapper.optimizer.lrr=0.1", "optim_wrapper.optimizer.lrr", "did you mean 'lr'"),
    ("log_processor.windowsize=3", "log_processor.windowsize", "did you mean 'window_size'"),
    ("default_hooks.checkpoint.intervall=2", "default_hooks.checkpoint.intervall", "did you mean 'interval'"),
    ("default_hooks.loger.interval=5", "default_hooks.loger", "did you mean 'logger'"),
    ("train_dataloader.batch_size=0", "train_dataloader.batch_size", "positive"),
    ("val_dataloader.batch_size=0", "val_dataloader.batch_size", "positive"),
    ("optim_wrapper.optimizer.lr=abc", "optim_wrapper.optimizer.lr", "expected a number"),
    ("randomness.seeed=1", "randomness.seeed", "did you mean 'seed'"),
    ("randomness=dict(seeed=1)", "randomness", "randomness.seed=0"),
    ("model.backbone.enc_blk_nums=[1,1]", "model.backbone", "enc_blk_nums [1, 1] and dec_blk_nums"),
])
def test_train_refuses_typos_and_empty_runs_before_the_work_dir(tmp_path, capsys, option, key, hint):
    work = tmp_path / "work"
    # after TINY: a check that let the option through would run two tiny iterations, not the config's 100 000
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options", *TINY,
                           option)
    assert code == 2, err
    assert err.startswith(f"constyle train: error: {key}:") and hint in err
    assert len(err.strip().splitlines()) == 1
    assert not work.exists()


def test_train_refuses_a_batch_larger_than_the_dataset_with_drop_last(tmp_path, capsys):
    for i in range(5):  # 4 training photos after the validation split
        write_png(tmp_path / "gt" / f"p{i}.png", 40, 40, seed=i)
    work = tmp_path / "work"
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options",
                           "train_dataloader.sampler.type=DefaultSampler", "train_dataloader.drop_last=True",
                           f"train_dataloader.dataset.dataroot_gt={tmp_path / 'gt'}",
                           "train_dataloader.dataset.repeat=1", "train_dataloader.batch_size=16")
    assert code == 2, err
    assert err.startswith("constyle train: error: train_dataloader.batch_size: 16") and "drop_last" in err
    assert not work.exists()


# ------------------------------------------ item 5, MMEngine: resume from a truncated checkpoint
def test_train_resume_skips_a_truncated_latest_checkpoint_and_names_it(tmp_path, capsys):
    work = tmp_path / "work"
    every_iteration = ["default_hooks.checkpoint.interval=1", "default_hooks.checkpoint.save_best=None"]
    first = constyle("train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options", *TINY,
                     *every_iteration, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    latest = work / "iter_2.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[:len(data) // 2])  # a save cut short
    # naming the truncated file: one line naming it, before anything is built
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--resume", str(latest),
                           "--cfg-options", *TINY)
    assert code == 2 and err.startswith(f"constyle train: error: --resume: {latest}: does not load")
    assert len(err.strip().splitlines()) == 1
    # auto-resume: the newest checkpoint that loads (iter_1), saying which one was skipped
    longer = [o if not o.startswith("train_cfg.max_iters") else "train_cfg.max_iters=3" for o in TINY]
    resumed = constyle("train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--resume", "--cfg-options",
                       *longer, *every_iteration, cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert f"resume: skipped {latest}: does not load" in output
    assert "resumed epoch: 0, iter: 1" in output
    assert (work / "iter_3.pth").is_file()
    saved = torch.load(work / "iter_3.pth", map_location="cpu", weights_only=False)
    assert saved["meta"]["iter"] == 3


# --------------------------- item 7, MMEngine: a broken config or --cfg-options value, in one line
def test_train_broken_config_and_malformed_options_fail_in_one_line(tmp_path, capsys):
    work = tmp_path / "work"
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(type='ConStyleRestorer'\n")
    code, _, err = run_cli(capsys, "train", str(broken), "--work-dir", str(work))
    assert code == 2 and err.startswith(f"constyle train: error: CONFIG: {broken}, line 1:")
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options",
                           "model.backbone=[")
    assert code == 2 and err.startswith("constyle train: error: model.backbone: expected a dict")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options", "train_cfg.max_iters"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--cfg-options: 'train_cfg.max_iters' is not KEY=VALUE" in err
    assert "Traceback" not in err and not work.exists()


def test_check_config_names_misspelt_scheduler_and_wrapper_arguments():
    from mmengine.config import Config

    from constyle_plugin.integrations.mmengine.runner import ConfigError, check_config, load_config

    cfg = load_config(str(MMENGINE_CONFIG))
    check_config(cfg)  # the shipped config passes
    cfg = Config(cfg.to_dict())
    cfg.param_scheduler[0]["eta_mn"] = 0.0
    cfg.optim_wrapper["clipgrad"] = dict(max_norm=1.0)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    message = str(info.value)
    assert "param_scheduler[0].eta_mn: CosineAnnealingLR takes no argument 'eta_mn'; did you mean 'eta_min'?" in message
    assert "optim_wrapper.clipgrad: OptimWrapper takes no argument 'clipgrad'; did you mean 'clip_grad'?" in message


def test_check_config_names_misspelt_hook_arguments_and_keeps_priority():
    from mmengine.config import Config

    from constyle_plugin.integrations.mmengine.runner import ConfigError, check_config, load_config

    cfg = Config(load_config(str(MMENGINE_CONFIG)).to_dict())
    assert cfg.custom_hooks[0]["priority"] == "ABOVE_NORMAL"  # the shipped config passes with it
    cfg.custom_hooks = [dict(type="EMAHook", momentun=0.001, priority="ABOVE_NORMAL"),
                        dict(type="EMAHook", momentum="fast"), dict(type="IterTimerHook", priority="LOW")]
    # default hooks without a type (MMEngine gives them the default's), as a config without _base_ writes them
    cfg.default_hooks = dict(checkpoint=dict(intervall=2), loger=None, logger=dict(interval=5))
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert str(info.value).split("; custom_hooks")[0] == (
        "default_hooks.checkpoint.intervall: CheckpointHook takes no argument 'intervall'; did you mean 'interval'?; "
        "default_hooks.loger: None removes a default hook, and MMEngine has no default hook 'loger' (its default "
        "hooks: runtime_info, timer, sampler_seed, logger, param_scheduler, checkpoint); did you mean 'logger'?")
    assert "custom_hooks[0].momentun: EMAHook takes no argument 'momentun'; did you mean 'momentum'?; " \
           "custom_hooks[1].momentum: expected a number" in str(info.value)
    assert "priority" not in str(info.value) and "custom_hooks[2]" not in str(info.value)


def test_train_load_from_a_save_pretrained_folder_says_how_to_convert_it(tmp_path, capsys):
    from cli_runs import save_tiny_trained_net

    folder = save_tiny_trained_net(tmp_path / "saved")
    work = tmp_path / "work"
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options", *TINY,
                           f"load_from={folder}")
    assert code == 2, err
    assert err.startswith(f"constyle train: error: load_from: '{folder}' is a save_pretrained folder")
    assert f"constyle convert --checkpoint {folder} --to mmengine" in err
    assert len(err.strip().splitlines()) == 1 and not work.exists()


def test_train_prints_no_failed_scope_import(mmengine_run):
    """MMEngine imports ``constyle.registry`` for the default scope; it is found (no "Failed to import")."""
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Failed to import" not in proc.stdout + proc.stderr
