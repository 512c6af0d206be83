"""Stage-1 data from real images: ``photo_folders`` with a held-out split, ``real_degraded`` images by
type, and ``degradation_ranges`` of the generators (miniature folders made here)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from constyle_plugin.data import degradations as deg
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.errors import OptionError
from constyle_plugin.data.pretrain_sources import holdout_split

ensure_basicsr_importable()
from constyle_plugin.data.datasets import ConStylePretrainDataset  # noqa: E402

NAMES = list(deg.ALL_IN_ONE)


def _photos(folder: Path, n: int, size: int = 48, start: int = 60) -> Path:
    """``n`` flat pictures of distinct grey levels (``start``, ``start + 10``, ...)."""
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.full((size, size, 3), start + 10 * i, np.uint8))
    return folder


def _striped(folder: Path, n: int, size: int = 48) -> Path:
    """``n`` pictures of thin bright vertical lines on black: 'real rain' no generator makes."""
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[:, i % 3::6] = 255
        img[:, i % 3 + 1::6] = 255
        cv2.imwrite(str(folder / f"rain-{i}.png"), img)
    return folder


def _opt(**kw):
    return {"resize": 48, "crop_size": 32, "rrc_scale": [0.5, 1.0], "phase": "val", **kw}


def test_holdout_split_holds_out_every_nth_sorted_file_and_the_parts_partition_the_list():
    paths = [Path(f"{c}.png") for c in "jihgfedcba"]
    train, held = holdout_split(paths, 4, "train"), holdout_split(paths, 4, "holdout")
    assert held == [Path("a.png"), Path("e.png"), Path("i.png")]
    assert sorted(train + held) == sorted(paths) and not set(train) & set(held)
    assert holdout_split(paths, 0, "holdout") == [] and holdout_split(paths, 4, "all") == sorted(paths)


def test_photo_folders_make_each_photo_a_class_and_the_splits_do_not_share_a_photo(tmp_path):
    folder = _photos(tmp_path / "bsd", 10)
    train = ConStylePretrainDataset(_opt(photo_folders=str(folder), holdout_every=5, split="train"))
    held = ConStylePretrainDataset(_opt(photo_folders=[str(folder)], holdout_every=5, split="holdout"))
    assert (len(train), len(held)) == (8, 2)
    assert train.num_classes == 8 and sorted(set(train.labels)) == list(range(8))
    assert not {Path(p).name for p in train.paths} & {Path(p).name for p in held.paths}
    # a sample is a crop of its own photo: the flat grey level says which one
    for i in range(len(held)):
        s = held[i]
        level = round(float(s["key"].mean()) * 255)
        assert level == 60 + 10 * int(Path(s["path"]).stem)


def test_real_degraded_images_replace_the_generator_for_their_type_with_the_given_probability(tmp_path):
    photos = _photos(tmp_path / "bsd", 4)
    rain = _striped(tmp_path / "rainy", 3)
    ds = ConStylePretrainDataset(_opt(photo_folders=str(photos), query_degradations=["rain", "low_light"],
                                      key_degradation="same", real_degraded={"rain": str(rain)},
                                      real_degraded_prob=0.5, repeat=64))
    assert len(ds) == 4 * 64  # the epoch runs over the clean photos
    real = generated = 0
    for i in range(len(ds)):
        s = ds[i]
        name = NAMES[s["degradation_label"]]
        from_real = Path(s["path"]).parent == rain
        if from_real:
            real += 1
            assert name == "rain"
            # both views are crops of the same real image: black with bright lines, nothing grey
            for view in (s["query"], s["key"]):
                assert float(view.max()) > 0.5 and float((view < 0.05).float().mean()) > 0.3
            assert s["label"] >= 4  # classes of their own, after the photos
        elif name == "rain":
            generated += 1
            assert s["label"] < 4
    assert real > 0 and generated > 0
    assert 0.3 < real / (real + generated) < 0.7


def test_degradation_ranges_set_the_generators_parameters(tmp_path):
    photos = _photos(tmp_path / "bsd", 2, start=100)

    def noise_levels(ranges):
        ds = ConStylePretrainDataset(_opt(photo_folders=str(photos), query_degradations=["noise"],
                                          degradation_ranges=ranges, repeat=8))
        return [float((ds[i]["query"] - ds[i]["key"]).std()) * 255 for i in range(len(ds))]

    low = noise_levels({"noise": {"sigma": [2, 3]}})
    high = noise_levels({"noise": {"sigma": [45.0, 50.0]}})
    assert max(low) < 4 and min(high) > 40
    # without a range the generator keeps its own draw (sigma ~ U(10, 50))
    default = noise_levels(None)
    assert min(default) > 8 and max(default) < 52


@pytest.mark.parametrize("extra, key, words", [
    ({"degradation_ranges": {"rian": {"density": [0, 1]}}}, "degradation_ranges.rian", "did you mean 'rain'"),
    ({"degradation_ranges": {"rain": {"strenght": [0, 1]}}}, "degradation_ranges.rain.strenght",
     "did you mean 'strength'"),
    ({"degradation_ranges": {"rain": {"strength": [0.9, 0.1]}}}, "degradation_ranges.rain.strength", "low <= high"),
    ({"degradation_ranges": {"jpeg": {"quality": [10, 20]}}}, "degradation_ranges", "never drawn"),
    ({"real_degraded": {"rain": "MISSING"}}, None, "not a folder"),
    ({"real_degraded_prob": 1.5}, "real_degraded_prob", "[0, 1]"),
    ({"holdout_every": 1}, "holdout_every", ">= 2"),
    ({"split": "hold"}, "split", "did you mean 'holdout'"),
])
def test_bad_real_data_options_name_the_option(tmp_path, extra, key, words):
    photos = _photos(tmp_path / "bsd", 2)
    opt = _opt(photo_folders=str(photos), query_degradations=["rain"], **extra)
    with pytest.raises((OptionError, FileNotFoundError)) as info:
        ConStylePretrainDataset(opt)
    assert words in str(info.value)
    if key is not None:
        assert isinstance(info.value, OptionError) and info.value.key == key


def test_a_photo_folder_without_images_is_refused_by_name(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OptionError, match="empty holds no readable image"):
        ConStylePretrainDataset(_opt(photo_folders=str(empty)))


def test_the_real_options_file_reads_its_folders_and_keeps_the_holdout_out_of_training(tmp_path):
    import yaml

    root = Path(__file__).resolve().parents[2]
    opt = yaml.safe_load((root / "options" / "constyle_v2_pretrain_real.yml").read_text())
    photos = _photos(tmp_path / "bsd", 20)
    rain = _striped(tmp_path / "rain", 4)
    sets = {}
    for phase in ("train", "val"):
        d = dict(opt["datasets"][phase], photo_folders=str(photos), real_degraded={"rain": str(rain)},
                 resize=48, crop_size=32, phase=phase)  # BasicSR sets `phase` from the section
        d = {k: v for k, v in d.items() if k not in ("name", "type", "num_worker_per_gpu", "batch_size_per_gpu",
                                                     "dataset_enlarge_ratio", "prefetch_mode")}
        sets[phase] = ConStylePretrainDataset(d)
    train_files = set(map(str, sets["train"].paths))
    assert train_files and not train_files & set(map(str, sets["val"].paths))


def test_jpeg_shift_moves_the_block_grid_and_zero_keeps_the_generator_unchanged():
    rng = np.random.default_rng(0)
    img = np.clip(cv2.GaussianBlur(rng.random((64, 64, 3)).astype(np.float32), (0, 0), 2) * 2 - 0.5, 0, 1)

    def block_edges(out: np.ndarray) -> np.ndarray:
        """Mean jump between neighbouring columns, by column position modulo 8."""
        jump = np.abs(np.diff(out.mean(axis=2), axis=1)).mean(axis=0)
        return np.array([jump[k::8].mean() for k in range(8)])  # jump k: between columns k and k + 1 (mod 8)

    plain = deg.jpeg(img, np.random.default_rng(1), quality=10)
    assert np.array_equal(plain, deg.jpeg(img, np.random.default_rng(1), quality=10, shift_y=0, shift_x=0))
    assert int(np.argmax(block_edges(plain))) == 7  # block boundary between columns 7 and 8
    shifted = deg.jpeg(img, np.random.default_rng(1), quality=10, shift_x=3)
    assert shifted.shape == img.shape
    # the grid starts 3 px left of the corner: block boundaries fall after column 4 (8 - 3 - 1)
    assert int(np.argmax(block_edges(shifted))) == 4
    with pytest.raises(ValueError, match="0..7"):
        deg.jpeg(img, rng, quality=10, shift_y=8)
