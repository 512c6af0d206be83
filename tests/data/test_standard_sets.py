"""The standard sets' manifest and the comparison of a user's file with its record: each kind of change
(recompressed, resized, rotated, flipped, grey, another picture) named as such, the standard file and a
re-saved copy with the same pixels accepted; the packaged manifest covers the four sets it promises."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from constyle_plugin.data.standard_sets import STANDARD_SETS, compare_file, image_record, load_manifest

from layouts import picture, write


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    """A 96 x 136 photo crop saved as PNG, and its manifest record."""
    path = write(tmp_path_factory.mktemp("standard") / "photo.png", picture(0, (96, 136)))
    return path, image_record(path)


def _bgr(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _variant(tmp_path: Path, standard, name: str, change) -> Path:
    out = tmp_path / name
    params = [int(cv2.IMWRITE_JPEG_QUALITY), 30] if out.suffix == ".jpg" else [int(cv2.IMWRITE_PNG_COMPRESSION), 9]
    assert cv2.imwrite(str(out), change(_bgr(standard[0])), params)
    return out


def test_the_standard_file_is_identical(standard):
    path, record = standard
    assert compare_file(record, path).status == "identical" and compare_file(record, path).standard


def test_a_resaved_copy_with_the_same_pixels_is_standard(standard, tmp_path):
    path, record = standard
    resaved = _variant(tmp_path, standard, "photo.png", lambda img: img)  # another zlib level: other bytes
    assert resaved.read_bytes() != path.read_bytes()
    verdict = compare_file(record, resaved)
    assert verdict.status == "same-pixels" and verdict.standard


@pytest.mark.parametrize("name,change,expected", [
    ("photo.jpg", lambda img: img, "recompressed"),
    ("photo.png", lambda img: cv2.resize(img, (68, 48), interpolation=cv2.INTER_AREA), "resized to 68x48 from 136x96"),
    ("photo.png", lambda img: cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), "rotated by 90 degrees clockwise"),
    ("photo.png", lambda img: cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE),
     "rotated by 90 degrees counter-clockwise"),
    ("photo.png", lambda img: cv2.rotate(img, cv2.ROTATE_180), "rotated by 180 degrees"),
    ("photo.png", lambda img: img[:, ::-1], "flipped left-right"),
    ("photo.png", lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), "grey instead of colour"),
    ("photo.png", lambda img: np.clip(img + np.random.default_rng(0).normal(0, 12, img.shape), 0, 255).astype(np.uint8),
     "noise or sharpening added"),
], ids=["recompressed", "resized", "rotated-cw", "rotated-ccw", "rotated-180", "flipped", "grey", "noise"])
def test_a_changed_copy_is_named(standard, tmp_path, name, change, expected):
    verdict = compare_file(standard[1], _variant(tmp_path, standard, name, change))
    assert verdict.status == "differs" and not verdict.standard
    assert verdict.detail.startswith(expected), verdict.detail


def test_a_rotated_and_resized_copy_says_both(standard, tmp_path):
    def change(img):
        return cv2.resize(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), (48, 68), interpolation=cv2.INTER_AREA)
    verdict = compare_file(standard[1], _variant(tmp_path, standard, "photo.png", change))
    assert "rotated by 90 degrees clockwise" in verdict.detail and "resized to 48x68 from 96x136" in verdict.detail


def test_another_picture_and_an_unreadable_file(standard, tmp_path):
    other = write(tmp_path / "other.png", picture(3, (96, 136)))
    verdict = compare_file(standard[1], other)
    assert verdict.status == "differs" and verdict.detail.startswith("another picture"), verdict.detail
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert compare_file(standard[1], broken).status == "unreadable"


def test_the_packaged_manifest_covers_the_four_sets():
    sets = load_manifest()
    counts = {key: len(spec["files"]) for key, spec in sets.items()}
    assert counts == {"CBSD68": 68, "Rain100L": 200, "BSD400": 400, "LIVE1": 29}
    roles = {name.split("/")[0] for name, r in sets["Rain100L"]["files"].items() if r["role"] == "lq"}
    assert roles == {"rainy"}
    for key, spec in sets.items():
        assert STANDARD_SETS[key].verifiable and "@" in spec["source"]  # the repository and commit read
        for record in spec["files"].values():
            assert len(record["sha256"]) == 64 and len(record["pixels"]) == 64 and len(record["thumb"]) == 128
            assert record["channels"] == 3 and record["height"] > 0 and record["width"] > 0
