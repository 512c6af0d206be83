"""Inference helpers: padding, tiling with overlap, image files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from constyle_plugin import ConStyleV2, wrap_unet
from constyle_plugin.core.padding import pad_to_multiple
from constyle_plugin.tools.restore import (count_tiles, find_images, read_image, restore_images,
                                       size_multiple_of, tiled_forward)

from unets import ModuleListUNet


class Pointwise(nn.Module):
    """A 1x1 network: every output pixel depends only on its input pixel, so tiling is exact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 3, 1))
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        return self.net(x)


def test_pad_to_multiple():
    x = torch.rand(1, 3, 37, 53)
    padded = pad_to_multiple(x, 16, "reflect")
    assert padded.shape[-2:] == (48, 64)
    assert torch.equal(padded[..., :37, :53], x)
    tiny = pad_to_multiple(torch.rand(1, 3, 3, 5), 16, "reflect")  # smaller than the padding: replicate
    assert tiny.shape[-2:] == (16, 16)


@pytest.mark.parametrize("tile, overlap", [(32, 8), (40, 16), (17, 4)])
def test_tiled_equals_whole_for_a_pointwise_network(tile, overlap):
    net = Pointwise()
    x = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        whole = net(x)
        net.calls.clear()
        tiled = tiled_forward(net, x, tile=tile, overlap=overlap, multiple=4)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)
    assert len(net.calls) == count_tiles(75, 61, tile, overlap) > 1
    assert all(h <= tile + 3 and w <= tile + 3 and h % 4 == 0 and w % 4 == 0 for h, w in net.calls)


def test_tiled_blending_hides_seams_for_a_conv_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        whole = net(x)
        hard = tiled_forward(net, x, tile=48, overlap=0)
        blended = tiled_forward(net, x, tile=48, overlap=16)
    # with no overlap the tile borders differ from the whole-image result; blending removes that
    assert (hard - whole).abs().max() > 1e-3
    torch.testing.assert_close(blended, whole, atol=1e-6, rtol=0)


def test_tile_options_are_checked():
    with pytest.raises(ValueError, match="tile"):
        tiled_forward(Pointwise(), torch.rand(1, 3, 64, 64), tile=16, overlap=16)


def test_tile_0_means_whole_images_as_real_esrgan_reads_it():
    from constyle_plugin.errors import RestoreError
    from constyle_plugin.tools.restore import check_tiling

    net, x = Pointwise(), torch.rand(1, 3, 40, 40)
    check_tiling(0, 32)  # --tile 0 --tile-overlap 32 (the default) is accepted
    torch.testing.assert_close(tiled_forward(net, x, tile=0, overlap=32), net(x), atol=0, rtol=0)
    with pytest.raises(RestoreError, match="^--tile: must be >= 0"):
        check_tiling(-1, 32)


def test_reading_a_corrupt_image_prints_nothing_of_opencv_and_keeps_its_log_level(tmp_path, capfd):
    """OpenCV's own ``[ERROR] ... IHDR`` / ``[ WARN] ...`` lines do not reach the terminal; the one error
    names the file; the caller's OpenCV log level is as it was."""
    from constyle_plugin.data.imageio import ImageReadError, read_image_file

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)  # a PNG signature, then no IHDR chunk
    level = cv2.utils.logging.getLogLevel()
    capfd.readouterr()
    for reader in (read_image, read_image_file):
        with pytest.raises(ImageReadError, match="broken.png: not a readable image"):
            reader(bad)
    err = capfd.readouterr().err
    assert "IHDR" not in err and "WARN" not in err and "ERROR" not in err, err
    assert cv2.utils.logging.getLogLevel() == level


def test_read_image_forms(tmp_path):
    rgb = (np.random.default_rng(0).random((9, 7, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "grey.png"), rgb[:, :, 0])
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([rgb[:, :, ::-1], np.full((9, 7), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb[:, :, ::-1].astype(np.uint16) * 257))
    (tmp_path / "notes.txt").write_text("not an image")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "grey.png"), np.repeat(rgb[:, :, :1], 3, 2) / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "deep.png"), rgb / 255.0, atol=1e-6)
    assert [p.name for p in find_images(tmp_path)] == ["deep.png", "grey.png", "rgb.png", "rgba.png"]
    with pytest.raises(FileNotFoundError, match="--input"):
        find_images(tmp_path / "absent")


def test_restore_images_writes_pngs_and_panels_and_skips_bad_files(tmp_path):
    torch.manual_seed(0)
    net = wrap_unet(ModuleListUNet(), prompter=ConStyleV2()).eval()
    src = tmp_path / "in"
    src.mkdir()
    img = (np.random.default_rng(1).random((37, 53, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(src / "a.png"), img)
    (src / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        written = restore_images(net, find_images(src), tmp_path / "out", tile=24, overlap=8, compare=True,
                                 root=src, show_progress=False)
    assert [p.name for p in written] == ["a.png"]
    out = cv2.imread(str(written[0]))
    assert out.shape == img.shape
    panel = cv2.imread(str(tmp_path / "out" / "a_compare.png"))
    assert panel.shape == (37, 53 * 2 + 8, 3)
    assert size_multiple_of(net) == 1
    # the PNG is the network's output on the image, tiled as asked (8-bit rounding aside)
    x = torch.from_numpy(read_image(src / "a.png")).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = tiled_forward(net, x, tile=24, overlap=8)[0].clamp(0, 1)
    got = torch.from_numpy(read_image(written[0])).permute(2, 0, 1)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
    # the adapters are the identity at wrap time, but the U-Net under them is untrained: output != input
    assert (got - x[0]).abs().mean() > 2 / 255  # measured: 3.5 / 255
    # the panel: input | 8 white columns | output
    panel = torch.from_numpy(read_image(tmp_path / "out" / "a_compare.png")).permute(2, 0, 1)
    assert torch.equal(panel[:, :, :53], x[0]) and torch.equal(panel[:, :, 61:], got)
    assert torch.equal(panel[:, :, 53:61], torch.ones(3, 37, 8))
