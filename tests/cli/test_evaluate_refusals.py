"""``constyle evaluate`` refuses, in one line and before anything runs or is written: a border crop that
leaves less than SSIM's window of the smallest image, an output folder holding another evaluation, a grey
ground truth for colour inputs, ``--gt`` equal to ``--lq``; and its metrics.json is strict JSON even when
a PSNR is infinite."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from constyle_plugin import cli

from cli_runs import save_tiny_trained_net, tree, write_png

SIZES = ((64, 80), (48, 96), (72, 72))  # (h, w): the smallest side is 48


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate_refusals")
    save_tiny_trained_net(root / "run")
    for i, (h, w) in enumerate(SIZES):
        write_png(root / "lq" / f"im{i}.png", h, w, seed=i)
        write_png(root / "gt" / f"im{i}.png", h, w, seed=10 + i)
    return root


def _evaluate(capsys, root: Path, out: Path, *extra: str, lq: Path = None, gt: Path = None):
    code = cli.main(["evaluate", "--checkpoint", str(root / "run"), "--lq", str(lq or root / "lq"),
                     "--gt", str(gt or root / "gt"), "--output", str(out), "--device", "cpu", *extra])
    return code, capsys.readouterr().err.strip()


def _refused(code: int, err: str, starts: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"constyle evaluate: error: {starts}"), err


def test_a_crop_border_that_leaves_less_than_ssims_window_is_refused_naming_the_smallest_image(pair, tmp_path,
                                                                                               capsys):
    out = tmp_path / "eval"
    for crop in (19, 24, 30):  # 48 - 38 = 10 < 11; 24 leaves nothing (OpenCV failed after the run); 30 less
        code, err = _evaluate(capsys, pair, out, "--crop-border", str(crop))
        _refused(code, err, f"--crop-border: {crop} leaves ")
        assert f"{pair / 'gt' / 'im1.png'} (96x48)" in err and "use at most 18" in err
        assert not out.exists()
    assert ("leaves no pixels" in err) and "11x11" in err


def test_metrics_json_is_strict_json_when_a_psnr_is_infinite(tmp_path):
    from constyle_plugin.tools.evaluate import write_reports

    metrics = {"tasks": {"Rain": {"column": "Rain", "psnr": float("inf"), "ssim": 1.0, "n_images": 1,
                                  "images": [{"name": "a", "psnr": float("inf"), "ssim": 1.0}]}},
               "average": {"psnr": float("inf"), "ssim": 1.0}, "channel": "RGB", "crop_border": 0}
    write_reports(metrics, tmp_path)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert saved["average"]["psnr"] is None and saved["tasks"]["Rain"]["images"][0]["psnr"] is None
    assert saved["average"]["ssim"] == 1.0
    assert "| inf / 1.0000 | inf / 1.0000 |" in (tmp_path / "metrics.md").read_text()


def test_an_output_holding_another_evaluation_is_refused_and_left_as_it_was(pair, tmp_path, capsys):
    out = tmp_path / "eval"
    code, err = _evaluate(capsys, pair, out, "--save-images", "--max-images", "1")
    assert code == 0, err
    before = {p: (out / p).read_bytes() for p in tree(out) if (out / p).is_file()}
    assert any(p.startswith("restored/") for p in before) and any(p.startswith("samples/") for p in before)
    code, err = _evaluate(capsys, pair, out, "--samples", "0")
    _refused(code, err, f"--output: {out} holds another evaluation's files (metrics.json, metrics.md, "
                        f"metrics.csv, samples/, restored/)")
    assert {p: (out / p).read_bytes() for p in tree(out) if (out / p).is_file()} == before
    other = tmp_path / "notes"  # a folder with the user's own files only is fine
    other.mkdir()
    (other / "README.txt").write_text("mine")
    code, err = _evaluate(capsys, pair, other, "--max-images", "1", "--samples", "0")
    assert code == 0, err
    assert sorted(tree(other)) == ["README.txt", "metrics.csv", "metrics.json", "metrics.md"]


def test_gt_equal_to_lq_is_refused(pair, tmp_path, capsys):
    out = tmp_path / "eval"
    code, err = _evaluate(capsys, pair, out, lq=pair / "lq", gt=pair / "lq" / ".." / "lq")
    _refused(code, err, "--gt: ")
    assert "is the --lq folder" in err and not out.exists()


def test_a_grey_ground_truth_for_colour_inputs_is_refused_and_grey_pairs_are_measured(pair, tmp_path, capsys):
    grey_gt = tmp_path / "grey_gt"
    for i, (h, w) in enumerate(SIZES):
        grey_gt.mkdir(exist_ok=True)
        cv2.imwrite(str(grey_gt / f"im{i}.png"), np.random.default_rng(i).integers(0, 256, (h, w), np.uint8))
    out = tmp_path / "eval"
    code, err = _evaluate(capsys, pair, out, gt=grey_gt)
    _refused(code, err, f"--gt: {grey_gt / 'im0.png'} is greyscale but its input {pair / 'lq' / 'im0.png'} is in colour")
    assert not out.exists()
    grey_lq = tmp_path / "grey_lq"  # grey inputs stored as RGB with equal channels: a grey test set
    for i, (h, w) in enumerate(SIZES):
        grey = np.random.default_rng(20 + i).integers(0, 256, (h, w), np.uint8)
        grey_lq.mkdir(exist_ok=True)
        cv2.imwrite(str(grey_lq / f"im{i}.png"), np.dstack([grey] * 3))
    code, err = _evaluate(capsys, pair, out, "--samples", "0", lq=grey_lq, gt=grey_gt)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["tasks"]
