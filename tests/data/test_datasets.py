"""Datasets (MixDegradationDataset, ConStylePretrainDataset) and the offline sample photos."""
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from constyle_plugin.data import degradations as D
from constyle_plugin.data import samples as S
from constyle_plugin.data.datasets import (BadImageWarning, ConStylePretrainDataset,
                                      MixDegradationDataset, read_image)


def _write(path, rgb_u8):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def photos():
    return dict(S.sample_photos(["astronaut", "coffee", "brick", "chelsea"]))


@pytest.fixture
def image_folder(tmp_path, photos):
    """Three readable crops, one smaller than gt_size, and two files that are not images."""
    folder = tmp_path / "clean"
    _write(folder / "astronaut.png", photos["astronaut"][:90, :110])
    _write(folder / "coffee.jpg", photos["coffee"][100:180, 200:300])
    _write(folder / "brick.png", photos["brick"][:40, :50])  # smaller than gt_size 64
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"this is not a PNG at all")
    return folder


def _mix(folder, **opt):
    base = {"dataroot_gt": str(folder), "gt_size": 64, "phase": "train"}
    base.update(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        return MixDegradationDataset(base)


# ---------------------------------------------------------------------------- sample photos

def test_sample_photos_are_rgb_uint8_and_complete():
    photos = S.sample_photos()
    names = [n for n, _ in photos]
    assert names == list(S.SAMPLE_NAMES)  # every listed photo loads in this environment
    for name, img in photos:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 150, name
        assert not img.flags.writeable
    gray = dict(photos)["camera"]
    assert np.array_equal(gray[..., 0], gray[..., 2])
    with pytest.raises(ValueError, match="nope"):
        S.sample_photos(["nope"])


def test_export_sample_photos_is_idempotent(tmp_path):
    paths = S.export_sample_photos(tmp_path / "sp", names=["coffee", "camera"])
    assert [p.name for p in paths] == ["coffee.png", "camera.png"]
    img = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(img, dict(S.sample_photos(["coffee"]))["coffee"])  # lossless
    mtime = os.stat(paths[0]).st_mtime_ns
    paths[1].write_bytes(b"kept as is")
    again = S.export_sample_photos(tmp_path / "sp", names=["coffee", "camera"])
    assert again == paths and os.stat(paths[0]).st_mtime_ns == mtime
    assert paths[1].read_bytes() == b"kept as is"
    assert not [p for p in (tmp_path / "sp").iterdir() if p.name.startswith(".")]  # no temp left


def test_export_sample_classes_layout(tmp_path):
    paths = S.export_sample_classes(tmp_path / "cls", crops_per_photo=3, crop_size=48,
                                    names=["rocket", "moon"])
    assert sorted(p.relative_to(tmp_path / "cls").as_posix() for p in paths) == [
        "moon/0.png", "moon/1.png", "moon/2.png", "rocket/0.png", "rocket/1.png", "rocket/2.png"]
    crops = [cv2.imread(str(p)) for p in paths]
    assert all(c.shape == (48, 48, 3) for c in crops)
    assert not np.array_equal(crops[0], crops[1])  # different positions
    again = S.export_sample_classes(tmp_path / "cls2", crops_per_photo=3, crop_size=48,
                                    names=["rocket", "moon"])
    assert all(np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))
               for a, b in zip(paths, again))  # same tree on every run


def test_split_by_photo():
    names = [f"p{i}" for i in range(14)]
    train, val = S.split_by_photo(names, 0.2, seed=1)
    assert not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert len(val) == 3
    assert S.split_by_photo(list(reversed(names)) + names[:2], 0.2, seed=1) == (train, val)
    assert S.split_by_photo(names, 0.2, seed=2) != (train, val)
    assert S.split_by_photo(["a", "b"], 0.01) == (["a"], ["b"]) or \
        S.split_by_photo(["a", "b"], 0.01) == (["b"], ["a"])
    assert S.split_by_photo(["a", "b"], 0.0) == (["a", "b"], [])
    with pytest.raises(ValueError):
        S.split_by_photo(names, 1.0)


# ---------------------------------------------------------------------------- MixDegradation

def test_mix_samples_keys_shapes_ranges(image_folder):
    torch.manual_seed(0)  # training draws follow torch's generator: the same samples every run
    ds = _mix(image_folder, repeat=4)
    assert len(ds) == 3 * 4
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"lq", "gt", "lq_path", "gt_path", "degradation"}
        for k in ("lq", "gt"):
            assert s[k].shape == (3, 64, 64) and s[k].dtype == torch.float32
            assert 0 <= s[k].min() and s[k].max() <= 1
        assert s["degradation"] in D.ALL_IN_ONE
        assert s["lq_path"] == s["gt_path"] and os.path.isfile(s["gt_path"])
        assert not torch.equal(s["lq"], s["gt"])
        seen.add(os.path.basename(s["gt_path"]))
    assert seen == {"astronaut.png", "coffee.jpg", "brick.png"}
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["lq"].shape == (4, 3, 64, 64) and len(batch["degradation"]) == 4


def test_mix_bad_files_warn_once_each_at_startup(image_folder):
    with pytest.warns(BadImageWarning) as record:
        ds = MixDegradationDataset({"dataroot_gt": str(image_folder), "gt_size": 64})
    messages = [str(r.message) for r in record if issubclass(r.category, BadImageWarning)]
    assert sum("notes.txt" in m for m in messages) == 1
    assert sum("broken.png" in m for m in messages) == 1
    assert len(messages) == 2
    assert len(ds.paths) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)  # nothing more during the epoch
        for i in range(len(ds)):
            ds[i]


def test_mix_truncated_file_is_skipped_mid_epoch(tmp_path, photos):
    folder = tmp_path / "imgs"
    _write(folder / "a.png", photos["coffee"][:80, :80])
    _write(folder / "b.png", photos["chelsea"][:80, :80])
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[:len(data) // 3])  # valid header, truncated body
    ds = _mix(folder)
    with pytest.warns(BadImageWarning, match="b.png"):
        s = ds[1]
    assert s["gt_path"].endswith("a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)
        assert ds[1]["gt_path"].endswith("a.png")  # warned once, remembered


@pytest.mark.parametrize("name", list(D.ALL_IN_ONE))
def test_mix_degradation_probabilities(image_folder, name):
    weights = {n: 0.0 for n in D.ALL_IN_ONE}
    weights[name] = 1.0
    torch.manual_seed(0)  # training draws follow torch's generator: the same samples every run
    ds = _mix(image_folder, degradations=weights, repeat=2)
    samples = [ds[i] for i in range(len(ds))]
    assert {s["degradation"] for s in samples} == {name}
    for s in samples:  # each sample of this type really is degraded
        change = float((s["lq"] - s["gt"]).abs().mean())
        assert change > 1e-3, (name, os.path.basename(s["gt_path"]), change)


def test_mix_degradation_mixture_and_lists(image_folder):
    torch.manual_seed(0)  # training draws follow torch's generator
    ds = _mix(image_folder, degradations=["noise", "haze"], repeat=20)
    names = [ds[i]["degradation"] for i in range(len(ds))]
    assert set(names) == {"noise", "haze"}
    assert 15 < names.count("noise") < 45  # 60 draws at p = 0.5
    ds = _mix(image_folder, repeat=30)
    assert len({ds[i]["degradation"] for i in range(len(ds))}) == 8  # default: all eight
    with pytest.raises(ValueError, match="blur"):
        _mix(image_folder, degradations={"blur": 1})
    with pytest.raises(ValueError, match="positive sum"):
        _mix(image_folder, degradations={"noise": 0})


def test_mix_val_is_deterministic_centre_crop(image_folder):
    opt = {"phase": "val", "repeat": 3}
    a, b = _mix(image_folder, **opt), _mix(image_folder, **opt)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["lq"], sb["lq"]) and torch.equal(sa["gt"], sb["gt"])
        assert sa["degradation"] == sb["degradation"]
    # the same photo at another index gets another degradation draw
    assert not torch.equal(a[0]["lq"], a[3]["lq"])
    # gt is the centre crop of the file
    full = read_image(image_folder / "astronaut.png")  # 90 x 110
    np.testing.assert_allclose(a[0]["gt"].permute(1, 2, 0).numpy(),
                               full[13:77, 23:87], atol=1e-6)
    other_seed = _mix(image_folder, seed=1, **opt)
    assert any(not torch.equal(a[i]["lq"], other_seed[i]["lq"]) for i in range(len(a)))
    full_mode = _mix(image_folder, phase="val", val_crop="full")
    assert full_mode[0]["gt"].shape == (3, 90, 110)


def test_mix_small_images_are_reflect_padded(image_folder):
    ds = _mix(image_folder, phase="val", degradations=["noise"])
    brick = [i for i in range(len(ds)) if ds.paths[i].name == "brick.png"][0]
    gt = ds[brick]["gt"].permute(1, 2, 0).numpy()
    src = read_image(image_folder / "brick.png")  # 40 x 50, padded to 64 x 64
    assert gt.shape == (64, 64, 3)
    np.testing.assert_allclose(gt[:40, :50], src, atol=1e-6)
    np.testing.assert_allclose(gt[40:64, :50], src[38:14:-1], atol=1e-6)  # mirrored rows


def test_mix_photos_option_holds_out(image_folder):
    ds = _mix(image_folder, photos=["coffee", "brick"])
    assert sorted(p.name for p in ds.paths) == ["brick.png", "coffee.jpg"]
    with pytest.raises(ValueError, match="photos"):
        _mix(image_folder, photos=["coffee", "zebra"])


def test_mix_empty_folder_error_names_option(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="dataroot_gt") as err:
        MixDegradationDataset({"dataroot_gt": str(empty), "gt_size": 64})
    assert str(empty) in str(err.value)
    (empty / "junk.png").write_bytes(b"junk")
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match="dataroot_gt"):
        MixDegradationDataset({"dataroot_gt": str(empty), "gt_size": 64})
    with pytest.raises(FileNotFoundError, match="dataroot_gt"):
        MixDegradationDataset({"dataroot_gt": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="sample_dir"):
        MixDegradationDataset({"dataroot_gt": "sample_photos"})


def test_mix_rejects_bad_options(image_folder):
    with pytest.raises(ValueError, match="scale"):
        _mix(image_folder, scale=4)
    with pytest.raises(ValueError, match="gt_size"):
        _mix(image_folder, gt_size=0)
    with pytest.raises(ValueError, match="io_backend"):
        _mix(image_folder, io_backend={"type": "lmdb"})


def test_mix_sample_photos_mode(tmp_path):
    ds = MixDegradationDataset({"dataroot_gt": "sample_photos", "sample_dir": str(tmp_path / "sp"),
                                "gt_size": 48, "photos": ["coffee", "moon"], "phase": "val"})
    assert sorted(p.name for p in ds.paths) == ["coffee.png", "moon.png"]
    assert (tmp_path / "sp" / "astronaut.png").is_file()  # the whole set was exported
    assert ds[0]["lq"].shape == (3, 48, 48)


# ---------------------------------------------------------------------------- pre-training

@pytest.fixture
def class_tree(tmp_path, photos):
    root = tmp_path / "tree"
    for cls, name in (("b_coffee", "coffee"), ("a_astronaut", "astronaut"),
                      ("c_brick", "brick")):
        img = photos[name]
        _write(root / cls / "0.png", img[:120, :150])
        _write(root / cls / "1.jpg", img[-100:, -130:])
    (root / "c_brick" / "readme.md").write_text("x")
    (root / "d_empty").mkdir()
    return root


def _pretrain(root, **opt):
    base = {"dataroot": str(root), "resize": 64, "crop_size": 48}
    base.update(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        return ConStylePretrainDataset(base)


def test_pretrain_labels_follow_class_folders(class_tree):
    ds = _pretrain(class_tree, weather_prob=0.0)
    assert ds.classes == ["a_astronaut", "b_coffee", "c_brick", "d_empty"]
    assert len(ds) == 6 and ds.num_classes == 4
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"query", "key", "label", "weather", "path"}
        assert s["label"] == ds.classes.index(os.path.basename(os.path.dirname(s["path"])))
        for k in ("query", "key"):
            assert s[k].shape == (3, 48, 48) and 0 <= s[k].min() and s[k].max() <= 1
        assert s["weather"] is False
        assert not torch.equal(s["query"], s["key"])  # two independent crops


def test_pretrain_weather_probability(class_tree):
    torch.manual_seed(0)
    ds = _pretrain(class_tree, weather_prob=1.0)
    s = ds[0]
    assert s["weather"] is True
    assert s["query"].mean() > s["key"].mean()  # snow and the grey blend brighten
    ds = _pretrain(class_tree, weather_prob=0.4, repeat=40)
    flags = [ds[i]["weather"] for i in range(0, len(ds), 2)]
    assert 0.2 < np.mean(flags) < 0.6
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["weather"].dtype == torch.bool and batch["label"].shape == (4,)


def test_pretrain_val_deterministic(class_tree):
    a = _pretrain(class_tree, phase="val", weather_prob=0.5)
    b = _pretrain(class_tree, phase="val", weather_prob=0.5)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["query"], sb["query"]) and torch.equal(sa["key"], sb["key"])
        assert sa["weather"] == sb["weather"]


def test_pretrain_bad_files_and_empty_tree(class_tree, tmp_path):
    with pytest.warns(BadImageWarning) as record:
        ConStylePretrainDataset({"dataroot": str(class_tree)})
    messages = [str(r.message) for r in record]
    assert sum("readme.md" in m for m in messages) == 1
    assert sum("d_empty" in m for m in messages) == 1
    empty = tmp_path / "empty_tree"
    (empty / "cls").mkdir(parents=True)
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match="dataroot") as err:
        ConStylePretrainDataset({"dataroot": str(empty)})
    assert str(empty) in str(err.value)


def test_pretrain_sample_classes_mode(tmp_path):
    ds = ConStylePretrainDataset({"dataroot": "sample_classes", "sample_dir": str(tmp_path / "c"),
                                  "crops_per_photo": 2, "sample_crop_size": 64, "resize": 64,
                                  "crop_size": 32})
    assert ds.classes == sorted(S.SAMPLE_NAMES) and len(ds) == 2 * len(S.SAMPLE_NAMES)
    s = ds[5]
    assert s["label"] == ds.classes.index(os.path.basename(os.path.dirname(s["path"])))
    assert s["query"].shape == (3, 32, 32)


def test_mix_extension_check_defers_bad_files_to_load_time(image_folder):
    with pytest.warns(BadImageWarning) as record:
        ds = MixDegradationDataset({"dataroot_gt": str(image_folder), "gt_size": 64,
                                    "check_images": "extension", "phase": "val"})
    assert [m for m in map(str, (r.message for r in record)) if "broken.png" in m] == []
    assert len(ds.paths) == 4  # broken.png passes the name check
    broken = [i for i, p in enumerate(ds.paths) if p.name == "broken.png"][0]
    with pytest.warns(BadImageWarning, match="broken.png"):
        s = ds[broken]
    assert not s["gt_path"].endswith("broken.png")
    with pytest.raises(ValueError, match="check_images"):
        _mix(image_folder, check_images="full")


def test_pretrain_class_folders_are_searched_recursively(class_tree, photos):
    _write(class_tree / "a_astronaut" / "more" / "2.png", photos["astronaut"][200:300, :100])
    ds = _pretrain(class_tree)
    nested = [i for i, p in enumerate(ds.paths) if p.parent.name == "more"]
    assert len(nested) == 1 and ds.labels[nested[0]] == 0
    assert ds[nested[0]]["label"] == 0
