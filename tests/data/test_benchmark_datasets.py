"""The all-in-one benchmark datasets (constyle_plugin.data.benchmark_datasets) on miniature layouts (tests/layouts.py),
built directly, through BasicSR's DATASET_REGISTRY and through MMEngine's ``constyle`` scope."""
from __future__ import annotations

import collections
import random
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch

import constyle_plugin  # noqa: F401  (registers with BasicSR / MMEngine as they are imported)
from constyle_plugin.data.benchmark_datasets import AllInOneTestDataset, AllInOneTrainDataset
from constyle_plugin.data.benchmark_layouts import benchmark_test_sets
from constyle_plugin.data.datasets import BadImageWarning
from constyle_plugin.errors import ConStyleError, LayoutError, OptionError
from layouts import make_constyle_v2_suite, make_five_task, make_three_task


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    train, test = make_three_task(root, n=2)
    return root, train, test


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    root = tmp_path_factory.mktemp("five")
    train, test = make_five_task(root, n=2)
    return root, train, test


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def _padded(img, size):
    h, w = img.shape[:2]
    return np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")


def _dihedral():
    """The eight flips / 90-degree rotations (of H x W x C arrays), as functions."""
    return [lambda x, k=k, flip=flip: np.rot90(x[:, ::-1] if flip else x, k)
            for k in range(4) for flip in (False, True)]


def _locate(patch, source):
    """(transform, top, left) with ``transform(patch) == source[top:top+s, left:left+s]``, or None."""
    s = patch.shape[0]
    for transform in _dihedral():
        candidate = transform(patch)
        corner = np.all(source[:source.shape[0] - s + 1, :source.shape[1] - s + 1] == candidate[0, 0], axis=2)
        for top, left in zip(*np.nonzero(corner)):
            if np.array_equal(source[top:top + s, left:left + s], candidate):
                return transform, int(top), int(left)
    return None


def _hwc(t):
    return t.numpy().transpose(1, 2, 0)


def _train(root, **opt):
    base = dict(setting="three-task", dataroot=str(root), gt_size=64, phase="train")
    base.update(opt)
    return AllInOneTrainDataset(base)


# --------------------------------------------------------------------------------------------
# Training items
# --------------------------------------------------------------------------------------------
def test_train_items_shapes_and_keys(three):
    _, train, _ = three
    ds = _train(train, gt_size=128)  # the first pictures are 100 px high: reflect-padded to the patch
    seen = set()
    for i in range(0, len(ds), 7):
        item = ds[i]
        assert set(item) == {"lq", "gt", "lq_path", "gt_path", "task"}
        assert item["lq"].shape == item["gt"].shape == (3, 128, 128)
        assert item["lq"].dtype == item["gt"].dtype == torch.float32
        assert 0 <= float(item["gt"].min()) and float(item["gt"].max()) <= 1
        seen.add(item["task"])
    assert seen == {"denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"}


def test_the_papers_repeats_set_the_length_and_the_mix(three):
    _, train, _ = three
    ds = _train(train)
    # 2 clean images x 3 per sigma, 2 rain pairs x 120, 4 hazy images x 1 (PromptIR)
    assert len(ds) == 2 * 3 * 3 + 2 * 120 + 4
    mix = collections.Counter(ds.locate(i)[0] for i in range(len(ds)))
    assert mix == {"denoise_15": 6, "denoise_25": 6, "denoise_50": 6, "derain": 240, "dehaze": 4}


def test_repeat_overrides_change_the_task_mix(three):
    _, train, _ = three
    ds = _train(train, repeat={"derain": 2, "dehaze": 5})
    mix = collections.Counter(ds.locate(i)[0] for i in range(len(ds)))
    assert mix == {"denoise_15": 6, "denoise_25": 6, "denoise_50": 6, "derain": 4, "dehaze": 20}
    assert len(ds) == sum(mix.values())
    one = _train(train, repeat=1)
    items = collections.Counter(one[i]["task"] for i in range(len(one)))
    assert items == {"denoise_15": 2, "denoise_25": 2, "denoise_50": 2, "derain": 2, "dehaze": 4}
    # every pair is visited once per repeat
    assert sorted(one[i]["lq_path"] for i in range(len(one)) if one.locate(i)[0] == "dehaze") == sorted(
        str(p) for p in (train / "Dehaze" / "synthetic").rglob("*.jpg"))


@pytest.mark.parametrize("augment", [False, True])
def test_lq_and_gt_get_the_same_crop(five, augment):
    _, train, _ = five
    ds = AllInOneTrainDataset(dict(setting="five-task", dataroot=str(train), tasks=["derain", "dehaze", "deblur",
                                                                                   "enhance"],
                                   repeat=1, gt_size=48, use_hflip=augment, use_rot=augment))
    random.seed(3)
    for i in range(len(ds)):
        item = ds[i]
        gt, lq = _hwc(item["gt"]), _hwc(item["lq"])
        source_gt, source_lq = _padded(_rgb(item["gt_path"]), 48), _padded(_rgb(item["lq_path"]), 48)
        found = _locate(gt, source_gt)  # the clean patch is a window of the clean file ...
        assert found is not None, item["gt_path"]
        transform, top, left = found
        # ... and the degraded patch is the same window of the degraded file, flipped / rotated alike
        np.testing.assert_array_equal(transform(lq), source_lq[top:top + 48, left:left + 48])
        if not augment:
            np.testing.assert_array_equal(gt, source_gt[top:top + 48, left:left + 48])


def test_images_smaller_than_the_patch_are_reflect_padded(three):
    _, train, _ = three
    ds = _train(train, tasks=["derain"], repeat=1, gt_size=128, use_hflip=False, use_rot=False)
    item = next(ds[i] for i in range(len(ds)) if _rgb(ds[i]["gt_path"]).shape[0] < 128)
    source = _rgb(item["gt_path"])
    h = source.shape[0]
    gt = _hwc(item["gt"])
    found = _locate(gt, _padded(source, 128))
    assert found is not None
    _, top, left = found
    assert top == 0 and h < 128
    # rows below the picture mirror the rows above its last one
    np.testing.assert_array_equal(gt[h - top:h - top + 3], source[h - 2:h - 5:-1, left:left + 128])


@pytest.mark.parametrize("task,sigma", [("denoise_15", 15), ("denoise_50", 50)])
def test_noise_on_the_fly_has_the_tasks_strength(three, task, sigma):
    _, train, _ = three
    ds = _train(train, tasks=[task], repeat=20, gt_size=64)
    residuals, draws = [], []
    for i in range(len(ds)):
        item = ds[i]
        lq, gt = _hwc(item["lq"]), _hwc(item["gt"])
        assert item["lq_path"] == item["gt_path"] and item["task"] == task
        np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-3)  # 8-bit, as PromptIR's
        mid = (gt > 70 / 255) & (gt < 185 / 255)
        residuals.append(((lq - gt) * 255)[mid])
        draws.append(float((lq - gt)[0, 0, 0]))
    r = np.concatenate(residuals)
    assert r.size > 10000
    assert abs(r.std() - sigma) < 0.05 * sigma
    assert len(set(draws)) > len(draws) // 2  # fresh noise per sample


def test_validation_phase_is_deterministic(three):
    _, train, _ = three
    ds = _train(train, phase="val", repeat=1)
    a, b = ds[0], ds[0]
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    source = _rgb(a["gt_path"])
    h, w = source.shape[:2]
    top, left = (max(h, 64) - 64) // 2, (max(w, 64) - 64) // 2
    np.testing.assert_array_equal(_hwc(a["gt"]), source[top:top + 64, left:left + 64])


def test_seeded_torch_and_random_repeat_the_samples(three):
    _, train, _ = three
    ds = _train(train)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        random.seed(5)
        runs.append([ds[i]["lq"] for i in (0, 10, 200)])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_list_files_select_the_training_files(three, tmp_path):
    root, train, _ = three
    listed = tmp_path / "rainTrain.txt"
    listed.write_text("rainy/rain-2.png\n")
    ds = _train(train, tasks=["derain", "dehaze"], lists={"derain": str(listed)}, repeat=1)
    assert {ds[i]["lq_path"] for i in range(len(ds)) if ds.locate(i)[0] == "derain"} == {
        str(train / "Derain" / "rainy" / "rain-2.png")}
    full = _train(train, lists=str(root / "data_dir"))
    assert len(full) == len(_train(train))


def test_unreadable_files_are_left_out_with_a_warning(tmp_path):
    train, _ = make_three_task(tmp_path, n=2)
    bad = train / "Derain" / "rainy" / "rain-1.png"
    bad.write_bytes(b"not an image")
    with pytest.warns(BadImageWarning, match="rain-1.png"):
        ds = _train(train, tasks=["derain"], repeat=1)
    assert [ds[i]["lq_path"] for i in range(len(ds))] == [str(train / "Derain" / "rainy" / "rain-2.png")]


def test_option_errors(three):
    _, train, _ = three
    with pytest.raises(OptionError, match="did you mean 'derain'"):
        _train(train, repeat={"derian": 3})
    with pytest.raises(OptionError, match="gt_size"):
        _train(train, gt_size=0)
    with pytest.raises(OptionError, match="setting"):
        AllInOneTrainDataset(dict(dataroot=str(train)))
    with pytest.raises(OptionError, match="did you mean 'five-task'"):
        _train(train, setting="five_task")
    with pytest.raises(OptionError, match="io_backend"):
        _train(train, io_backend={"type": "lmdb"})
    with pytest.raises(OptionError, match="did you mean 'dehaze'"):
        _train(train, tasks=["dehase"])
    with pytest.raises(LayoutError, match="Deblur"):
        _train(train, setting="five-task")
    assert issubclass(LayoutError, ConStyleError) and issubclass(OptionError, ConStyleError)


# --------------------------------------------------------------------------------------------
# Test items
# --------------------------------------------------------------------------------------------
def test_test_dataset_items_are_the_whole_cropped_images(three):
    _, _, test = three
    sets = {t.key: t for t in benchmark_test_sets("three-task", test)}
    for task in ("dehaze", "denoise_25"):
        ds = AllInOneTestDataset(dict(setting="three-task", dataroot=str(test), task=task, phase="val"))
        assert len(ds) == 2 and ds.column == sets[task].column
        for i, img in enumerate(sets[task].images):
            item = ds[i]
            lq, gt = img.load()
            assert item["task"] == task and item["gt_path"] == str(img.gt)
            assert item["lq_path"] == str(img.lq or img.gt)
            assert tuple(item["gt"].shape) == (3, gt.shape[0], gt.shape[1])
            assert gt.shape[0] % 16 == 0 and gt.shape[1] % 16 == 0
            np.testing.assert_array_equal(_hwc(item["lq"]), lq)
            np.testing.assert_array_equal(_hwc(item["gt"]), gt)
    one = AllInOneTestDataset(dict(setting="three-task", dataroot=str(test), task="derain", max_images=1))
    assert len(one) == 1


def test_test_dataset_on_the_constyle_v2_suite(tmp_path):
    suite = make_constyle_v2_suite(tmp_path, n=2)
    ds = AllInOneTestDataset(dict(setting="constyle-v2", dataroot=str(suite), task="live1_20"))
    item = ds[1]
    assert item["lq_path"].endswith("photo2.jpg") and item["gt_path"].endswith("photo2.bmp")
    assert item["gt"].shape[1] % 32 == 0 and item["gt"].shape[2] % 32 == 0
    with pytest.raises(OptionError, match="did you mean 'sots'"):
        AllInOneTestDataset(dict(setting="constyle-v2", dataroot=str(suite), task="sost"))
    with pytest.raises(OptionError, match="not a constyle-v2 test task"):
        AllInOneTestDataset(dict(setting="constyle-v2", dataroot=str(suite), task="derain"))


# --------------------------------------------------------------------------------------------
# Through the trainers' registries
# --------------------------------------------------------------------------------------------
def test_a_test_dataset_reads_only_its_own_task(tmp_path):
    """A validation set of one task needs that task's folders only: a root without SOTS serves derain and the
    BSD68 tasks (check_layout, as the trainers call it, included); dehaze is refused, naming the folder."""
    test = make_three_task(tmp_path, n=1)[1]
    shutil.rmtree(test / "dehaze")
    for task in ("derain", "denoise_25"):
        opt = dict(setting="three-task", dataroot=str(test), task=task)
        AllInOneTestDataset.check_layout(opt)
        assert len(AllInOneTestDataset(opt)) == 1
    for build in (AllInOneTestDataset.check_layout, AllInOneTestDataset):
        with pytest.raises(LayoutError, match=f"no folder {test / 'dehaze'}"):
            build(dict(setting="three-task", dataroot=str(test), task="dehaze"))


def test_both_build_through_basicsr(three):
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    import basicsr  # noqa: F401
    from basicsr.data import build_dataset
    from basicsr.utils.registry import DATASET_REGISTRY

    from constyle_plugin.integrations.basicsr import check_option_keys

    _, train, test = three
    assert DATASET_REGISTRY.get("AllInOneTrainDataset") is AllInOneTrainDataset
    assert DATASET_REGISTRY.get("AllInOneTestDataset") is AllInOneTestDataset
    train_opt = dict(name="allinone", type="AllInOneTrainDataset", phase="train", scale=1, setting="three-task",
                     dataroot=str(train), gt_size=32, use_hflip=True, use_rot=True, repeat={"derain": 2},
                     io_backend={"type": "disk"}, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    val_opt = dict(name="SOTS", type="AllInOneTestDataset", phase="val", scale=1, setting="three-task",
                   dataroot=str(test), task="dehaze", io_backend={"type": "disk"})
    ds = build_dataset(train_opt)
    assert isinstance(ds, AllInOneTrainDataset) and ds[0]["gt"].shape == (3, 32, 32)
    val = build_dataset(val_opt)
    assert isinstance(val, AllInOneTestDataset) and len(val) == 2
    # the `basicsr` command's option check accepts every declared key, and names a misspelt one
    opt = {"model_type": "ConStyleSRModel", "is_train": True, "network_g": {"type": "NAFNet"},
           "datasets": {"train": train_opt, "val": val_opt}}
    check_option_keys(opt, warn=lambda message: None)
    opt["datasets"]["train"] = dict(train_opt, repaet=3)
    with pytest.raises(OptionError, match="did you mean 'repeat'"):
        check_option_keys(opt, warn=lambda message: None)


def test_both_build_through_mmengine(three):
    pytest.importorskip("mmengine")
    from mmengine.dataset import pseudo_collate

    from constyle_plugin.integrations.mmengine import DATASETS

    _, train, test = three
    for name, inner in (("AllInOneTrainDataset", AllInOneTrainDataset), ("AllInOneTestDataset", AllInOneTestDataset)):
        assert set(DATASETS.get(name).OPTIONS) == inner.OPTIONS  # every option of the class, as a keyword
    ds = DATASETS.build(dict(type="AllInOneTrainDataset", setting="three-task", dataroot=str(train), gt_size=32,
                             repeat=1))
    sample = ds[0]
    assert sample["inputs"].shape == (3, 32, 32) and sample["data_samples"].gt_img.shape == (3, 32, 32)
    assert sample["data_samples"].metainfo["task"] == "denoise_15"
    assert ds.metainfo["tasks"] == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    batch = pseudo_collate([ds[i] for i in range(3)])
    assert len(batch["inputs"]) == 3
    val = DATASETS.build(dict(type="AllInOneTestDataset", setting="three-task", dataroot=str(test), task="derain"))
    item = val[0]
    assert item["data_samples"].metainfo["task"] == "derain"
    assert item["inputs"].shape == item["data_samples"].gt_img.shape
    with pytest.raises(TypeError, match="did you mean 'repeat'"):
        DATASETS.build(dict(type="AllInOneTrainDataset", setting="three-task", dataroot=str(train), repaet=1))
    with pytest.raises(LayoutError, match="training layout"):
        DATASETS.build(dict(type="AllInOneTestDataset", setting="three-task", dataroot=str(train), task="derain"))
