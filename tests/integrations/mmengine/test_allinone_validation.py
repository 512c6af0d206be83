"""MMEngine validation of every all-in-one test set: ``AllInOneTestDataset`` with every task (or a list) in one
dataloader, ``PSNR`` / ``SSIM`` per task plus the papers' average (the mean of the task means), and a real
``constyle train`` of ``options/mmengine/allinone/nafnet_constyle_three_task.py`` whose validation logs every
column, keeps the best checkpoint by the average, and agrees with ``constyle evaluate``'s table."""
from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.structures import BaseDataElement

from constyle_plugin.data.benchmark_layouts import COLUMNS, TEST_TASKS
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.errors import ConStyleError, OptionError
from constyle_plugin.integrations.mmengine import DATASETS, METRICS

from allinone_runs import constyle_train_tiny, evaluate_benchmark
from cli_runs import ROOT
from layouts import make_five_task, make_three_task

ensure_basicsr_importable()
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402

CONFIG = ROOT / "options" / "mmengine" / "allinone" / "nafnet_constyle_three_task.py"


def _label(task: str) -> str:
    return COLUMNS[task].replace(" ", "_")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Miniature test roots: three-task with 3 images per set, except Rain100L with 2 (uneven sets, so the
    mean of task means differs from the mean over images); five-task with 2 per set."""
    base = tmp_path_factory.mktemp("allinone_val")
    _, three = make_three_task(base / "three", n=3)
    rain = three / "derain" / "Rain100L"
    last = sorted((rain / "input").iterdir())[-1].name
    for side in ("input", "target"):
        (rain / side / last).unlink()
    _, five = make_five_task(base / "five", n=2)
    return {"three-task": three, "five-task": five}


def _build(**kw):
    return DATASETS.build(dict(type="AllInOneTestDataset", **kw))


# ------------------------------------------------------------------------------------------------ dataset
@pytest.mark.parametrize("setting", ["three-task", "five-task"])
def test_all_tasks_in_the_papers_column_order_with_their_counts(roots, setting):
    root = roots[setting]
    ds = _build(setting=setting, dataroot=str(root))
    tasks = list(TEST_TASKS[setting])
    sizes = [2 if (setting == "five-task" or t == "derain") else 3 for t in tasks]
    assert ds.metainfo["tasks"] == tasks and ds.metainfo["sizes"] == sizes
    assert ds.metainfo["columns"] == [COLUMNS[t] for t in tasks]
    assert len(ds) == sum(sizes)
    seen = [(ds[i]["data_samples"].metainfo["task"], ds[i]["data_samples"].metainfo["column"]) for i in range(len(ds))]
    assert seen == [(t, COLUMNS[t]) for t, n in zip(tasks, sizes) for _ in range(n)]
    # each sample is the one-task dataset's sample, image for image
    start = 0
    for task, n in zip(tasks, sizes):
        one = _build(setting=setting, dataroot=str(root), task=task)
        assert one.metainfo["task"] == task and one.metainfo["column"] == COLUMNS[task] and len(one) == n
        for i in range(n):
            a, b = ds[start + i], one[i]
            assert a["data_samples"].metainfo["gt_path"] == b["data_samples"].metainfo["gt_path"]
            assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["data_samples"].gt_img,
                                                                       b["data_samples"].gt_img)
        start += n

    # max_images applies per task; a list keeps its order
    capped = _build(setting=setting, dataroot=str(root), max_images=1)
    assert capped.metainfo["sizes"] == [1] * len(tasks) and len(capped) == len(tasks)
    picked = _build(setting=setting, dataroot=str(root), task=["derain", "dehaze"], max_images=1)
    assert picked.metainfo["tasks"] == ["derain", "dehaze"] and len(picked) == 2
    assert [picked[i]["data_samples"].metainfo["task"] for i in range(2)] == ["derain", "dehaze"]


def test_task_lists_that_make_no_sense_are_refused_naming_the_option(roots):
    root = str(roots["three-task"])
    for task, fragment in ((["derain", "derain"], "'derain' listed more than once"), ([], "non-empty list"),
                           (3, "got 3"), (["derain", "deblur"], "'deblur' is not a three-task test task")):
        with pytest.raises(OptionError, match=re.escape(fragment)) as info:
            _build(setting="three-task", dataroot=root, task=task)
        assert str(info.value).startswith("task: ") and "AllInOneTestDataset" in str(info.value)
    with pytest.raises(OptionError, match=r"^setting: .*three-task.*AllInOneTestDataset"):
        _build(setting="three_task", dataroot=root)


def test_every_task_means_the_sets_there_and_says_the_averages_are_partial(roots, tmp_path):
    """A root without SOTS validates the four other columns with a warning; the layout check (as the trainer
    runs it) passes; asked for by name, the absent set is refused; a set present but incomplete still is."""
    root = tmp_path / "test"
    shutil.copytree(roots["three-task"], root)
    shutil.rmtree(root / "dehaze")
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    records: list = []
    MMLogger.get_instance("partial_validation").addHandler(Keep())  # print_log(logger="current"): the latest
    cls = DATASETS.get("AllInOneTestDataset")
    cls.check_layout(dict(setting="three-task", dataroot=str(root)))
    ds = _build(setting="three-task", dataroot=str(root))
    assert ds.metainfo["tasks"] == ["derain", "denoise_15", "denoise_25", "denoise_50"]
    assert ds.metainfo["missing"] == ["SOTS"] and len(ds) == 2 + 3 * 3
    assert any("SOTS not under" in r and "4 of 5 columns" in r and "partial" in r for r in records), records
    with pytest.raises(ConStyleError, match=f"no folder {root / 'dehaze'}"):
        _build(setting="three-task", dataroot=str(root), task=["derain", "dehaze"])
    (root / "dehaze" / "input").mkdir(parents=True)
    shutil.copy(next((roots["three-task"] / "dehaze" / "input").iterdir()), root / "dehaze" / "input")
    for build in (lambda: cls.check_layout(dict(setting="three-task", dataroot=str(root))),
                  lambda: _build(setting="three-task", dataroot=str(root))):
        with pytest.raises(ConStyleError, match=f"no folder {root / 'dehaze' / 'target'}"):
            build()


# ------------------------------------------------------------------------------------------------ metric
def _samples(ds, pred=lambda lq, gt: lq):
    """Data samples as the model returns them (the dataset's metainfo, ``pred_img``, ``gt_img``)."""
    out = []
    for i in range(len(ds)):
        item = ds[i]
        res = BaseDataElement(metainfo=dict(item["data_samples"].metainfo))
        res.gt_img = item["data_samples"].gt_img
        res.pred_img = pred(item["inputs"], res.gt_img)
        out.append(res)
    return out


def _basicsr_scores(samples):
    """{task: ([psnr per image], [ssim per image])} with BasicSR's own validation path: tensor2img (8-bit
    BGR) then calculate_psnr / calculate_ssim."""
    scores = {}
    for s in samples:
        pred, gt = tensor2img(s.pred_img), tensor2img(s.gt_img)
        p, q = scores.setdefault(s.metainfo["task"], ([], []))
        p.append(calculate_psnr(pred, gt, 0, input_order="HWC"))
        q.append(calculate_ssim(pred, gt, 0, input_order="HWC"))
    return scores


def test_metrics_per_task_equal_basicsr_and_the_average_is_the_mean_of_task_means(roots):
    ds = _build(setting="three-task", dataroot=str(roots["three-task"]))
    samples = _samples(ds)
    evaluator = Evaluator([METRICS.build(dict(type="PSNR")), METRICS.build(dict(type="SSIM"))])
    for start in range(0, len(samples), 2):  # batches of 2, as a dataloader would pass them
        evaluator.process(samples[start:start + 2])
    metrics = evaluator.evaluate(len(samples))

    expected = _basicsr_scores(samples)
    tasks = list(TEST_TASKS["three-task"])
    assert list(expected) == tasks
    keys = [f"{m}/{_label(t)}" for m in ("PSNR", "SSIM") for t in tasks]
    assert sorted(metrics) == sorted(keys + ["PSNR", "SSIM"])
    assert [k for k in metrics if k.startswith("PSNR/")] == [f"PSNR/{_label(t)}" for t in tasks]  # column order
    for j, name in enumerate(("PSNR", "SSIM")):
        means = []
        for task in tasks:
            values = expected[task][j]
            assert len(values) == (2 if task == "derain" else 3)
            means.append(float(np.mean(values)))
            assert metrics[f"{name}/{_label(task)}"] == pytest.approx(means[-1], abs=1e-9), (name, task)
        assert metrics[name] == pytest.approx(float(np.mean(means)), abs=1e-9)
        # the papers' average, not the mean over images: they differ on these uneven sets
        over_images = float(np.mean([v for task in tasks for v in expected[task][j]]))
        assert abs(metrics[name] - over_images) > 1e-6
    # the denoising columns differ (sigma 15 < 25 < 50 gives decreasing PSNR of the noisy input)
    assert metrics["PSNR/BSD68_s15"] > metrics["PSNR/BSD68_s25"] > metrics["PSNR/BSD68_s50"]


def test_metrics_without_tasks_are_unchanged_and_a_mix_is_refused(roots):
    ds = _build(setting="three-task", dataroot=str(roots["three-task"]), task=["derain", "dehaze"])
    samples = _samples(ds)
    expected = _basicsr_scores(samples)
    untagged = []
    for s in samples:
        u = BaseDataElement()
        u.pred_img, u.gt_img = s.pred_img, s.gt_img
        untagged.append(u)
    metric = METRICS.build(dict(type="PSNR"))
    Evaluator([metric]).process(untagged)
    assert metric.compute_metrics(metric.results) == {
        "PSNR": pytest.approx(float(np.mean(expected["derain"][0] + expected["dehaze"][0])), abs=1e-9)}

    metric = METRICS.build(dict(type="PSNR"))
    Evaluator([metric]).process(samples[:1] + untagged[1:])
    with pytest.raises(ConStyleError, match=r"^PSNR: \d+ of \d+ data samples carry no 'task' metainfo"):
        metric.compute_metrics(metric.results)

    # one task (task='derain'): its column and the same number as the average
    one = _samples(_build(setting="three-task", dataroot=str(roots["three-task"]), task="derain"))
    metric = METRICS.build(dict(type="PSNR", test_y_channel=True))
    Evaluator([metric]).process(one)
    scores = metric.compute_metrics(metric.results)
    assert list(scores) == ["PSNR_Y/Rain100L", "PSNR_Y"] and scores["PSNR_Y"] == scores["PSNR_Y/Rain100L"]


# ------------------------------------------------------------------------------------------------ real run
def test_constyle_train_three_task_validates_every_task(prompter_file, tmp_path):
    """``constyle train`` of the ready three-task config on a miniature layout (2 iterations, tiny NAFNet,
    48 px patches, the first image of each test set): the validation line logs every column's PSNR and SSIM
    and their averages, the best checkpoint is chosen by the average PSNR, and ``constyle evaluate`` on the
    checkpoint gives the same per-column numbers."""
    train_root, test_root = make_three_task(tmp_path / "data", n=2)
    work = tmp_path / "work"
    proc = constyle_train_tiny(CONFIG, tmp_path, work, prompter_file,
                               [f"train_dataloader.dataset.dataroot={train_root}",
                                f"val_dataloader.dataset.dataroot={test_root}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = list(TEST_TASKS["three-task"])

    log = "\n".join(p.read_text() for p in work.rglob("*.log"))
    line = re.search(r"Iter\(val\) \[5/5\]\s+PSNR.*", log)  # the summary line, after the per-iteration ones
    assert line, log[-3000:]
    logged = dict(re.findall(r"(\S+): ([\d.]+)", line.group(0)))
    for name in ("PSNR", "SSIM"):
        assert [k for k in logged if k.startswith(name + "/")] == [f"{name}/{_label(t)}" for t in tasks]
        assert name in logged

    records = [json.loads(x) for p in work.glob("*/vis_data/scalars.json") for x in p.read_text().splitlines()
               if '"PSNR' in x]
    assert len(records) == 1
    scalars = records[0]
    for name in ("PSNR", "SSIM"):
        per_task = [scalars[f"{name}/{_label(t)}"] for t in tasks]
        assert scalars[name] == pytest.approx(sum(per_task) / len(per_task), abs=1e-9)
        assert all(abs(float(logged[f"{name}/{_label(t)}"]) - v) < 6e-5 for t, v in zip(tasks, per_task))
    assert [p.name for p in work.glob("best_PSNR_iter_*.pth")] == ["best_PSNR_iter_2.pth"]

    table = evaluate_benchmark(work / "iter_2.pth", "three-task", test_root, tmp_path / "eval", tmp_path)["tasks"]
    assert list(table) == tasks
    for task in tasks:  # the table's numbers are the ones validation logged
        assert table[task]["psnr"] == pytest.approx(scalars[f"PSNR/{_label(task)}"], abs=1e-6), task
        assert table[task]["ssim"] == pytest.approx(scalars[f"SSIM/{_label(task)}"], abs=1e-6), task
