"""The all-in-one benchmark layouts (constyle_plugin.data.benchmark_layouts) on miniature copies (tests/layouts.py)."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from constyle_plugin.data import benchmark_layouts as bl
from constyle_plugin.errors import ConStyleError, LayoutError, OptionError
from layouts import make_constyle_v2_suite, make_five_task, make_three_task, write

DOCS = "docs/allinone-benchmarks.md"


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    train, test = make_three_task(root, n=3)
    return root, train, test


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    root = tmp_path_factory.mktemp("five")
    train, test = make_five_task(root, n=2)
    return root, train, test


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_constyle_v2_suite(tmp_path_factory.mktemp("v2"), n=2)


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(LayoutError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Test sets found, columns, pairings
# --------------------------------------------------------------------------------------------
def test_three_task_test_sets(three):
    _, _, test = three
    tasks = bl.benchmark_test_sets("three-task", test)
    assert [t.column for t in tasks] == ["SOTS", "Rain100L", "BSD68 s15", "BSD68 s25", "BSD68 s50"]
    assert [t.key for t in tasks] == ["dehaze", "derain", "denoise_15", "denoise_25", "denoise_50"]
    assert all(len(t.images) == 3 for t in tasks)
    by_key = {t.key: t for t in tasks}
    for img in by_key["dehaze"].images:
        assert img.lq.parent == test / "dehaze" / "input" and img.gt.parent == test / "dehaze" / "target"
        assert img.gt.stem == img.lq.stem.split("_")[0] and img.lq.suffix == ".jpg" and img.gt.suffix == ".png"
    for img in by_key["derain"].images:
        assert img.lq == test / "derain" / "Rain100L" / "input" / img.gt.name
        assert img.gt.parent == test / "derain" / "Rain100L" / "target"
    for key, sigma in (("denoise_15", 15), ("denoise_25", 25), ("denoise_50", 50)):
        for img in by_key[key].images:
            assert img.lq is None and img.gt.parent == test / "denoise" / "bsd68"
            assert img.synthesis[:2] == ("uint8", sigma)
    assert all(img.crop_multiple == 16 and img.crop_mode == "center" for t in tasks for img in t.images)


def test_five_task_test_sets(five):
    _, _, test = five
    tasks = bl.benchmark_test_sets("five-task", test)
    assert [t.column for t in tasks] == ["SOTS", "Rain100L", "BSD68 s25", "GoPro", "LOL"]
    by_key = {t.key: t for t in tasks}
    assert [img.lq.name for img in by_key["deblur"].images] == [img.gt.name for img in by_key["deblur"].images]
    assert by_key["deblur"].images[0].lq.parent == test / "deblur" / "gopro" / "input"
    assert by_key["enhance"].images[0].gt.parent == test / "enhance" / "lol" / "target"
    assert all(len(t.images) == 2 for t in tasks)


def test_constyle_v2_suite(suite):
    tasks = bl.benchmark_test_sets("constyle-v2", suite)
    assert [t.column for t in tasks] == ["GoPro", "SOTS", "Rain", "CBSD68 s25", "LIVE1 q20", "LOL", "Defocus", "Snow"]
    by_key = {t.key: t for t in tasks}
    # paired in sorted order where the names differ
    assert [(i.lq.name, i.gt.name) for i in by_key["sots"].images] == [("0001_0.8_0.2.jpg", "0001.png"),
                                                                      ("0002_0.8_0.2.jpg", "0002.png")]
    assert [(i.lq.parent.name, i.lq.name, i.gt.name) for i in by_key["live1_20"].images] == [
        ("20", "photo1.jpg", "photo1.bmp"), ("20", "photo2.jpg", "photo2.bmp")]
    assert [(i.lq.name, i.gt.name) for i in by_key["defocus"].images] == [("001_blurred.png", "001_sharp.png"),
                                                                         ("002_blurred.png", "002_sharp.png")]
    for key in ("gopro", "rain", "lol", "snow"):
        assert all(i.lq.name == i.gt.name and i.lq.parent.name == "lq" and i.gt.parent.name == "hq"
                   for i in by_key[key].images)
    assert all(i.lq is None and i.synthesis == ("float", 25.0, 0) for i in by_key["cbsd68_25"].images)
    assert all(i.crop_multiple == 32 and i.crop_mode == "top-left" for t in tasks for i in t.images)


def test_a_root_holding_the_test_folder_is_accepted(three, suite):
    root, _, test = three
    assert bl.benchmark_test_sets("three-task", root) == bl.benchmark_test_sets("three-task", test)
    assert bl.benchmark_test_sets("constyle-v2", suite.parent) == bl.benchmark_test_sets("constyle-v2", suite)


def test_files_that_are_not_images_are_left_out(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    (test / "denoise" / "bsd68" / "Thumbs.db").write_bytes(b"\0")
    (test / "derain" / "Rain100L" / "input" / ".DS_Store").write_bytes(b"\0")
    (test / "derain" / "Rain100L" / "target" / "readme.txt").write_text("x")
    tasks = bl.benchmark_test_sets("three-task", test)
    assert all(len(t.images) == 2 for t in tasks)


# --------------------------------------------------------------------------------------------
# Loading: crops and noise
# --------------------------------------------------------------------------------------------
def test_promptir_test_images_are_centre_cropped_to_16(three):
    _, _, test = three
    cropped = 0
    for task in bl.benchmark_test_sets("three-task", test)[:2]:
        for img in task.images:
            lq, gt = img.load()
            source_gt, source_lq = _rgb(img.gt), _rgb(img.lq)
            h, w = source_gt.shape[:2]
            dh, dw = h % 16, w % 16
            cropped += bool(dh or dw)
            assert gt.shape == lq.shape == (h - dh, w - dw, 3) and gt.dtype == lq.dtype == np.float32
            # PromptIR's crop_img: the odd row / column goes to the bottom / right
            np.testing.assert_array_equal(gt, source_gt[dh // 2:dh // 2 + h - dh, dw // 2:dw // 2 + w - dw])
            np.testing.assert_array_equal(lq, source_lq[dh // 2:dh // 2 + h - dh, dw // 2:dw // 2 + w - dw])
    assert cropped  # the miniature images do need the crop


def test_constyle_v2_images_are_cropped_to_32_from_the_top_left(suite):
    for task in bl.benchmark_test_sets("constyle-v2", suite):
        for img in task.images:
            lq, gt = img.load()
            source = _rgb(img.gt)
            h, w = source.shape[:2]
            assert gt.shape == (h - h % 32, w - w % 32, 3) and lq.shape == gt.shape
            np.testing.assert_array_equal(gt, source[:h - h % 32, :w - w % 32])


@pytest.mark.parametrize("key,sigma", [("denoise_15", 15), ("denoise_25", 25), ("denoise_50", 50)])
def test_promptir_noise_is_deterministic_and_of_the_right_strength(three, key, sigma):
    _, _, test = three
    task = {t.key: t for t in bl.benchmark_test_sets("three-task", test)}[key]
    residuals = []
    for img in task.images:
        lq, gt = img.load()
        lq2, _ = img.load()
        np.testing.assert_array_equal(lq, lq2)
        # 8-bit, in [0, 1]
        assert lq.min() >= 0 and lq.max() <= 1
        np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-3)
        mid = (gt > 70 / 255) & (gt < 185 / 255)  # far from the clip at 0 and 255
        residuals.append(((lq - gt) * 255)[mid])
    r = np.concatenate(residuals)
    assert r.size > 5000
    # N(0, sigma), then truncated to 8 bit: mean -0.5, std sqrt(sigma^2 + 1/12)
    assert abs(r.std() - np.sqrt(sigma ** 2 + 1 / 12)) < 0.05 * sigma
    assert abs(r.mean() + 0.5) < 0.1 * sigma
    (a_lq, a_gt), (b_lq, b_gt) = task.images[0].load(), task.images[1].load()
    h, w = min(a_lq.shape[0], b_lq.shape[0]), min(a_lq.shape[1], b_lq.shape[1])
    assert not np.array_equal((a_lq - a_gt)[:h, :w], (b_lq - b_gt)[:h, :w])  # each image its own noise


def test_the_noise_levels_draw_different_noise(three):
    _, _, test = three
    by_key = {t.key: t for t in bl.benchmark_test_sets("three-task", test)}
    (lq15, gt), (lq25, _) = by_key["denoise_15"].images[0].load(), by_key["denoise_25"].images[0].load()
    assert not np.allclose((lq15 - gt) / 15, (lq25 - gt) / 25, atol=2 / 255)


def test_constyle_v2_noise_is_the_authors(suite):
    task = {t.key: t for t in bl.benchmark_test_sets("constyle-v2", suite)}["cbsd68_25"]
    for img in task.images:
        lq, gt = img.load()
        full = _rgb(img.gt)
        # the authors: np.random.seed(0); img + np.random.normal(0, 25 / 255, img.shape) on the whole image,
        # then the top-left crop; no clipping, no quantisation
        np.random.seed(0)
        expected = (full + np.random.normal(0, 25 / 255, full.shape))[:gt.shape[0], :gt.shape[1]]
        np.testing.assert_allclose(lq, expected, atol=1e-6)
        assert abs((lq - gt).std() * 255 - 25) < 1.0
        np.testing.assert_array_equal(lq, img.load()[0])


def test_a_size_mismatch_is_named_at_load(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    target = sorted((test / "derain" / "Rain100L" / "target").iterdir())[0]
    write(target, np.zeros((64, 64, 3), np.float32))
    img = {t.key: t for t in bl.benchmark_test_sets("three-task", test)}["derain"].images[0]
    message = _error(img.load)
    assert str(img.lq) in message and str(target) in message


# --------------------------------------------------------------------------------------------
# Layout errors
# --------------------------------------------------------------------------------------------
def test_missing_test_folder_names_it_and_the_layout(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    shutil.rmtree(test / "dehaze" / "target")
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert str(test / "dehaze" / "target") in message
    assert "derain/Rain100L/{input,target}" in message and "denoise/bsd68" in message and DOCS in message


def test_five_task_on_a_three_task_root_names_the_missing_folder(three):
    _, _, test = three
    message = _error(bl.benchmark_test_sets, "five-task", test)
    assert str(test / "deblur" / "gopro") in message and "enhance/lol" in message


def test_unpaired_test_file_is_named(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    target = test / "derain" / "Rain100L" / "target"
    gone = sorted(target.iterdir())[1]
    gone.unlink()
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert f"derain/Rain100L/input/{gone.name}" in message and "no partner" in message


def test_rain100l_named_rain_and_norain_pairs_too(tmp_path):
    """Rain100L as its authors name it (input/rain-N.png, target/norain-N.png) pairs like PromptIR's copy
    (the same names); a clean image left without its rainy twin is named with the twin it needs."""
    _, test = make_three_task(tmp_path, n=2)
    rain = test / "derain" / "Rain100L"
    same = [(p.name, (rain / "target" / p.name).read_bytes()) for p in sorted((rain / "input").iterdir())]
    for folder, prefix in (("input", "rain-"), ("target", "norain-")):
        for name, _ in same:
            (rain / folder / name).rename(rain / folder / f"{prefix}{name}")
    task = {t.key: t for t in bl.benchmark_test_sets("three-task", test)}["derain"]
    assert [(i.lq.name, i.gt.name) for i in task.images] == [(f"rain-{n}", f"norain-{n}") for n, _ in same]
    assert [i.gt.read_bytes() for i in task.images] == [data for _, data in same]
    (rain / "input" / f"rain-{same[0][0]}").unlink()
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert f"derain/Rain100L/target/norain-{same[0][0]}" in message and f"input/rain-{same[0][0]}" in message


def test_unpaired_clean_file_is_named(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    write(test / "derain" / "Rain100L" / "target" / "extra.png", np.zeros((40, 40, 3), np.float32))
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert "derain/Rain100L/target/extra.png" in message


def test_unpaired_hazy_file_names_the_clear_image_it_needs(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    (test / "dehaze" / "target" / "0002.png").unlink()
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert "dehaze/input/0002_0.8_0.2.jpg" in message and "dehaze/target/0002.*" in message


def test_sorted_pairs_with_unequal_counts_name_the_extra_file(tmp_path):
    suite = make_constyle_v2_suite(tmp_path, n=2)
    (suite / "defocus_small" / "hq" / "002_sharp.png").unlink()
    message = _error(bl.benchmark_test_sets, "constyle-v2", suite)
    assert "defocus_small/lq/002_blurred.png" in message and "sorted order" in message


def test_an_empty_folder_is_named(tmp_path):
    _, test = make_three_task(tmp_path, n=2)
    for f in (test / "denoise" / "bsd68").iterdir():
        f.unlink()
    message = _error(bl.benchmark_test_sets, "three-task", test)
    assert str(test / "denoise" / "bsd68") in message


def test_a_constyle_v2_suite_passed_as_three_task_says_so(suite):
    message = _error(bl.benchmark_test_sets, "three-task", suite)
    assert "ConStyle v2 test suite" in message and "constyle-v2" in message and str(suite) in message


def test_the_train_folder_passed_as_a_test_root_says_so(three):
    _, train, _ = three
    message = _error(bl.benchmark_test_sets, "three-task", train)
    assert "training layout" in message and str(train) in message


def test_a_promptir_test_root_passed_as_constyle_v2_says_so(three):
    _, _, test = three
    message = _error(bl.benchmark_test_sets, "constyle-v2", test)
    assert "PromptIR/AdaIR test layout" in message and "blur_small" in message


def test_a_test_root_passed_as_a_training_root_says_so(three):
    _, _, test = three
    message = _error(bl.benchmark_train_pairs, "three-task", test)
    assert "PromptIR/AdaIR test layout" in message and "Derain/{rainy/rain-N.png, gt/norain-N.png}" in message


def test_a_root_that_is_not_a_folder(tmp_path):
    message = _error(bl.benchmark_test_sets, "five-task", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and DOCS in message


def test_unknown_setting_has_a_did_you_mean(three):
    with pytest.raises(OptionError, match="did you mean 'three-task'"):
        bl.benchmark_test_sets("three_task", three[2])
    with pytest.raises(ConStyleError, match="did you mean 'five-task'"):
        bl.benchmark_train_pairs("fivetask", three[1])


# --------------------------------------------------------------------------------------------
# Training pairs
# --------------------------------------------------------------------------------------------
def test_three_task_training_pairs(three):
    root, train, _ = three
    for where in (train, root):  # the Train folder, or the folder holding it
        pairs = bl.benchmark_train_pairs("three-task", where)
        assert list(pairs) == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
        assert {len(pairs[k]) for k in ("denoise_15", "denoise_25", "denoise_50")} == {3}
        assert all(p.lq is None and p.gt.parent == train / "Denoise" for p in pairs["denoise_25"])
        assert {p.gt.suffix for p in pairs["denoise_15"]} == {".png", ".jpg", ".bmp"}
        assert len(pairs["derain"]) == 3
        for p in pairs["derain"]:
            assert p.lq.parent == train / "Derain" / "rainy"
            assert p.gt == train / "Derain" / "gt" / f"norain-{p.lq.name[5:]}"
        assert len(pairs["dehaze"]) == 6  # two hazy images per clear one, in part1 and part2
        for p in pairs["dehaze"]:
            assert p.lq.parent.parent == train / "Dehaze" / "synthetic"
            assert p.gt == train / "Dehaze" / "original" / (p.lq.name.split("_")[0] + ".jpg")


def test_five_task_training_pairs(five):
    _, train, _ = five
    pairs = bl.benchmark_train_pairs("five-task", train)
    assert list(pairs) == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze", "deblur", "enhance"]
    assert all(p.lq.parent == train / "Deblur" / "blur" and p.gt == train / "Deblur" / "sharp" / p.lq.name
               for p in pairs["deblur"])
    assert all(p.lq.parent == train / "Enhance" / "low" and p.gt == train / "Enhance" / "gt" / p.lq.name
               for p in pairs["enhance"])
    only = bl.benchmark_train_pairs("five-task", train, tasks=["denoise_25", "enhance"])
    assert list(only) == ["denoise_25", "enhance"]


def test_three_task_training_root_for_five_task_names_the_missing_folder(three):
    _, train, _ = three
    message = _error(bl.benchmark_train_pairs, "five-task", train)
    assert str(train / "Deblur") in message and "Enhance/{low,gt}" in message


def test_list_files_select_training_files(three, tmp_path):
    root, train, _ = three
    data_dir = root / "data_dir"
    everything = bl.benchmark_train_pairs("three-task", train, lists=data_dir)
    scanned = bl.benchmark_train_pairs("three-task", train)
    # the lists name every file (in their own order, which is kept)
    assert {k: sorted(v, key=str) for k, v in everything.items()} == {k: sorted(v, key=str) for k, v in scanned.items()}
    lists = {"derain": tmp_path / "rain.txt", "dehaze": tmp_path / "haze.txt", "denoise": tmp_path / "noise.txt"}
    lists["derain"].write_text("rainy/rain-2.png\n\n")
    lists["dehaze"].write_text("synthetic/part2/0003_1_0.16.jpg\nsynthetic/part1/0001_0.8_0.1.jpg\n")
    lists["denoise"].write_text("002.jpg\n")
    pairs = bl.benchmark_train_pairs("three-task", train, lists=lists)
    assert [(p.lq.name, p.gt.name) for p in pairs["derain"]] == [("rain-2.png", "norain-2.png")]
    assert [(p.lq.name, p.gt.name) for p in pairs["dehaze"]] == [("0003_1_0.16.jpg", "0003.jpg"),
                                                                 ("0001_0.8_0.1.jpg", "0001.jpg")]
    assert [p.gt.name for p in pairs["denoise_50"]] == ["002.jpg"]
    # a bare file name is looked up in the degraded-image folder too
    lists["derain"].write_text("rain-3.png\n")
    assert [p.lq.name for p in bl.benchmark_train_pairs("three-task", train, lists=lists)["derain"]] == ["rain-3.png"]


def test_a_missing_listed_file_is_named(three, tmp_path):
    _, train, _ = three
    listed = tmp_path / "hazy_outside.txt"
    listed.write_text("synthetic/part1/0001_0.8_0.1.jpg\nsynthetic/part1/0009_0.8_0.1.jpg\n")
    message = _error(bl.benchmark_train_pairs, "three-task", train, lists={"dehaze": listed})
    assert str(listed) in message and "line 2" in message and "synthetic/part1/0009_0.8_0.1.jpg" in message
    message = _error(bl.benchmark_train_pairs, "three-task", train, lists={"derain": tmp_path / "absent.txt"})
    assert str(tmp_path / "absent.txt") in message
    with pytest.raises(OptionError, match="did you mean 'derain'"):
        bl.benchmark_train_pairs("three-task", train, lists={"derian": listed})


def test_unpaired_training_file_is_named(tmp_path):
    train, _ = make_three_task(tmp_path, n=2)
    (train / "Derain" / "gt" / "norain-2.png").unlink()
    message = _error(bl.benchmark_train_pairs, "three-task", train)
    assert "Derain/rainy/rain-2.png" in message and "Derain/gt/norain-2.png" in message
    train, _ = make_three_task(tmp_path / "b", n=2)
    os.remove(train / "Dehaze" / "original" / "0001.jpg")
    message = _error(bl.benchmark_train_pairs, "three-task", train, tasks=["dehaze"])
    assert "Dehaze/synthetic/part1/0001_0.8_0.1.jpg" in message


def test_unknown_task_and_constyle_v2_training(three):
    _, train, _ = three
    with pytest.raises(OptionError, match="did you mean 'dehaze'"):
        bl.benchmark_train_pairs("three-task", train, tasks=["dehase"])
    with pytest.raises(OptionError, match="setting"):
        bl.benchmark_train_pairs("constyle-v2", train)


def test_the_core_module_needs_neither_torch_nor_basicsr():
    import ast
    source = ast.parse(open(bl.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(source) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(source)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not imported & {"torch", "basicsr", "mmengine"}
