"""``constyle evaluate`` with part of a setting on disk, the field's file naming in a folder pair, the row
of the degraded input, the default task name and the progress report in a log:

- a three-task root holding Rain100L and BSD68 but no SOTS gives four columns, SOTS marked missing and the
  average (over the four) labelled partial; ``--tasks`` chooses columns; a set present but laid out wrongly,
  or asked for and absent, is refused in one line;
- ``--lq Rain100L/rainy --gt Rain100L`` pairs rain-N with norain-N (task ``Rain100L``), a hazy ``X_0.8_0.2``
  pairs with ``X`` (task named after the folder above ``input``);
- the input row is BasicSR's PSNR / SSIM of the degraded input against the ground truth;
- off a terminal the progress report is a line per tenth of the work, not a line per image."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from constyle_plugin import cli
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.data.benchmark_layouts import benchmark_test_sets
from constyle_plugin.progress import progress
from constyle_plugin.tools.evaluate import to_bgr_uint8

from cli_runs import run_cli, save_tiny_trained_net
from layouts import HAZE, RAIN, make_three_task, picture, write


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """``run/`` (a tiny wrapped NAFNet) and a three-task test root without SOTS."""
    root = tmp_path_factory.mktemp("evaluate_partial")
    save_tiny_trained_net(root / "run")
    test = make_three_task(root / "three")[1]
    shutil.rmtree(test / "dehaze")
    return {"run": root / "run", "test": test, "root": root}


def _evaluate(capsys, bench, out: Path, *args: str):
    return run_cli(capsys, "evaluate", "--checkpoint", str(bench["run"]), "--output", str(out), "--device", "cpu",
                   *args)


def test_a_root_without_sots_gives_four_columns_and_a_partial_average(bench, tmp_path, capsys):
    ensure_basicsr_importable()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    out = tmp_path / "eval"
    code, stdout, _ = _evaluate(capsys, bench, out, "--benchmark", "three-task", "--root", str(bench["test"]))
    assert code == 0, stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["derain", "denoise_15", "denoise_25", "denoise_50"]
    assert metrics["missing"] == {"dehaze": {"column": "SOTS", "folder": str(bench["test"] / "dehaze")}}
    assert metrics["partial"]["measured"] == 4 and metrics["partial"]["of"] == 5
    psnrs = [t["psnr"] for t in metrics["tasks"].values()]
    assert abs(metrics["average"]["psnr"] - np.mean(psnrs)) < 1e-9

    table = (out / "metrics.md").read_text()
    assert ("| Method | SOTS | Rain100L | BSD68 s15 | BSD68 s25 | BSD68 s50 | Average (partial: 4 of 5) |"
            in table), table
    assert "| run | missing | " in table and "| Input (degraded) | missing | " in table
    assert "Missing (no data under the root): SOTS" in table and "does not compare with the papers' average" in table
    rows = {r["task"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert rows["dehaze"]["status"] == "missing" and rows["dehaze"]["psnr"] == ""
    assert rows["average"]["status"] == "partial"

    # the input row: the degraded input itself against the ground truth, as BasicSR measures it
    sets = {t.key: t for t in benchmark_test_sets("three-task", bench["test"], skip_absent=True)}
    for key, row in metrics["tasks"].items():
        expected = []
        for image, measured in zip(sets[key].images, row["images"]):
            lq, gt = image.load()
            psnr = calculate_psnr(to_bgr_uint8(lq), to_bgr_uint8(gt), 0, input_order="HWC", test_y_channel=False)
            ssim = calculate_ssim(to_bgr_uint8(lq), to_bgr_uint8(gt), 0, input_order="HWC", test_y_channel=False)
            assert abs(measured["input_psnr"] - psnr) < 1e-6 and abs(measured["input_ssim"] - ssim) < 1e-9
            expected.append(psnr)
        assert abs(row["input"]["psnr"] - np.mean(expected)) < 1e-6
    assert metrics["tasks"]["denoise_50"]["input"]["psnr"] < metrics["tasks"]["denoise_15"]["input"]["psnr"]


def test_tasks_choose_columns_and_absent_or_wrong_sets_are_refused(bench, tmp_path, capsys):
    out = tmp_path / "eval"
    root = ["--benchmark", "three-task", "--root", str(bench["test"])]
    code, _, _ = _evaluate(capsys, bench, out, *root, "--tasks", "derain,denoise_25")
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and list(metrics["tasks"]) == ["derain", "denoise_25"] and metrics["missing"] == {}
    assert "Average (partial: 2 of 5)" in (out / "metrics.md").read_text()

    def refused(*args: str, root_dir=None) -> str:
        target = tmp_path / "refused"
        code, _, err = _evaluate(capsys, bench, target, "--benchmark", "three-task", "--root",
                                 str(root_dir or bench["test"]), *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and not target.exists(), err
        return err

    err = refused("--tasks", "dehaze")  # asked for and absent
    assert f"no folder {bench['test'] / 'dehaze'}" in err
    err = refused("--tasks", "derian")
    assert "--tasks: 'derian'" in err and "did you mean 'derain'?" in err
    wrong = tmp_path / "wrong"
    shutil.copytree(bench["test"], wrong)
    write(wrong / "dehaze" / "input" / "0001_0.8_0.2.jpg", picture(1))  # present, without its target folder
    err = refused(root_dir=wrong)
    assert f"no folder {wrong / 'dehaze' / 'target'}" in err
    empty = tmp_path / "empty"
    (empty / "test").mkdir(parents=True)
    err = refused(root_dir=empty)
    assert "none of the test sets asked for is there" in err


def _rain100l(root: Path, n: int = 2) -> Path:
    folder = root / "Rain100L"
    for i in range(n):
        clean = picture(60 + i, (64, 72))
        write(folder / f"norain-{i + 1:03d}.png", clean)
        write(folder / "rainy" / f"rain-{i + 1:03d}.png", RAIN(clean, i))
    return folder


def test_rain100l_pairs_in_its_own_folder_named_after_it(bench, tmp_path, capsys):
    folder = _rain100l(tmp_path)
    out = tmp_path / "eval"
    code, _, _ = _evaluate(capsys, bench, out, "--lq", str(folder / "rainy"), "--gt", str(folder))
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and list(metrics["tasks"]) == ["Rain100L"]
    assert [r["name"] for r in metrics["tasks"]["Rain100L"]["images"]] == ["rain-001", "rain-002"]
    assert "| Input (degraded) | " in (out / "metrics.md").read_text()

    write(folder / "norain-003.png", picture(62, (64, 72)))  # a clean image without its rainy input
    code, _, err = _evaluate(capsys, bench, tmp_path / "eval2", "--lq", str(folder / "rainy"), "--gt", str(folder))
    assert code == 2 and f"--gt: {folder / 'norain-003.png'} has no input: no rain-003.*" in err
    (folder / "norain-003.png").unlink()
    (folder / "norain-002.png").unlink()  # a rainy input without its clean image
    code, _, err = _evaluate(capsys, bench, tmp_path / "eval3", "--lq", str(folder / "rainy"), "--gt", str(folder))
    assert code == 2 and "has no ground truth: no rain-002.* or norain-002.*" in err


def test_a_hazy_image_pairs_with_the_name_before_its_first_underscore(bench, tmp_path, capsys):
    sots = tmp_path / "SOTS"
    for i in range(2):
        clean = picture(70 + i, (64, 64))
        write(sots / "target" / f"{i + 1:04d}.png", clean)
        write(sots / "input" / f"{i + 1:04d}_0.8_0.2.jpg", HAZE(clean, i))
    out = tmp_path / "eval"
    code, _, _ = _evaluate(capsys, bench, out, "--lq", str(sots / "input"), "--gt", str(sots / "target"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and list(metrics["tasks"]) == ["SOTS"] and metrics["tasks"]["SOTS"]["n_images"] == 2
    code, _, _ = _evaluate(capsys, bench, tmp_path / "named", "--lq", str(sots / "input"), "--gt",
                           str(sots / "target"), "--name", "SOTS outdoor")
    assert code == 0 and list(json.loads((tmp_path / "named/metrics.json").read_text())["tasks"]) == ["SOTS outdoor"]


def test_off_a_terminal_progress_is_a_line_per_tenth():
    log = io.StringIO()
    with progress(1000, "evaluate", file=log) as bar:
        for i in range(1000):
            bar.update(1, task="derain")
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("evaluate: 100/1000 img (10 %)") and lines[-1].startswith("evaluate: 1000/1000 img")
    assert lines[-1].endswith("task derain")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    with progress(1000, "evaluate", file=screen) as bar:
        bar.update(500)
    assert "\r" in screen.getvalue() and "500/1000" in screen.getvalue()  # tqdm's bar, redrawn in place
