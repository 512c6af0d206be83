"""Issue 11 ("Reliability, round 2") and issue 9 item 7, on the ``constyle`` command's side:
``constyle restore`` never runs a file the user did not name, never overwrites its own outputs, and
checks every option before its first write; checkpoint loading names what is wrong; ``constyle
train`` refuses runs that would never train and misspelt options before its work dir exists, runs
with ``num_workers=0``, and says when ``--resume`` has nothing to resume."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin import ConStyleV2, cli
from constyle_plugin.inference import RestoreError, load_network, read_dumped_config, read_image
from constyle_plugin.prompter import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
MMENGINE_CONFIG = ROOT / "options" / "mmengine" / "nafnet_constyle.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# A two-iteration run of a tiny NAFNet; the dataloaders keep the config's persistent_workers=True
# for training (and ask for it in validation) while running without workers (issue 9 item 7).
TINY = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "model.backbone.width=8",
        "model.backbone.enc_blk_nums=[1,1,1]", "model.backbone.dec_blk_nums=[1,1,1]",
        "train_dataloader.batch_size=2", "train_dataloader.num_workers=0", "train_dataloader.dataset.gt_size=32",
        "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=True",
        "val_dataloader.dataset.gt_size=32"]
TINY_BASICSR = """# GENERATE TIME: Wed Nov 25 12:00:00 2026
# CMD:
# basicsr train -opt Tiny.yml

name: Tiny
model_type: ConStyleSRModel
network_g:
  type: ConStyleUNet
  backbone: {type: NAFNet, img_channel: 3, width: 8, middle_blk_num: 1, enc_blk_nums: [1, 1, 1, 1],
             dec_blk_nums: [1, 1, 1, 1]}
  prompter: {pretrained: ~}
  inject: [encoder, bottleneck]
"""
STRAY = "open({marker!r}, 'w').write('ran')\n"


def write_png(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def constyle(*args: str, cwd=None, user=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "constyle_plugin.cli", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), ENV.get("PYTHONPATH", "")])}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def run_cli(capsys, *args: str):
    """``constyle ARGS`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mmengine_run(tmp_path_factory):
    """``constyle train --resume`` of a tiny run in an empty work dir, with ``num_workers=0``."""
    tmp = tmp_path_factory.mktemp("mmengine_run")
    work = tmp / "work"
    proc = constyle("train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--resume", "--cfg-options", *TINY,
                    cwd=tmp)
    return work, proc


@pytest.fixture(scope="module")
def mmengine_checkpoint(mmengine_run) -> Path:
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return work / "iter_2.pth"


@pytest.fixture(scope="module")
def basicsr_experiment(tmp_path_factory) -> Path:
    """``experiments/Tiny/`` laid out as BasicSR leaves it: the options copy (with BasicSR's header)
    beside ``models/net_g_latest.pth``; the weights are random, so loading them is visible."""
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    import yaml
    from basicsr.archs import build_network

    exp = tmp_path_factory.mktemp("experiments") / "Tiny"
    (exp / "models").mkdir(parents=True)
    (exp / "Tiny.yml").write_text(TINY_BASICSR)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_network(dict(yaml.safe_load(TINY_BASICSR)["network_g"]))
    state = {k: torch.randn_like(v) if v.is_floating_point() and not k.startswith("prompter.") else v
             for k, v in net.state_dict().items()}
    torch.save({"params": state}, exp / "models" / "net_g_latest.pth")
    return exp


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "lq"
    write_png(folder / "a.png", 21, 30, seed=1)
    write_png(folder / "b.png", 40, 33, seed=2)
    return folder


# ------------------------------------------------------------- item 1: restore runs no stray code
def test_restore_never_runs_a_stray_python_file_beside_a_checkpoint(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    marker = tmp_path / "MARKER"
    (d / "helper.py").write_text(STRAY.format(marker=str(marker)))
    torch.save({"params": {"w": torch.zeros(1)}}, d / "net_g_latest.pth")
    write_png(tmp_path / "photo.png", 16, 16)
    proc = constyle("restore", "--checkpoint", str(d / "net_g_latest.pth"), "--input", str(tmp_path / "photo.png"),
                    "--output", str(tmp_path / "out"), cwd=d)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not marker.exists() and not (d / "MARKER").exists()
    assert "--config" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_restore_finds_the_basicsr_options_copy_and_ignores_stray_files(basicsr_experiment, tmp_path):
    marker = tmp_path / "MARKER"
    for folder in (basicsr_experiment, basicsr_experiment / "models"):
        (folder / "helper.py").write_text(STRAY.format(marker=str(marker)))
    (basicsr_experiment / "notes.yaml").write_text("network_g: {type: Nope}\n")  # not BasicSR's copy
    checkpoint = basicsr_experiment / "models" / "net_g_latest.pth"
    net = load_network(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["params"]
    assert net.backbone.intro.out_channels == 8
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert not marker.exists()


def test_restore_finds_the_config_mmengine_recorded_for_the_run(mmengine_checkpoint, tmp_path):
    saved = torch.load(mmengine_checkpoint, map_location="cpu", weights_only=False)
    ema = {k[len("module."):] if k.startswith("module.") else k: v for k, v in saved["ema_state_dict"].items()}
    expected = {k[len("net."):]: v for k, v in ema.items() if k.startswith("net.")}  # the EMA weights
    # the work dir as the run left it (the config dumps are found by the run name in the checkpoint)
    net = load_network(mmengine_checkpoint)
    assert net.backbone.intro.out_channels == 8
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    # the checkpoint alone, elsewhere: the config recorded in its meta
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(mmengine_checkpoint, alone / "iter_2.pth")
    marker = tmp_path / "MARKER"
    (alone / "helper.py").write_text(STRAY.format(marker=str(marker)))
    net = load_network(alone / "iter_2.pth")
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    # a file planted under the recorded name is read as plain values, never run
    (alone / "nafnet_constyle.py").write_text(STRAY.format(marker=str(marker)) + "model = dict(type='X')\n")
    with pytest.raises(RestoreError, match="--config"):
        load_network(alone / "iter_2.pth")
    assert not marker.exists()


def test_dumped_config_reader_refuses_code(tmp_path):
    marker = tmp_path / "MARKER"
    assert read_dumped_config("a = dict(b=[1, -2.5, (3, 'x')], c={'k': None}, d=True)\n", "cfg.py") == \
        {"a": {"b": [1, -2.5, (3, "x")], "c": {"k": None}, "d": True}}
    for code in (f"import os\nos.system('touch {marker}')\n", f"a = __import__('os').system('touch {marker}')\n",
                 f"a = dict(**__import__('os').system('touch {marker}'))\n", f"a = [open({str(marker)!r}, 'w')]\n"):
        with pytest.raises(RestoreError, match="--config"):
            read_dumped_config(code, "cfg.py")
    assert not marker.exists()


# -------------------------------------------------------------------- item 3: output collisions
def test_restore_same_stem_inputs_get_distinct_outputs(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "photo.png", 21, 30, seed=1)
    write_png(src / "photo.bmp", 40, 33, seed=2)  # lossless, so the inputs keep their pixels
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                                "--output", str(out), "--device", "cpu")
    assert code == 0 and "restored 2 image(s)" in stdout
    assert f"{src / 'photo.bmp'} is written as photo_bmp.png" in err
    assert tree(out) == ["photo_bmp.png", "photo_png.png"]
    assert read_image(out / "photo_png.png").shape == (21, 30, 3)
    assert read_image(out / "photo_bmp.png").shape == (40, 33, 3)


def test_restore_refuses_an_input_named_like_a_comparison_panel(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "photo.png", 16, 16, seed=1)
    write_png(src / "photo_compare.png", 16, 40, seed=2)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                           "--output", str(out), "--compare", "--device", "cpu")
    assert code == 2 and "photo_compare.png" in err and "--compare" in err
    assert not out.exists()
    code, _, _ = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                         "--output", str(out), "--device", "cpu")
    assert code == 0 and tree(out) == ["photo.png", "photo_compare.png"]


def test_restore_never_reads_its_outputs_as_inputs(mmengine_checkpoint, images, capsys):
    out = images / "restored"
    for _ in range(2):
        code, stdout, _ = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input",
                                  str(images), "--output", str(out), "--compare", "--device", "cpu")
        assert code == 0 and "restored 2 image(s)" in stdout
    assert tree(out) == ["a.png", "a_compare.png", "b.png", "b_compare.png"]
    # --output the input folder itself: the outputs would replace the inputs
    before = {p.name: p.read_bytes() for p in images.glob("*.png")}
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(images), "--device", "cpu")
    assert code == 2 and "--output" in err and "replace the input" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in images.glob("*.png")} == before


# ------------------------------------------------------------ item 4: every check before a write
def test_restore_checks_tiling_for_every_image_before_writing(mmengine_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "a_small.png", 16, 16, seed=1)  # fits one tile: the tile size is never used on it
    write_png(src / "b_large.png", 48, 48, seed=2)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(src),
                           "--output", str(out), "--tile", "20", "--tile-overlap", "20", "--device", "cpu")
    assert code == 2 and "--tile" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_restore_refuses_an_output_that_is_or_lies_under_a_file(mmengine_checkpoint, images, tmp_path, capsys,
                                                                where):
    blocker = tmp_path / "taken.png"
    blocker.write_bytes(b"not a folder")
    output = blocker if where == "file" else blocker / "sub" / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(output), "--device", "cpu")
    assert code == 2 and err.startswith("constyle restore: error: --output") and "file" in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_bytes() == b"not a folder"


def test_restore_refuses_a_read_only_output(tmp_path):
    # A folder the running user cannot write: root writes anywhere, so as root the command runs as nobody.
    user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no user for whom a folder is read-only")
        user = 65534
    base = Path(tempfile.mkdtemp(prefix="constyle-ro-"))
    try:
        base.chmod(0o755)
        write_png(base / "in" / "a.png", 16, 16)
        (base / "in").chmod(0o755)
        (base / "in" / "a.png").chmod(0o644)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        for output in (ro, ro / "new" / "out"):
            proc = constyle("restore", "--checkpoint", str(base / "absent.pth"), "--input", str(base / "in"),
                            "--output", str(output), "--device", "cpu", cwd=base, user=user)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "--output" in proc.stderr and "not writable" in proc.stderr
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def test_restore_refuses_devices_it_cannot_use(mmengine_checkpoint, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(out), "--device", "foo")
    assert code == 2 and "--device" in err and "'foo'" in err and "Traceback" not in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, "restore", "--checkpoint", str(mmengine_checkpoint), "--input", str(images),
                           "--output", str(out), "--device", "cuda")
    assert code == 2 and "--device cuda" in err and "no CUDA device" in err
    assert not out.exists()


# ------------------------------------------------------------ item 9: what loading errors say
def test_from_pretrained_on_a_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        ConStyleV2.from_pretrained(tmp_path)


def test_random_bytes_are_not_reported_as_python_objects(tmp_path):
    rng = np.random.default_rng(0)
    for name, head in (("random.pth", b""), ("pickle_opcode.pth", b"\x80")):
        path = tmp_path / name
        path.write_bytes(head + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError) as info:
            ConStyleV2.from_pretrained(path)
        message = str(info.value)
        assert name in message and "Python objects" not in message
        assert "not a PyTorch or safetensors checkpoint" in message or "damaged" in message


def test_key_mismatch_lists_the_first_keys_and_counts(basicsr_experiment, tmp_path):
    # an MMEngine-style dict (the restorer's weights under 'net.') given with a BasicSR options file
    params = torch.load(basicsr_experiment / "models" / "net_g_latest.pth", weights_only=True)["params"]
    checkpoint = tmp_path / "mmengine_style.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in params.items()}}, checkpoint)
    with pytest.raises(CheckpointError) as info:
        load_network(checkpoint, config=basicsr_experiment / "Tiny.yml")
    message = str(info.value)
    assert len(message) < 800, message
    assert "missing key(s), first:" in message and "unexpected key(s), first:" in message
    assert "MMEngine" in message


def test_train_resume_with_nothing_to_resume_says_it_starts_from_scratch(mmengine_run):
    work, proc = mmengine_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "nothing to resume" in output and "starts from scratch" in output
    assert "Auto resumed from the latest checkpoint None" not in output


# ------------------------------------------------ issue 9 item 7: num_workers=0 just works
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
@pytest.mark.parametrize("option, key, hint", [
    ("train_cfg.max_iter=2", "train_cfg.max_iter", "did you mean 'max_iters'"),
    ("train_dataloader.batchsize=4", "train_dataloader.batchsize", "did you mean 'batch_size'"),
    ("train_cfg.max_iters=0", "train_cfg.max_iters", "positive"),
    ("train_cfg.max_iters=-5", "train_cfg.max_iters", "positive"),
    ("optim_wrapper.optimizer.lrr=0.1", "optim_wrapper.optimizer.lrr", "did you mean 'lr'"),
    ("log_processor.windowsize=3", "log_processor.windowsize", "did you mean 'window_size'"),
])
def test_train_refuses_typos_and_empty_runs_before_the_work_dir(tmp_path, capsys, option, key, hint):
    work = tmp_path / "work"
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(work), "--cfg-options", option)
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
