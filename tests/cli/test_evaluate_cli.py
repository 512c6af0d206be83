"""``constyle evaluate`` on a folder pair: a tiny wrapped NAFNet saved with ``save_pretrained``, a few
offline photos degraded with the plugin's all-in-one degradations; metrics.json holds exactly BasicSR's
``calculate_psnr`` / ``calculate_ssim`` of the restored images (RGB, and Y with a border crop), the
Markdown / CSV tables and panels are written, and bad folder pairs are refused in one line, creating
nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin import cli
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.data.degradations import ALL_IN_ONE
from constyle_plugin.data.imageio import read_image
from constyle_plugin.tools.restore import load_network, size_multiple_of, tiled_forward
from constyle_plugin.data.samples import sample_photos

from cli_runs import save_tiny_trained_net

PHOTOS = ("astronaut", "coffee", "chelsea")
DEGRADATIONS = ("noise", "rain", "jpeg")
SIZE = 64


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """``run/`` (a tiny wrapped NAFNet, not at identity), ``Rain/{lq,gt}`` with three degraded photos."""
    root = tmp_path_factory.mktemp("evaluate")
    save_tiny_trained_net(root / "run")
    rng = np.random.default_rng(0)
    for (name, photo), kind in zip(sample_photos(PHOTOS), DEGRADATIONS):
        h, w = photo.shape[:2]
        gt = np.ascontiguousarray(photo[(h - SIZE) // 2:(h + SIZE) // 2, (w - SIZE) // 2:(w + SIZE) // 2])
        lq = ALL_IN_ONE[kind](gt.astype(np.float32) / 255.0, rng)
        _write_png(root / "Rain" / "gt" / f"{name}.png", gt)
        _write_png(root / "Rain" / "lq" / f"{name}.png", (np.clip(lq, 0, 1) * 255).round().astype(np.uint8))
    return root


def _evaluate(bench: Path, out: Path, *extra: str) -> int:
    return cli.main(["evaluate", "--checkpoint", str(bench / "run"), "--lq", str(bench / "Rain" / "lq"),
                     "--gt", str(bench / "Rain" / "gt"), "--output", str(out), "--device", "cpu", *extra])


def _bgr8(path: Path) -> np.ndarray:
    return np.ascontiguousarray((read_image(path) * 255).round().astype(np.uint8)[..., ::-1])


@pytest.mark.parametrize("extra,y_channel,border", [((), False, 0), (("--y-channel", "--crop-border", "4"), True, 4)],
                         ids=["rgb", "y-crop4"])
def test_evaluate_matches_basicsr_metrics(bench, tmp_path, extra, y_channel, border):
    """metrics.json per image, per task and on average equals BasicSR's calculate_psnr / calculate_ssim on the
    restored images (which are the network's own output, rounded to 8 bits) to 1e-6; the tables say which."""
    ensure_basicsr_importable()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    out = tmp_path / "eval"
    assert _evaluate(bench, out, "--save-images", *extra) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["channel"] == ("Y" if y_channel else "RGB") and metrics["crop_border"] == border
    assert metrics["checkpoint"] == str(bench / "run") and metrics["command"].startswith("constyle evaluate ")
    task = metrics["tasks"]["Rain"]  # the default name: the folder holding lq/ and gt/
    assert task["n_images"] == len(PHOTOS) and [r["name"] for r in task["images"]] == sorted(PHOTOS)

    net = load_network(bench / "run", device="cpu")
    psnrs, ssims = [], []
    for row in task["images"]:
        restored = out / "restored" / "Rain" / f"{row['name']}.png"
        lq = torch.from_numpy(read_image(bench / "Rain" / "lq" / f"{row['name']}.png")).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = tiled_forward(net, lq, multiple=size_multiple_of(net))[0].clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.array_equal(_bgr8(restored), (y * 255).round().astype(np.uint8)[..., ::-1])
        gt = _bgr8(bench / "Rain" / "gt" / f"{row['name']}.png")
        psnr = calculate_psnr(_bgr8(restored), gt, border, input_order="HWC", test_y_channel=y_channel)
        ssim = calculate_ssim(_bgr8(restored), gt, border, input_order="HWC", test_y_channel=y_channel)
        assert abs(row["psnr"] - psnr) < 1e-6 and abs(row["ssim"] - ssim) < 1e-9
        psnrs.append(psnr)
        ssims.append(ssim)
    assert abs(task["psnr"] - np.mean(psnrs)) < 1e-6 and abs(task["ssim"] - np.mean(ssims)) < 1e-9
    assert abs(metrics["average"]["psnr"] - np.mean(psnrs)) < 1e-6

    table = (out / "metrics.md").read_text()
    assert f"on {'Y' if y_channel else 'RGB'}" in table and f"border crop {border} px" in table
    assert f"| run | {task['psnr']:.2f} / {task['ssim']:.4f} | {task['psnr']:.2f} / {task['ssim']:.4f} |" in table
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["task"] for r in rows] == ["Rain", "average"] and abs(float(rows[0]["psnr"]) - task["psnr"]) < 1e-5
    panels = sorted((out / "samples").glob("*.png"))
    assert len(panels) == 3 and read_image(panels[0]).shape == (SIZE, 3 * SIZE + 16, 3)


def test_evaluate_tiled_with_a_task_name(bench, tmp_path):
    """--tile restores in tiles; --name names the task; --samples 1 writes one panel."""
    out = tmp_path / "eval"
    assert _evaluate(bench, out, "--tile", "32", "--tile-overlap", "8", "--name", "Rain100L", "--samples", "1") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["Rain100L"] and np.isfinite(metrics["average"]["psnr"])
    assert "| Method | Rain100L | Average |" in (out / "metrics.md").read_text()
    assert len(list((out / "samples").glob("*.png"))) == 1 and not (out / "restored").exists()


def _copy_pair(bench: Path, dst: Path) -> Path:
    for sub in ("lq", "gt"):
        (dst / sub).mkdir(parents=True)
        for f in (bench / "Rain" / sub).iterdir():
            (dst / sub / f.name).write_bytes(f.read_bytes())
    return dst


def _refused(capsys, bench: Path, lq: Path, gt: Path, out: Path) -> str:
    code = cli.main(["evaluate", "--checkpoint", str(bench / "run"), "--lq", str(lq), "--gt", str(gt),
                     "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("constyle evaluate: error: ")
    assert not out.exists()
    return err


def test_bad_folder_pairs_are_named_in_one_line_and_create_nothing(bench, tmp_path, capsys):
    pair = _copy_pair(bench, tmp_path / "pair")
    out = tmp_path / "eval"
    (pair / "lq" / "chelsea.png").unlink()  # a ground truth without its input
    err = _refused(capsys, bench, pair / "lq", pair / "gt", out)
    assert "--gt: " in err and str(pair / "gt" / "chelsea.png") in err and "no input" in err
    _write_png(pair / "lq" / "extra.png", np.zeros((SIZE, SIZE, 3), np.uint8))  # an input without ground truth
    err = _refused(capsys, bench, pair / "lq", pair / "gt", out)
    assert "--lq: " in err and str(pair / "lq" / "extra.png") in err and "no ground truth" in err
    (pair / "lq" / "extra.png").unlink()
    _write_png(pair / "lq" / "chelsea.png", np.zeros((SIZE, SIZE + 2, 3), np.uint8))  # sizes differ
    err = _refused(capsys, bench, pair / "lq", pair / "gt", out)
    assert str(pair / "lq" / "chelsea.png") in err and f"{SIZE + 2}x{SIZE}" in err and f"{SIZE}x{SIZE}" in err
    err = _refused(capsys, bench, tmp_path / "nowhere", pair / "gt", out)  # a missing folder
    assert "--lq: " in err and str(tmp_path / "nowhere") in err and "does not exist" in err


def test_without_basicsr_it_says_what_to_install(bench, tmp_path, capsys, monkeypatch):
    import constyle_plugin.compat as compat

    def missing():
        raise ImportError("No module named 'basicsr'")

    monkeypatch.setattr(compat, "ensure_basicsr_importable", missing)
    out = tmp_path / "eval"
    err = _refused(capsys, bench, bench / "Rain" / "lq", bench / "Rain" / "gt", out)
    assert 'pip install "constyle-plugin[basicsr]"' in err
