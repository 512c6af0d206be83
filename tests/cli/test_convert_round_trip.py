"""``constyle convert`` closes its round trip and says what it cannot do: a checkpoint written from a saved
folder (``--to``) converts back and restores without ``--config`` (it carries the folder's config.json); one
trainer's checkpoint converts into the other's with ``--to``; a folder given as a checkpoint's ``--output``,
a file name given as a folder's, and a BasicSR training state are refused in one line naming the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from constyle_plugin import ConStyleUNet
from constyle_plugin.tools.restore import load_network

from cli_runs import run_cli, save_tiny_trained_net


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save_tiny_trained_net(tmp_path_factory.mktemp("convert") / "run")


def _equal_states(a, b) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ok(capsys, *args: str) -> str:
    code, out, err = run_cli(capsys, "convert", *args)
    assert code == 0, err
    return out


def _refused(capsys, *args: str) -> str:
    code, out, err = run_cli(capsys, "convert", *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("constyle convert: error: "), err
    return err


@pytest.mark.parametrize("trainer", ["basicsr", "mmengine"])
def test_a_checkpoint_written_from_a_folder_converts_back_and_restores_without_config(saved, tmp_path, capsys,
                                                                                      trainer):
    original = ConStyleUNet.from_pretrained(saved).state_dict()
    _ok(capsys, "--checkpoint", str(saved), "--to", trainer, "--output", str(tmp_path / "net.pth"))
    _ok(capsys, "--checkpoint", str(tmp_path / "net.pth"), "--output", str(tmp_path / "again"))
    _equal_states(ConStyleUNet.from_pretrained(tmp_path / "again").state_dict(), original)
    _equal_states(load_network(tmp_path / "net.pth").state_dict(), original)  # what restore / evaluate load


def test_one_trainers_checkpoint_converts_into_the_others(saved, tmp_path, capsys):
    original = ConStyleUNet.from_pretrained(saved).state_dict()
    _ok(capsys, "--checkpoint", str(saved), "--to", "basicsr", "--output", str(tmp_path / "net_g.pth"))
    out = _ok(capsys, "--checkpoint", str(tmp_path / "net_g.pth"), "--to", "mmengine", "--output",
              str(tmp_path / "iter_0.pth"))
    assert "mmengine checkpoint" in out and not (tmp_path / "iter_0.pth").is_dir()
    mm = torch.load(tmp_path / "iter_0.pth", map_location="cpu", weights_only=True)
    _equal_states({k[len("net."):]: v for k, v in mm["state_dict"].items()}, original)


def test_outputs_of_the_wrong_kind_and_training_states_are_refused_in_one_line(saved, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    err = _refused(capsys, "--checkpoint", str(saved), "--to", "basicsr", "--output", str(folder) + "/")
    assert f"--output: {folder}/ is a folder; the basicsr checkpoint is one file" in err
    assert sorted(folder.iterdir()) == []  # no temporary file left either
    _ok(capsys, "--checkpoint", str(saved), "--to", "basicsr", "--output", str(tmp_path / "net_g.pth"))
    err = _refused(capsys, "--checkpoint", str(tmp_path / "net_g.pth"), "--output", str(tmp_path / "x.pth"))
    assert "--output: " in err and "converts into a folder" in err and "--to basicsr|mmengine" in err
    assert not (tmp_path / "x.pth").exists()
    linear = torch.nn.Linear(2, 2)
    optimiser = torch.optim.Adam(linear.parameters())
    linear(torch.ones(1, 2)).sum().backward()
    optimiser.step()
    state = tmp_path / "57.state"  # what BasicSR's save_training_state writes
    torch.save({"epoch": 0, "iter": 57, "optimizers": [optimiser.state_dict()],
                "schedulers": [{"milestones": {10: 1}, "last_epoch": 57}]}, state)
    err = _refused(capsys, "--checkpoint", str(state), "--output", str(tmp_path / "run"))
    assert f"{state}: a BasicSR training state" in err and "net_g_57.pth" in err and "--config" not in err
