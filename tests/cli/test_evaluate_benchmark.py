"""``constyle evaluate --benchmark SETTING --root DIR`` on miniature copies of the three all-in-one layouts
(tests/layouts.py): one task per column of the papers' table, in their order; every number equals BasicSR's
``calculate_psnr`` / ``calculate_ssim`` of the network's output on the setting's own inputs (the crop, the
synthetic noise), RGB and Y; bad roots and option mixes refused in one line, creating nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from constyle_plugin import cli
from constyle_plugin.data.benchmark_layouts import benchmark_test_sets
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.tools.evaluate import to_bgr_uint8
from constyle_plugin.tools.restore import load_network, size_multiple_of, tiled_forward

from cli_runs import save_tiny_trained_net
from layouts import make_constyle_v2_suite, make_five_task, make_three_task

COLUMNS = {"three-task": ["SOTS", "Rain100L", "BSD68"], "five-task": ["SOTS", "Rain100L", "BSD68", "GoPro", "LOL"],
           "constyle-v2": ["GoPro", "SOTS", "Rain", "CBSD68", "LIVE1", "LOL", "Defocus", "Snow"]}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """``run/`` (a tiny wrapped NAFNet, off identity) and the three miniature test roots."""
    root = tmp_path_factory.mktemp("evaluate_benchmark")
    save_tiny_trained_net(root / "run")
    return {"run": root / "run", "three-task": make_three_task(root / "three")[1],
            "five-task": make_five_task(root / "five")[1], "constyle-v2": make_constyle_v2_suite(root / "suite")}


def _evaluate(bench, setting: str, out: Path, *extra: str, root=None) -> int:
    return cli.main(["evaluate", "--checkpoint", str(bench["run"]), "--benchmark", setting,
                     "--root", str(root or bench[setting]), "--output", str(out), "--device", "cpu", *extra])


@pytest.mark.parametrize("setting,extra,y_channel", [("three-task", (), False), ("five-task", ("--y-channel",), True),
                                                     ("constyle-v2", (), False)])
def test_benchmark_table_matches_basicsr_metrics(bench, tmp_path, setting, extra, y_channel):
    ensure_basicsr_importable()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    out = tmp_path / "eval"
    assert _evaluate(bench, setting, out, *extra) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    tasks = benchmark_test_sets(setting, bench[setting])
    assert list(metrics["tasks"]) == [t.key for t in tasks]
    columns = [t["column"] for t in metrics["tasks"].values()]
    assert [c.split()[0] for c in columns] == [c for c in COLUMNS[setting] for _ in range(
        3 if setting == "three-task" and c == "BSD68" else 1)]
    assert metrics["benchmark"] == setting and metrics["channel"] == ("Y" if y_channel else "RGB")

    net = load_network(bench["run"], device="cpu")
    task_means = []
    for task in tasks:
        row = metrics["tasks"][task.key]
        assert row["n_images"] == len(task.images) == 2
        psnrs, ssims = [], []
        for image, measured in zip(task.images, row["images"]):
            lq, gt = image.load()
            x = torch.from_numpy(lq).permute(2, 0, 1)[None]
            with torch.no_grad():
                y = tiled_forward(net, x, multiple=size_multiple_of(net))[0].clamp(0, 1).permute(1, 2, 0).numpy()
            out8, gt8 = to_bgr_uint8(y), to_bgr_uint8(gt)
            psnr = calculate_psnr(out8, gt8, 0, input_order="HWC", test_y_channel=y_channel)
            ssim = calculate_ssim(out8, gt8, 0, input_order="HWC", test_y_channel=y_channel)
            assert measured["name"] == image.name
            assert abs(measured["psnr"] - psnr) < 1e-6 and abs(measured["ssim"] - ssim) < 1e-9
            psnrs.append(psnr)
            ssims.append(ssim)
        assert abs(row["psnr"] - np.mean(psnrs)) < 1e-6 and abs(row["ssim"] - np.mean(ssims)) < 1e-9
        task_means.append(np.mean(psnrs))
    assert abs(metrics["average"]["psnr"] - np.mean(task_means)) < 1e-6

    table = (out / "metrics.md").read_text()
    assert "| Method | " + " | ".join(columns) + " | Average |" in table and f"{setting} setting" in table
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["task"] for r in rows] == [t.key for t in tasks] + ["average"]
    assert len(list((out / "samples").glob("*.png"))) == 2 * len(tasks)  # 3 asked, 2 per task exist


def test_max_images_and_tiling(bench, tmp_path):
    """--max-images keeps each task's first N images and is recorded; --tile restores large images in tiles
    (the miniature images are 96-160 px: tiles of 64 cover them in several pieces) and the numbers stay finite."""
    out = tmp_path / "eval"
    assert _evaluate(bench, "five-task", out, "--max-images", "1", "--tile", "64", "--tile-overlap", "16") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_images"] == 1 and all(t["n_images"] == 1 for t in metrics["tasks"].values())
    assert "only the first 1 image(s) of each task (--max-images)" in (out / "metrics.md").read_text()
    assert all(np.isfinite(t["psnr"]) for t in metrics["tasks"].values())


def _refused(capsys, args, out: Path) -> str:
    code = cli.main(["evaluate", *args, "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("constyle evaluate: error: "), err
    assert not out.exists()
    return err


def test_bad_roots_and_option_mixes_are_refused_in_one_line(bench, tmp_path, capsys):
    out = tmp_path / "eval"
    run = ["--checkpoint", str(bench["run"])]
    err = _refused(capsys, [*run, "--benchmark", "three-tsk", "--root", str(bench["three-task"])], out)
    assert "'three-task'" in err and "--benchmark" in err
    err = _refused(capsys, [*run, "--benchmark", "three-task"], out)
    assert "--root is missing" in err
    err = _refused(capsys, [*run, "--benchmark", "three-task", "--root", str(bench["three-task"]),
                            "--lq", str(tmp_path), "--gt", str(tmp_path)], out)
    assert "not both" in err
    err = _refused(capsys, run, out)
    assert "--benchmark" in err and "--lq" in err
    # the ConStyle v2 suite given as a three-task root: the message says which layout it looks like
    err = _refused(capsys, [*run, "--benchmark", "three-task", "--root", str(bench["constyle-v2"])], out)
    assert str(bench["constyle-v2"]) in err and "constyle-v2" in err


def test_an_unpaired_or_mis_sized_file_stops_the_run_before_the_network_loads(bench, tmp_path, capsys):
    import shutil

    import cv2

    root = tmp_path / "test"
    shutil.copytree(bench["three-task"], root)
    target = root / "derain" / "Rain100L" / "target"
    lone = sorted(target.iterdir())[0]
    lone.unlink()
    err = _refused(capsys, ["--checkpoint", str(tmp_path / "no_such_run"), "--benchmark", "three-task",
                            "--root", str(root)], tmp_path / "eval")
    assert lone.name in err
    shutil.copytree(bench["three-task"] / "derain", root / "derain", dirs_exist_ok=True)
    hazy = sorted((root / "dehaze" / "input").iterdir())[0]
    img = cv2.imread(str(hazy))
    cv2.imwrite(str(hazy), img[: img.shape[0] - 20])  # 20 rows short: not the same size after the crop to 16
    err = _refused(capsys, ["--checkpoint", str(tmp_path / "no_such_run"), "--benchmark", "three-task",
                            "--root", str(root)], tmp_path / "eval")
    assert str(hazy) in err and "ground truth" in err
