"""save_pretrained / from_pretrained when things go wrong: a save that fails or is killed half-way
(the previous save stays loadable; other files in the folder are kept; leftovers are cleared), half
and bfloat16 nets (exact round trip), a meta-device backbone (refused), a hand-edited config.json
(each mistake named in one line), and a prompter that is not the packaged one (stored, so that the
folder loads on its own)."""
from __future__ import annotations

import copy
import errno
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from constyle_plugin import CheckpointError, ConStyleError, ConStyleUNet, ConStyleV2, wrap_unet
from constyle_plugin.archs import NAFNet

from processes import quiet_env
from unets import ModuleListUNet, as_trained, live_adapters

ROOT = Path(__file__).resolve().parents[2]


def _nafnet() -> NAFNet:
    return NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1])




def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _same_output(folder: Path, net: ConStyleUNet, **kwargs) -> bool:
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return torch.equal(ConStyleUNet.from_pretrained(folder, **kwargs)(x), net(x))


# ---------------------------------------------------------------------------- a save that fails half-way
def _fail_the_ema_write(monkeypatch):
    """safetensors' save_file writes half the EMA file, then the disk is full (model.safetensors succeeds)."""
    real = safetensors.torch.save_file

    def save_file(state, path, metadata=None):
        if Path(path).name == "model_ema.safetensors":
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_a_save_whose_ema_write_fails_leaves_the_previous_save_loadable_exactly(tmp_path, monkeypatch):
    first = as_trained(wrap_unet(_nafnet()), seed=1)
    first.save_pretrained(tmp_path / "run")
    before = _files(tmp_path / "run")

    second = as_trained(wrap_unet(_nafnet()), seed=2)
    _fail_the_ema_write(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        second.save_pretrained(tmp_path / "run", include_prompter=True, ema=copy.deepcopy(second))
    monkeypatch.undo()
    assert _files(tmp_path / "run") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left beside it
    assert _same_output(tmp_path / "run", first)

    # the same save on a disk with room replaces the folder as a whole, EMA included
    second.save_pretrained(tmp_path / "run", include_prompter=True, ema=copy.deepcopy(second))
    assert sorted(_files(tmp_path / "run")) == ["config.json", "model.safetensors", "model_ema.safetensors"]
    assert _same_output(tmp_path / "run", second)
    first.save_pretrained(tmp_path / "run")  # and a save without EMA leaves no EMA file of the one before
    assert sorted(_files(tmp_path / "run")) == ["config.json", "model.safetensors"]
    assert _same_output(tmp_path / "run", first) and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_holding_other_files_keeps_them_through_saves_and_failed_saves(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("the user's own file\n")
    first = as_trained(wrap_unet(_nafnet()), seed=1)
    first.save_pretrained(run, ema=copy.deepcopy(first))
    before = _files(run)
    assert set(before) == {"train.log", "config.json", "model.safetensors", "model_ema.safetensors"}

    second = as_trained(wrap_unet(_nafnet()), seed=2)
    _fail_the_ema_write(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        second.save_pretrained(run, ema=copy.deepcopy(second))
    monkeypatch.undo()
    assert _files(run) == before and _same_output(run, first)

    second.save_pretrained(run)
    assert set(_files(run)) == {"train.log", "config.json", "model.safetensors"}
    assert (run / "train.log").read_text() == "the user's own file\n" and _same_output(run, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILLED_BETWEEN_RENAMES = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import torch
    from constyle_plugin import ConStyleV2, wrap_unet
    from constyle_plugin.archs import NAFNet

    run = Path(sys.argv[1]).resolve()
    real = os.rename

    def rename(src, dst):
        if Path(dst) == run:  # the new folder moving in, after the previous one moved aside
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.rename = rename
    torch.manual_seed(2)
    wrap_unet(NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1])).save_pretrained(run)
''')


def test_a_save_killed_between_its_renames_says_where_the_previous_save_is_and_the_next_save_clears_up(tmp_path):
    first = as_trained(wrap_unet(_nafnet()), seed=1)
    first.save_pretrained(tmp_path / "run")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BETWEEN_RENAMES)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=quiet_env(
        PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run."))
    assert [name.split("-")[0] for name in hidden] == [".run.replaced", ".run.saving"], hidden
    assert not (tmp_path / "run").exists()

    with pytest.raises(FileNotFoundError) as info:
        ConStyleUNet.from_pretrained(tmp_path / "run")
    aside = next(tmp_path.glob(".run.replaced-*"))
    assert f"the previous save is in {aside}: rename that folder to run" in str(info.value)
    assert "\n" not in str(info.value)
    assert _same_output(aside, first)

    first.save_pretrained(tmp_path / "run")  # the killed process is gone: its folders are deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.py", "run"]
    assert _same_output(tmp_path / "run", first)


# ---------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_net_round_trips_exactly(dtype, tmp_path):
    """``wrap_unet(u).to(dtype)`` (prompter converted too): the prompter is recorded and checked in that
    dtype, the user's class loads with the message's own advice unneeded, bit for bit; a reference arch
    is rebuilt in the saved dtype."""
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet())).to(dtype).eval()
    net.save_pretrained(tmp_path / "own")
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    name = str(dtype).removeprefix("torch.")
    assert config["dtype"] == name and config["prompter"]["dtype"] == name
    assert config["prompter"]["source"] == "packaged" and config["prompter"]["stored"] is False
    x = torch.rand(2, 3, 32, 48).to(dtype)
    with torch.no_grad():
        loaded = ConStyleUNet.from_pretrained(tmp_path / "own", backbone=ModuleListUNet().to(dtype))
        assert next(loaded.prompter.parameters()).dtype == dtype
        assert torch.equal(loaded(x), net(x))
        # a prompter given as an object is converted in a copy; the caller's stays float32
        given = ConStyleV2.from_pretrained()
        loaded = ConStyleUNet.from_pretrained(tmp_path / "own", backbone=ModuleListUNet().to(dtype), prompter=given)
        assert torch.equal(loaded(x), net(x)) and next(given.parameters()).dtype == torch.float32

        reference = as_trained(wrap_unet(_nafnet()), seed=3).to(dtype)
        reference.save_pretrained(tmp_path / "reference")
        rebuilt = ConStyleUNet.from_pretrained(tmp_path / "reference")
        assert next(rebuilt.backbone.parameters()).dtype == dtype and torch.equal(rebuilt(x), reference(x))


def test_a_half_backbone_under_a_float32_prompter_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet().half())).eval()  # wrap_unet keeps the prompter float32
    net.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prompter"]["dtype"] == "float32"
    x = torch.rand(1, 3, 32, 32).half()
    with torch.no_grad():
        loaded = ConStyleUNet.from_pretrained(tmp_path / "run", backbone=ModuleListUNet().half())
        assert next(loaded.prompter.parameters()).dtype == torch.float32 and torch.equal(loaded(x), net(x))


# ---------------------------------------------------------------------------- meta device
def test_from_pretrained_refuses_a_meta_backbone_as_wrap_unet_does(tmp_path):
    as_trained(wrap_unet(_nafnet()), seed=1).save_pretrained(tmp_path / "run")
    with torch.device("meta"):
        backbone = _nafnet()
    for call in (lambda: wrap_unet(backbone), lambda: ConStyleUNet.from_pretrained(tmp_path / "run",
                                                                                   backbone=backbone)):
        with pytest.raises(ValueError, match=r"has tensors on the meta device \('intro\.weight', \.\.\.\)") as info:
            call()
        assert "\n" not in str(info.value)
    assert isinstance(info.value, ConStyleError) and "Pass a materialised instance" in str(info.value)


# ---------------------------------------------------------------------------- a hand-edited config.json
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "run"
    as_trained(wrap_unet(_nafnet()), seed=1).save_pretrained(folder)
    return folder


def _edited(saved: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "edited"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _bottleneck(config: dict) -> dict:
    return next(i for i in config["stage_info"] if i["role"] == "bottleneck")


EDITS = {
    "edited stages": (lambda c: c.update(stages={"encoder": ["downs.0", "downs.1", "downs.2"], "bottleneck": "downs.3",
                                                 "decoder": ["ups.0", "ups.1", "ups.2", "ups.3"]}),
                      r"config\.json: stages\.bottleneck is 'downs\.3' but stage_info says 'middle_blks'; the hook "
                      r"points are stage_info \(stages is derived from it\): edit stage_info, and delete stages"),
    "stage_info name": (lambda c: _bottleneck(c).update(name="middle_blk"),
                        r"config\.json: stage_info: 'middle_blk' is not a module of NAFNet; "
                        r"did you mean 'middle_blks'"),
    "stage_info role": (lambda c: _bottleneck(c).update(role="botleneck"),
                        r"config\.json: stage_info\[3\]\.role: expected one of \['encoder', 'bottleneck', 'decoder'\], "
                        r"got 'botleneck'; did you mean 'bottleneck'\?"),
    "stage_info layout": (lambda c: _bottleneck(c).update(layout="BHCW"),
                          r"stage_info\[3\]\.layout: expected one of \['BCHW', 'BHWC', 'BLC'\], got 'BHCW'"),
    "stage_info channels": (lambda c: _bottleneck(c).update(channels="64"),
                            r"stage_info\[3\]\.channels: expected a positive integer, got '64'"),
    "stage_info output_index": (lambda c: _bottleneck(c).update(output_index=-1),
                                r"stage_info\[3\]\.output_index: expected null or the index of the feature"),
    "stage_info not a list": (lambda c: c.update(stage_info={"role": "encoder"}),
                              r"config\.json: stage_info: expected a list of hook points"),
    "extra key in stage_info": (lambda c: _bottleneck(c).update(chanels=64),
                                r"config\.json: stage_info\[3\]: unknown field 'chanels'; did you mean 'channels'\?"),
    "extra top-level key": (lambda c: c.update(imagekey="lq"),
                            r"config\.json: unknown field 'imagekey'; did you mean 'image_key'\?"),
    "misspelt inject target": (lambda c: c.update(inject=["encoder", "bottlenek"]),
                               r"config\.json: inject: 'bottlenek' is not an injection target; did you mean "
                               r"'bottleneck'\?"),
    "inject target without a hook point": (lambda c: c.update(inject=["encoder", "decoder"], stage_info=[
        i for i in c["stage_info"] if i["role"] != "decoder"]),
                                           r"config\.json: inject: asks for 'decoder', but stage_info has no "
                                           r"decoder hook point"),
    "dtype": (lambda c: c.update(dtype="float17"), r"config\.json: dtype: dtype 'float17' is not a floating-point"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_each_hand_edited_config_mistake_is_named_in_one_line_at_load(case, saved, tmp_path):
    edit, message = EDITS[case]
    folder = _edited(saved, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        ConStyleUNet.from_pretrained(folder)
    assert "\n" not in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_the_hook_points_are_stage_info_and_the_stagespec_follows_them(saved, tmp_path):
    """A consistent edit of stage_info (and of a stages field that older saves wrote beside it) moves the
    hook and what net.stages and describe() show together."""
    original = ConStyleUNet.from_pretrained(saved)

    def move_bottleneck(config):  # to the module that feeds middle_blks (as many channels, at the same scale)
        _bottleneck(config).update(name="downs.3")
        config["stages"] = {"encoder": ["downs.0", "downs.1", "downs.2"], "bottleneck": "downs.3",
                            "decoder": ["ups.0", "ups.1", "ups.2", "ups.3"]}

    loaded = ConStyleUNet.from_pretrained(_edited(saved, tmp_path, move_bottleneck))
    assert loaded.stages.bottleneck == "downs.3" and "bottleneck downs.3" in " ".join(loaded.describe().split())
    assert [i.name for i in loaded.stage_info if i.role == "bottleneck"] == ["downs.3"]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(loaded(x), original(x))  # the bottleneck injection now acts on downs.3


def test_a_hook_point_recorded_with_other_channels_is_named_at_the_first_forward(saved, tmp_path):
    """Channel counts need a forward to check (loading runs no probe): a hook point renamed to a module
    with other channels is named there, not left to a convolution's shape error."""
    def rename(config):
        _bottleneck(config).update(name="encoders.3")  # 64 channels, the record says 128

    loaded = ConStyleUNet.from_pretrained(_edited(saved, tmp_path, rename))
    with pytest.raises(ConStyleError) as info, torch.no_grad():
        loaded(torch.rand(1, 3, 32, 32))
    assert "\n" not in str(info.value)
    assert "'encoders.3' (bottleneck) gives 64 channels, but the hook point was recorded with 128" in str(info.value)


# ---------------------------------------------------------------------------- a prompter of one's own
def test_a_net_with_its_own_prompter_is_saved_with_it_and_loads_alone(tmp_path):
    torch.manual_seed(4)
    net = live_adapters(wrap_unet(_nafnet(), prompter=ConStyleV2().freeze()))
    net.save_pretrained(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["prompter"]["stored"] is True and config["prompter"]["source"] == "unrecorded"
    assert _same_output(tmp_path / "run", net)
    with pytest.warns(UserWarning, match=r"include_prompter=False with a prompter that is not the packaged one"):
        net.save_pretrained(tmp_path / "bare", include_prompter=False)
    assert _same_output(tmp_path / "bare", net, prompter=net.prompter)
