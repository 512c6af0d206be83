"""``constyle restore`` end to end: a network trained by each trainer (tiny runs), restored from its
checkpoint alone (the config is found beside it), with tiling, odd sizes and comparison panels."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin.tools.restore import load_network, read_image, tiled_forward

from basicsr_runs import OPTIONS_DIR as OPTIONS, overrides, run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def restore(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "constyle_plugin.cli", "restore", *args], capture_output=True,
                          text=True, timeout=600, env=ENV)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lq")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "odd.png"), (rng.random((37, 53, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "wide.jpg"), (rng.random((40, 90, 3)) * 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def basicsr_checkpoint(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("basicsr_run")
    run(work, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml", *overrides("nafnet_constyle"))
    return work / "experiments" / "NAFNet_ConStyle_v2" / "models" / "net_g_latest.pth"


def check_outputs(images: Path, out: Path) -> None:
    for name, shape in (("odd", (37, 53, 3)), ("wide", (40, 90, 3))):
        restored = cv2.imread(str(out / f"{name}.png"))
        assert restored is not None and restored.shape == shape
        panel = cv2.imread(str(out / f"{name}_compare.png"))
        assert panel.shape == (shape[0], 2 * shape[1] + 8, 3)


def test_restore_basicsr_checkpoint_with_tiles(basicsr_checkpoint, images, tmp_path):
    proc = restore("--checkpoint", str(basicsr_checkpoint), "--input", str(images), "--output", str(tmp_path),
                   "--tile", "32", "--tile-overlap", "8", "--compare", "--device", "cpu")
    assert "restored 2 image(s)" in proc.stdout
    check_outputs(images, tmp_path)
    # the command's output is the EMA network of the run, tiled as asked (8-bit rounding aside)
    net = load_network(basicsr_checkpoint)
    assert net.backbone.intro.out_channels == 8  # the run's --force_yml width, read from the experiment's copy
    state = torch.load(basicsr_checkpoint, weights_only=True)["params_ema"]
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    x = torch.from_numpy(read_image(images / "odd.png")).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tiled_forward(net, x, tile=32, overlap=8, multiple=16)[0].clamp(0, 1)
    got = torch.from_numpy(read_image(tmp_path / "odd.png")).permute(2, 0, 1)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6


def test_restore_mmengine_checkpoint(mmengine_checkpoint, images, tmp_path):
    """A tiny ``constyle train`` run's checkpoint (the session's shared run, tests/conftest.py: NAFNet width 8,
    levels [1, 1, 1], 2 iterations, the config's EMA hook), restored from the checkpoint alone."""
    checkpoint = mmengine_checkpoint
    assert checkpoint.is_file()
    out = tmp_path / "out"
    restore("--checkpoint", str(checkpoint), "--input", str(images), "--output", str(out), "--compare",
            "--device", "cpu")
    check_outputs(images, out)
    # the command's output is the run's EMA network: MMEngine's EMAHook saves the average in state_dict and
    # the trained model's own weights in ema_state_dict (module.net.*), swapped back when it resumes
    net = load_network(checkpoint)
    from constyle_plugin.integrations.mmengine.runner import mmengine_checkpoint_globals  # after mmengine

    with mmengine_checkpoint_globals():
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    live = {k[len("module.net."):]: v for k, v in raw["ema_state_dict"].items() if k.startswith("module.net.")}
    ema = {k[len("net."):]: v for k, v in raw["state_dict"].items() if k.startswith("net.")}
    assert any(not torch.equal(ema[k], live[k]) for k in ema)  # the EMA copy is not the trained weights
    assert net.backbone.intro.out_channels == 8  # the run's --cfg-options width, read from the work dir's config
    assert net.backbone.size_multiple == 8
    assert set(net.state_dict()) == set(ema)
    assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())
    for name in ("odd", "wide"):
        x = torch.from_numpy(read_image(images / ("odd.png" if name == "odd" else "wide.jpg")))
        with torch.no_grad():  # whole images (no --tile), padded to the backbone's multiple (3 levels: 8)
            expected = tiled_forward(net, x.permute(2, 0, 1)[None], multiple=8)[0].clamp(0, 1)
        got = torch.from_numpy(read_image(out / f"{name}.png")).permute(2, 0, 1)
        assert (got - expected).abs().max() <= 1 / 255 + 1e-6, name
        panel = torch.from_numpy(read_image(out / f"{name}_compare.png"))
        w = x.shape[1]
        assert (panel[:, :w] - x).abs().max() <= 1 / 255 + 1e-6  # input | gap | output
        assert torch.equal(panel[:, w + 8:], got.permute(1, 2, 0))


def test_restore_errors_name_the_option(tmp_path, images):
    proc = restore("--checkpoint", str(tmp_path / "missing.pth"), "--input", str(images), "--output",
                   str(tmp_path / "o"), ok=False)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr
    lone = tmp_path / "lone.pth"
    torch.save({"params": {"w": torch.zeros(1)}}, lone)
    proc = restore("--checkpoint", str(lone), "--input", str(images), "--output", str(tmp_path / "o"), ok=False)
    assert proc.returncode == 2 and "--config" in proc.stderr


def test_restore_prompt_size_option(tmp_path, capsys):
    from constyle_plugin import wrap_unet
    from constyle_plugin.archs import ConvUNet
    from constyle_plugin.cli import main
    from unets import live_adapters

    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ConvUNet(width=8, depth=3, blocks_per_level=1)), scale=0.5)  # packaged prompter
    net.eval().save_pretrained(tmp_path / "run", include_prompter=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "photo.png"), (rng.random((96, 128, 3)) * 255).astype(np.uint8))
    x = torch.from_numpy(read_image(tmp_path / "photo.png")).permute(2, 0, 1)[None]
    outputs = {}
    for size in ("32", "full"):
        assert main(["restore", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "photo.png"),
                     "--output", str(tmp_path / size), "--prompt-size", size, "--device", "cpu"]) == 0
        outputs[size] = read_image(tmp_path / size / "photo.png")
        net.prompt_size = None if size == "full" else int(size)
        with torch.no_grad():
            expected = net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.abs(outputs[size] - expected).max() <= 1 / 255 + 1e-6, size  # 8-bit rounding
    assert np.abs(outputs["32"] - outputs["full"]).max() > 2 / 255
    capsys.readouterr()
    assert main(["restore", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "photo.png"),
                 "--output", str(tmp_path / "bad"), "--prompt-size", "8", "--device", "cpu"]) == 2
    assert "--prompt-size: must be at least 16" in capsys.readouterr().err
