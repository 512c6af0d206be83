"""``constyle convert`` and ``constyle export`` end to end on tiny runs of both trainers: a checkpoint of
``basicsr train -opt options/nafnet_constyle.yml`` (params and params_ema) and of ``constyle train``
(MMEngine) become save_pretrained folders and back, bit for bit; the BasicSR checkpoint becomes an ONNX
file with one command, and ``constyle restore`` with the folder gives the images the checkpoint gives (with
the ONNX file, to one 8-bit level)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin import ConStyleUNet
from constyle_plugin.tools.restore import load_network

from basicsr_runs import OPTIONS_DIR as OPTIONS, overrides, run
from cli_runs import run_cli, write_png


@pytest.fixture(scope="module")
def basicsr_checkpoint(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("basicsr_run")
    run(work, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml", *overrides("nafnet_constyle"))
    return work / "experiments" / "NAFNet_ConStyle_v2" / "models" / "net_g_latest.pth"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lq")
    write_png(folder / "odd.png", 37, 53, seed=1)
    write_png(folder / "wide.png", 40, 90, seed=2)
    return folder


def _equal_states(a, b) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_basicsr_checkpoint_to_folder_and_back(basicsr_checkpoint, tmp_path, capsys):
    raw = torch.load(basicsr_checkpoint, map_location="cpu", weights_only=True)
    assert {"params", "params_ema"} <= set(raw)  # the run keeps an EMA copy
    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(basicsr_checkpoint), "--output",
                             str(tmp_path / "run"))
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config["weights"]) == {"model", "ema"} and config["prompter"]["stored"] is False
    assert config["backbone"]["class"] == "NAFNet" and config["backbone"]["kwargs"]["width"] > 0
    _equal_states(ConStyleUNet.from_pretrained(tmp_path / "run", ema=False).state_dict(), raw["params"])
    _equal_states(ConStyleUNet.from_pretrained(tmp_path / "run").state_dict(), raw["params_ema"])

    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(tmp_path / "run"), "--to", "basicsr",
                             "--output", str(tmp_path / "net_g.pth"))
    assert code == 0, err
    back = torch.load(tmp_path / "net_g.pth", map_location="cpu", weights_only=True)
    _equal_states(back["params"], raw["params"])
    _equal_states(back["params_ema"], raw["params_ema"])


def test_mmengine_checkpoint_to_folder_and_back(mmengine_checkpoint, tmp_path, capsys):
    """MMEngine's EMAHook saves the average in ``state_dict`` and the trained weights in ``ema_state_dict``
    (``module.net.*``): the folder's EMA is the former, its model the latter, and back the same way."""
    from constyle_plugin.runs import run_reader

    with run_reader("mmengine").checkpoint_globals():
        raw = torch.load(mmengine_checkpoint, map_location="cpu", weights_only=True)
    average = {k: v for k, v in raw["state_dict"].items() if k.startswith("net.")}
    trained = {k[len("module."):]: v for k, v in raw["ema_state_dict"].items() if k.startswith("module.net.")}
    assert any(not torch.equal(average[k], trained[k]) for k in average)  # the run's EMA moved apart
    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(mmengine_checkpoint), "--output",
                             str(tmp_path / "run"))
    assert code == 0, err
    files = json.loads((tmp_path / "run" / "config.json").read_text())["weights"]
    assert set(files) == {"model", "ema"}
    for ema, expected in ((False, trained), (True, average)):
        loaded = ConStyleUNet.from_pretrained(tmp_path / "run", ema=ema)
        _equal_states({f"net.{k}": v for k, v in loaded.state_dict().items()}, expected)

    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(tmp_path / "run"), "--to", "mmengine",
                             "--output", str(tmp_path / "iter_0.pth"))
    assert code == 0, err
    back = torch.load(tmp_path / "iter_0.pth", map_location="cpu", weights_only=True)
    _equal_states(back["state_dict"], average)
    _equal_states({k[len("module."):]: v for k, v in back["ema_state_dict"].items() if k.startswith("module.")},
                  trained)


def test_basicsr_checkpoint_to_onnx_and_restore_gives_the_checkpoints_images_to_one_level(basicsr_checkpoint, images,
                                                                                          tmp_path, capsys):
    """The folder restores the checkpoint's images exactly; the ONNX file, up to one 8-bit level where the
    float outputs (onnxruntime's kernels add in another order than torch's) round differently, as
    docs/checkpoints.md says."""
    onnx_file = tmp_path / "nafnet.onnx"
    code, out, err = run_cli(capsys, "export", "--checkpoint", str(basicsr_checkpoint), "--onnx", str(onnx_file))
    assert code == 0, err
    assert onnx_file.is_file() and "max abs diff" in out
    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(basicsr_checkpoint), "--output",
                             str(tmp_path / "run"))
    assert code == 0, err

    outputs = {}
    for name, checkpoint in (("checkpoint", basicsr_checkpoint), ("onnx", onnx_file), ("folder", tmp_path / "run")):
        folder = tmp_path / f"restored_{name}"
        code, out, err = run_cli(capsys, "restore", "--checkpoint", str(checkpoint), "--input", str(images),
                                 "--output", str(folder), "--tile", "32", "--tile-overlap", "8", "--device", "cpu")
        assert code == 0, err
        outputs[name] = {p.name: cv2.imread(str(p)).astype(np.int16) for p in sorted(folder.glob("*.png"))}
    assert set(outputs["checkpoint"]) == {"odd.png", "wide.png"}
    for name in ("onnx", "folder"):
        assert set(outputs[name]) == set(outputs["checkpoint"])
        for file, image in outputs["checkpoint"].items():
            diff = np.abs(outputs[name][file] - image)
            if name == "folder":  # the same torch network, the same weights
                assert diff.max() == 0, (file, diff.max())
            # float outputs within 1e-4 of each other: at most one 8-bit level where rounding falls between
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, file, diff.max(), (diff > 0).mean())
    # and the ONNX network is the checkpoint's EMA network, not only close after rounding to 8 bits
    net = load_network(basicsr_checkpoint)
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        assert float((load_network(onnx_file)(x) - net(x)).abs().max()) <= 1e-4


def test_convert_and_export_errors_are_one_line(tmp_path, capsys):
    code, out, err = run_cli(capsys, "convert", "--checkpoint", str(tmp_path / "missing.pth"), "--output",
                             str(tmp_path / "run"))
    assert code == 2 and err.startswith("constyle convert: error: --checkpoint:") and err.count("\n") == 1
    (tmp_path / "net.onnx").write_bytes(b"")
    code, out, err = run_cli(capsys, "export", "--checkpoint", str(tmp_path / "net.onnx"), "--onnx",
                             str(tmp_path / "again.onnx"))
    assert code == 2 and "is already an ONNX file" in err and err.count("\n") == 1
