"""``constyle restore`` keeps what the network does not touch: 16-bit depth and the alpha channel."""
from __future__ import annotations

from pathlib import Path

import shutil

import cv2
import numpy as np
import pytest
import torch

from cli_runs import run_cli


def write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def odd_images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    deep = (rng.random((20, 27, 4)) * 65535).astype(np.uint16)
    deep[..., 3] = np.arange(27, dtype=np.uint16)[None] * 2400 + 7  # alpha values no 8-bit file can hold
    write(folder / "deep_rgba.png", deep)
    write(folder / "deep_rgb.png", (rng.random((18, 21, 3)) * 65535).astype(np.uint16))
    rgba = (rng.random((19, 23, 4)) * 255).astype(np.uint8)
    write(folder / "rgba.png", rgba)
    write(folder / "plain.png", (rng.random((16, 16, 3)) * 255).astype(np.uint8))
    return folder


@pytest.fixture
def identity_experiment(basicsr_experiment, tmp_path) -> Path:
    """The tiny NAFNet run with every weight zero: NAFNet adds its input back, so it returns the image."""
    exp = tmp_path / "Tiny"
    shutil.copytree(basicsr_experiment, exp)
    checkpoint = exp / "models" / "net_g_latest.pth"
    state = torch.load(checkpoint, weights_only=True)["params"]
    torch.save({"params": {k: v if k.startswith("prompter.") else torch.zeros_like(v) for k, v in state.items()}},
               checkpoint)
    return exp


def test_restore_keeps_16_bit_depth_and_alpha(identity_experiment, odd_images, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "restore", "--checkpoint",
                                   str(identity_experiment / "models" / "net_g_latest.pth"),
                                   "--input", str(odd_images), "--output", str(out), "--device", "cpu")
    assert code == 0, stderr
    assert "restored 4 image(s)" in stdout

    def read(name):
        return cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)

    source = cv2.imread(str(odd_images / "deep_rgba.png"), cv2.IMREAD_UNCHANGED)
    deep = read("deep_rgba.png")
    assert deep.dtype == np.uint16 and deep.shape == (20, 27, 4)
    assert np.array_equal(deep[..., 3], source[..., 3])  # alpha passed through untouched
    np.testing.assert_array_equal(deep[..., :3], source[..., :3])  # all 16 bits through the identity net
    assert read("deep_rgb.png").dtype == np.uint16 and read("deep_rgb.png").shape == (18, 21, 3)
    rgba = read("rgba.png")
    assert rgba.dtype == np.uint8 and rgba.shape == (19, 23, 4)
    assert np.array_equal(rgba[..., 3], cv2.imread(str(odd_images / "rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3])
    plain = read("plain.png")
    assert plain.dtype == np.uint8 and plain.shape == (16, 16, 3)


def test_restore_says_once_what_it_cannot_keep(basicsr_experiment, tmp_path, capsys):
    folder = tmp_path / "in"
    rng = np.random.default_rng(1)
    for k in range(2):
        write(folder / f"float{k}.tiff", rng.random((12, 14, 3)).astype(np.float32))
    code, stdout, stderr = run_cli(capsys, "restore", "--checkpoint",
                                   str(basicsr_experiment / "models" / "net_g_latest.pth"),
                                   "--input", str(folder), "--output", str(tmp_path / "out"), "--device", "cpu")
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "float32" in line]
    assert len(notes) == 1 and "16-bit PNG" in notes[0], stderr
    assert cv2.imread(str(tmp_path / "out" / "float0.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
