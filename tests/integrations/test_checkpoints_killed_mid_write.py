"""Exports and checkpoints survive a kill mid-write.

- ``ConStyleV2.save_pretrained`` (``.safetensors`` and ``.pth``) SIGKILLed half-way through
  overwriting an export leaves the previous export byte-identical (control: the same kill with the
  write done in place corrupts the file);
- the ``basicsr`` command (the console script declared in ``setup.cfg``) writes every checkpoint
  (``net_g_*.pth``, ``<iter>.state``, ``.rng``) to a hidden temporary file that is then renamed into
  place, and a kill in the middle of a real save leaves no partial checkpoint under a final name.

Every writer is a fresh interpreter, killed with SIGKILL (no clean-up code runs).
"""
from __future__ import annotations

import collections
import configparser
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest
import torch

from constyle_plugin import CheckpointError, ConStyleV2

from processes import kill_when, visible
from basicsr_runs import NAME, OPTIONS_DIR, tiny_options

ROOT = Path(__file__).resolve().parents[2]
TEMP = re.compile(r"^\..+\.tmp$")  # atomic_write's temporary files: .<name>.<random>.tmp


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------
# save_pretrained
# ------------------------------------------------------------------------------------------------
# The child exports a prompter, keeps a copy of the file beside the folder, then exports another
# prompter to the same path with a writer that stops half way (the first half flushed to disk) until
# the parent kills it. "plain" replaces atomic_write by a write to the final path (the control).
EXPORT_CHILD = textwrap.dedent(r'''
    import io, os, shutil, sys, time
    import safetensors.torch, torch
    import constyle_plugin.core.prompter as prompter_module
    from constyle_plugin import ConStyleV2

    path, mode = sys.argv[1:3]
    torch.manual_seed(0)
    ConStyleV2().save_pretrained(path)
    shutil.copy(path, os.path.join(os.path.dirname(os.path.dirname(path)), "first.bak"))
    if mode == "plain":
        prompter_module.atomic_write = lambda target, write: write(target)

    def half_then_wait(data, target):
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            print("WRITING", target, flush=True)
            time.sleep(300)
            fh.write(data[len(data) // 2:])

    def slow_save_file(tensors, filename, metadata=None):
        half_then_wait(safetensors.torch.save(tensors, metadata=metadata), filename)

    def slow_torch_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        half_then_wait(buf.getvalue(), f)

    real_save = torch.save
    safetensors.torch.save_file = slow_save_file
    torch.save = slow_torch_save
    torch.manual_seed(1)
    ConStyleV2().save_pretrained(path)
''')


def _killed_export(tmp_path: Path, name: str, mode: str) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    script = tmp_path / "child.py"
    script.write_text(EXPORT_CHILD)
    out = kill_when([sys.executable, str(script), str(folder / name), mode], tmp_path,
                     lambda text: "WRITING" in text)
    written = Path(out.split("WRITING", 1)[1].split()[0])
    assert written.parent == folder
    return written


@pytest.mark.parametrize("name", ["prompter.safetensors", "prompter.pth"])
def test_save_pretrained_killed_mid_write_keeps_the_previous_export(tmp_path, name):
    written = _killed_export(tmp_path, name, "atomic")
    folder = written.parent
    assert TEMP.match(written.name), written.name  # the half-written bytes went to a temporary file
    assert visible(folder) == [name]
    assert (folder / name).read_bytes() == (tmp_path / "first.bak").read_bytes()
    torch.manual_seed(0)
    first = ConStyleV2().state_dict()
    loaded = ConStyleV2.from_pretrained(folder / name).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in first.items())


def test_save_pretrained_written_in_place_and_killed_is_corrupt(tmp_path):
    """The control: what the atomic write prevents (so the test above can fail)."""
    written = _killed_export(tmp_path, "prompter.pth", "plain")
    assert written.name == "prompter.pth"
    assert written.read_bytes() != (tmp_path / "first.bak").read_bytes()
    with pytest.raises(CheckpointError, match="prompter.pth"):
        ConStyleV2.from_pretrained(written)


# ------------------------------------------------------------------------------------------------
# The basicsr command
# ------------------------------------------------------------------------------------------------
def _basicsr_console_script() -> str:
    """``module:function`` of the ``basicsr`` console script, as setup.cfg declares it."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for line in cfg["options.entry_points"]["console_scripts"].splitlines():
        name, _, target = line.partition("=")
        if name.strip() == "basicsr":
            return target.strip()
    raise AssertionError("setup.cfg declares no basicsr console script")


# The real command, with torch.save, os.replace and os.rename reported on stdout as they happen. The
# second save of a network (the checkpoint after the first) writes half its bytes and waits to be
# killed.
BASICSR_SPY = textwrap.dedent(r'''
    import io, os, sys, time, torch
    real_save, real_replace, real_rename = torch.save, os.replace, os.rename

    def spy_save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *args, **kwargs)
        f = os.path.abspath(f)
        print("SAVE", f, flush=True)
        if os.environ["KILL_AT"] in os.path.basename(f):  # the final name, or a temporary file for it
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                print("WRITING", f, flush=True)
                time.sleep(300)
        return real_save(obj, f, *args, **kwargs)

    def spy_replace(src, dst, *args, **kwargs):
        print("RENAME", os.path.abspath(src), os.path.abspath(dst), flush=True)
        return real_replace(src, dst, *args, **kwargs)

    def spy_rename(src, dst, *args, **kwargs):
        print("RENAME", os.path.abspath(src), os.path.abspath(dst), flush=True)
        return real_rename(src, dst, *args, **kwargs)

    torch.save, os.replace, os.rename = spy_save, spy_replace, spy_rename
    module, _, function = sys.argv[1].partition(":")
    sys.argv = ["basicsr", *sys.argv[2:]]
    main = getattr(__import__(module, fromlist=[function]), function)
    sys.exit(main())
''')


def _created_by_rename(out: str, folders: List[Path]) -> None:
    """Every checkpoint file in ``folders`` was renamed into place from a hidden temporary file beside
    it, and nothing was ever saved straight to a final name there."""
    saves = [Path(p) for p in re.findall(r"^SAVE (\S+)$", out, re.M)]
    renames = {Path(dst): Path(src) for src, dst in re.findall(r"^RENAME (\S+) (\S+)$", out, re.M)}
    direct = [p for p in saves if p.parent in folders and not TEMP.match(p.name)]
    assert not direct, f"saved straight to the final path: {direct}"
    for folder in folders:
        for name in visible(folder):
            src = renames.get(folder / name)
            assert src is not None, f"{folder / name} was not created by a rename"
            assert src.parent == folder and TEMP.match(src.name) and name in src.name, (name, src)


def test_basicsr_command_writes_checkpoints_by_rename_and_a_kill_mid_save_leaves_no_partial_file(
        tmp_path, photos, prompter_file):
    """The command trains 4 iterations with a checkpoint every 2, and is killed half-way through writing
    the iteration-4 network."""
    script = tmp_path / "spy.py"
    script.write_text(BASICSR_SPY)
    opts = tiny_options(photos, prompter_file, total_iter=4, ckpt_freq=2)
    cmd = [sys.executable, str(script), _basicsr_console_script(), "train", "-opt",
           str(OPTIONS_DIR / "nafnet_constyle.yml"), "--force_yml", *opts]
    out = kill_when(cmd, tmp_path, lambda text: "WRITING" in text, env={**_env(), "KILL_AT": "net_g_4.pth"})
    exp = tmp_path / "experiments" / NAME
    models, states = exp / "models", exp / "training_states"
    # the iteration-2 checkpoint, and the iteration-4 generator state (written first): complete files,
    # each renamed into place; no net_g_4.pth and no 4.state
    assert visible(models) == ["net_g_2.pth"]
    assert visible(states) == ["2.rank0.rng", "2.state", "4.rank0.rng"]
    _created_by_rename(out, [models, states])
    assert torch.load(models / "net_g_2.pth", weights_only=True)["params"]
    with torch.serialization.safe_globals([collections.Counter]):
        assert torch.load(states / "2.state", weights_only=True)["iter"] == 2
    # the write that was killed went to a hidden temporary file, not to net_g_4.pth
    written = Path(out.split("WRITING", 1)[1].split()[0])
    assert written.parent == models and TEMP.match(written.name) and "net_g_4.pth" in written.name


# ------------------------------------------------------------------------------------------------
# The constyle train command (MMEngine)
# ------------------------------------------------------------------------------------------------
# The real command, with writes of .pth files and renames reported on stdout.
CONSTYLE_SPY = textwrap.dedent(r'''
    import builtins, os, sys
    real_open, real_replace, real_rename = builtins.open, os.replace, os.rename

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).endswith((".pth", ".tmp")) and "w" in mode:
            print("WRITE", os.path.abspath(file), flush=True)
        return real_open(file, mode, *args, **kwargs)

    def spy_replace(src, dst, *args, **kwargs):
        print("RENAME", os.path.abspath(src), os.path.abspath(dst), flush=True)
        return real_replace(src, dst, *args, **kwargs)

    def spy_rename(src, dst, *args, **kwargs):
        print("RENAME", os.path.abspath(src), os.path.abspath(dst), flush=True)
        return real_rename(src, dst, *args, **kwargs)

    builtins.open, os.replace, os.rename = spy_open, spy_replace, spy_rename
    from constyle_plugin.cli import main
    sys.argv = ["constyle", *sys.argv[1:]]
    sys.exit(main())
''')


def test_constyle_train_writes_checkpoints_by_rename(tmp_path):
    """README: MMEngine checkpoints are atomic through ConStyleRunner.save_checkpoint; this runs the real
    ``constyle train`` (2 iterations, a checkpoint at each) and checks how its .pth files came to be."""
    script = tmp_path / "spy.py"
    script.write_text(CONSTYLE_SPY)
    work = tmp_path / "work"
    cfg_options = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=1",
                   "model.backbone.width=8", "model.backbone.enc_blk_nums=[1,1,1]",
                   "model.backbone.dec_blk_nums=[1,1,1]", "train_dataloader.batch_size=2",
                   "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                   "train_dataloader.dataset.gt_size=32", "val_dataloader.num_workers=0",
                   "val_dataloader.persistent_workers=False", "val_dataloader.dataset.gt_size=32"]
    proc = subprocess.run([sys.executable, str(script), "train", str(ROOT / "options" / "mmengine" / "nafnet_constyle.py"),
                           "--work-dir", str(work), "--cfg-options", *cfg_options], cwd=tmp_path,
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    checkpoints = sorted(p.name for p in work.glob("*.pth"))
    assert checkpoints == ["best_PSNR_iter_2.pth", "iter_1.pth", "iter_2.pth"], checkpoints
    writes = [Path(p) for p in re.findall(r"^WRITE (\S+)$", out, re.M)]
    renames = {Path(dst): Path(src) for src, dst in re.findall(r"^RENAME (\S+) (\S+)$", out, re.M)}
    assert not [p for p in writes if p.parent == work and p.suffix == ".pth"], writes  # never in place
    for name in checkpoints:
        src = renames.get(work / name)
        assert src is not None and src.parent == work and TEMP.match(src.name) and name in src.name, (name, src)
        assert src in writes  # the bytes went to the temporary file


# ------------------------------------------------------------------------------------------------
# The trainers' own save functions killed mid-write
# ------------------------------------------------------------------------------------------------
# The child saves once, keeps a copy of that file, then starts a second save whose write stops half
# way (the first half flushed to disk) until the parent kills it. It runs BasicSR's own
# BaseModel.save_network / save_training_state, or MMEngine's save_checkpoint through
# ConStyleRunner.save_checkpoint, with ("atomic") or without ("plain") the plugin's atomic writes.
BASICSR_CHILD = textwrap.dedent(r'''
    import contextlib, io, os, shutil, sys, time, torch
    from constyle_plugin.compat import ensure_basicsr_importable
    ensure_basicsr_importable()
    from basicsr.models.base_model import BaseModel
    from constyle_plugin.integrations.basicsr.cli import atomic_torch_save

    folder, mode, target = sys.argv[1:4]
    model = BaseModel.__new__(BaseModel)
    model.opt = {"path": {"models": folder, "training_states": folder}, "dist": False, "rank": 0}
    net = torch.nn.Linear(64, 64)
    optim = torch.optim.Adam(net.parameters())
    net(torch.ones(2, 64)).sum().backward()
    optim.step()
    model.optimizers, model.schedulers = [optim], []
    ctx = atomic_torch_save if mode == "atomic" else contextlib.nullcontext

    def save(it):
        with ctx():
            if target == "network":
                model.save_network(net, "net_g", -1)
            else:
                model.save_training_state(0, it)

    save(1)
    first = os.path.join(folder, "net_g_latest.pth" if target == "network" else "1.state")
    shutil.copy(first, os.path.join(os.path.dirname(folder), "first.bak"))
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            print("WRITING", flush=True)
            time.sleep(300)
            fh.write(data[len(data) // 2:])

    torch.save = slow_save
    with torch.no_grad():
        net.weight.add_(1.0)
    optim.step()
    save(2)
''')

MMENGINE_CHILD = textwrap.dedent(r'''
    import builtins, os, shutil, sys, time, torch
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import save_checkpoint
    from constyle_plugin.integrations.mmengine.runner import ConStyleRunner

    folder, mode = sys.argv[1:3]

    def runner_save(self, out_dir, filename, **kwargs):  # Runner.save_checkpoint's writing part
        save_checkpoint({"state_dict": self.state, "meta": {"iter": self.step}}, os.path.join(out_dir, filename),
                        backend_args=kwargs.get("backend_args"))

    Runner.save_checkpoint = runner_save
    runner = ConStyleRunner.__new__(ConStyleRunner)
    runner.state, runner.step = {"w": torch.randn(256, 256)}, 1
    save = runner.save_checkpoint if mode == "atomic" else lambda *a: Runner.save_checkpoint(runner, *a)
    save(folder, "latest.pth")
    shutil.copy(os.path.join(folder, "latest.pth"), os.path.join(os.path.dirname(folder), "first.bak"))
    real_open = builtins.open

    class SlowFile:
        def __init__(self, fh):
            self.fh = fh
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            print("WRITING", flush=True)
            time.sleep(300)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.fh.close()
        def __getattr__(self, name):
            return getattr(self.fh, name)

    def slow_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return SlowFile(fh) if str(file).startswith(folder) and "w" in mode else fh

    builtins.open = slow_open
    runner.state, runner.step = {"w": torch.randn(256, 256)}, 2
    save(folder, "latest.pth")
''')


def _run_killed_save(tmp_path: Path, child: str, *args: str) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    script = tmp_path / "child.py"
    script.write_text(child)
    kill_when([sys.executable, str(script), str(folder), *args], tmp_path, lambda out: "WRITING" in out)
    return folder


def _load(path: Path):
    from constyle_plugin.integrations.mmengine.runner import mmengine_checkpoint_globals

    with mmengine_checkpoint_globals():
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("target", ["network", "state"])
def test_basicsr_save_killed_mid_write_keeps_the_previous_checkpoint(tmp_path, target):
    folder = _run_killed_save(tmp_path, BASICSR_CHILD, "atomic", target)
    first = tmp_path / "first.bak"
    if target == "network":  # net_g_latest.pth is overwritten in place by each save
        assert visible(folder) == ["net_g_latest.pth"]
        assert (folder / "net_g_latest.pth").read_bytes() == first.read_bytes()
        assert _load(folder / "net_g_latest.pth")["params"]["weight"].shape == (64, 64)
    else:  # a new <iter>.state: no partial 2.state that --auto_resume would pick as the latest
        assert visible(folder) == ["1.state"]
        assert (folder / "1.state").read_bytes() == first.read_bytes()
        assert _load(folder / "1.state")["iter"] == 1
    assert all(p.name.endswith(".tmp") for p in folder.iterdir() if p.name.startswith("."))


def test_basicsr_plain_save_killed_mid_write_corrupts_the_file(tmp_path):
    """The hazard the atomic writes remove: BasicSR's own torch.save to the final path."""
    folder = _run_killed_save(tmp_path, BASICSR_CHILD, "plain", "network")
    assert (folder / "net_g_latest.pth").read_bytes() != (tmp_path / "first.bak").read_bytes()
    with pytest.raises(Exception):
        _load(folder / "net_g_latest.pth")


@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_mmengine_save_killed_mid_write(tmp_path, mode):
    folder = _run_killed_save(tmp_path, MMENGINE_CHILD, mode)
    assert visible(folder) == ["latest.pth"]
    if mode == "atomic":  # ConStyleRunner.save_checkpoint
        assert (folder / "latest.pth").read_bytes() == (tmp_path / "first.bak").read_bytes()
        assert _load(folder / "latest.pth")["meta"]["iter"] == 1
    else:  # MMEngine's LocalBackend.put writes in place
        with pytest.raises(Exception):
            _load(folder / "latest.pth")
