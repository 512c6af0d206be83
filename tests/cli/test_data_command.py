"""``constyle data check / prepare`` on miniature copies of the standard sets as their repositories ship
them (IRCNN's CBSD68, PreNet's Rain100L test and RainTrainL, BSDS500's train / test, DnCNN's LIVE1), checked
against a manifest written in the test for these files: the sets are laid out with links in the layouts the
benchmark readers accept, with list files; a modified copy has each change named (recompressed, rotated,
resized) and its missing file named with where to get it; archives are unpacked; where links fail, hard
links, then a one-line refusal that suggests --copy."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import pytest

from constyle_plugin.data import standard_sets
from constyle_plugin.data.benchmark_layouts import benchmark_test_sets, benchmark_train_pairs
from constyle_plugin.data.standard_sets import image_record

from cli_runs import run_cli
from layouts import RAIN, picture, write

# set -> (folder under the downloads, {file name in the set: (file, role)})
CBSD68 = ["101085.png", "101087.png", "102061.png", "103070.png"]


def _downloads(root: Path) -> dict:
    """The miniature downloads, and the manifest sets that describe them."""
    files = {}

    def add(key: str, base: Path, name: str, role: str, img, quality: int = 95) -> None:
        path = write(base / name, img, quality=quality)
        files.setdefault(key, {})[name] = {"role": role, **image_record(path)}

    for i, name in enumerate(CBSD68):
        add("CBSD68", root / "IRCNN/testsets/CBSD68", name, "gt", picture(i, (64, 96) if i % 2 else (96, 64)))
    rain = root / "PreNet/datasets/test/Rain100L"
    for i in range(3):
        clean = picture(10 + i, (72, 88))
        add("Rain100L", rain, f"norain-{i + 1:03d}.png", "gt", clean)
        add("Rain100L", rain, f"rainy/rain-{i + 1:03d}.png", "lq", RAIN(clean, i))
    for i, sub in enumerate(("train", "train", "test")):
        add("BSD400", root / "BSR/BSDS500/data/images", f"{sub}/{100 + i}.jpg", "gt", picture(20 + i, (80, 64)))
    for i, name in enumerate(("bikes.bmp", "caps.bmp", "womanhat.bmp")):
        add("LIVE1", root / "DnCNN/testsets/LIVE1", name, "gt", picture(30 + i, (64, 80)))
    train = root / "PreNet/datasets/train/RainTrainL"
    for n in (1, 2):
        clean = picture(40 + n, (64, 64))
        write(train / f"norain-{n}.png", clean)
        write(train / f"rain-{n}.png", RAIN(clean, 40 + n))
    return {k: {"source": f"miniature {k}@test", "files": v} for k, v in files.items()}


@pytest.fixture()
def downloads(tmp_path, monkeypatch):
    root = tmp_path / "downloads"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "sets": _downloads(root)}))
    monkeypatch.setattr(standard_sets, "MANIFEST", manifest)
    standard_sets.load_manifest.cache_clear()
    yield root
    standard_sets.load_manifest.cache_clear()


def test_prepare_lays_out_the_sets_with_links_and_list_files(downloads, tmp_path, capsys):
    root = tmp_path / "data"
    code, out, _ = run_cli(capsys, "data", "prepare", str(downloads), "--root", str(root))
    assert code == 0, out
    for title in ("CBSD68", "Rain100L test", "BSD400", "LIVE1"):
        assert any(line.startswith(title) and "the standard copy" in line for line in out.splitlines()), (title, out)
    assert "RainTrainL (rain-N.png / norain-N.png, 200 pairs): 2 pairs found" in out
    assert "SOTS outdoor: not verifiable here; goes to test/dehaze" in out  # what is missing, with its source

    link = root / "test/derain/Rain100L/input/rain-002.png"
    assert link.is_symlink() and os.path.samefile(link, downloads / "PreNet/datasets/test/Rain100L/rainy/rain-002.png")
    assert sorted(p.name for p in (root / "test/denoise/bsd68").iterdir()) == sorted(CBSD68)
    assert sorted(p.name for p in (root / "Test_small/noise_small").iterdir()) == sorted(CBSD68)
    assert sorted(p.name for p in (root / "Train/Denoise").iterdir()) == ["100.jpg", "101.jpg", "102.jpg"]
    assert sorted(p.name for p in (root / "LIVE1").iterdir()) == ["bikes.bmp", "caps.bmp", "womanhat.bmp"]
    assert (root / "data_dir/noisy/denoise.txt").read_text().split() == ["100.jpg", "101.jpg", "102.jpg"]
    assert (root / "data_dir/rainy/rainTrain.txt").read_text().split() == ["rainy/rain-1.png", "rainy/rain-2.png"]

    # the readers take what was laid out: the test sets present (SOTS absent) and the training pairs with the lists
    tasks = benchmark_test_sets("three-task", root, skip_absent=True)
    assert [t.key for t in tasks] == ["derain", "denoise_15", "denoise_25", "denoise_50"]
    assert [i.lq.name for i in tasks[0].images] == ["rain-001.png", "rain-002.png", "rain-003.png"]
    pairs = benchmark_train_pairs("three-task", root, tasks=["denoise_25", "derain"], lists=root / "data_dir")
    assert len(pairs["denoise_25"]) == 3 and [p.gt.name for p in pairs["derain"]] == ["norain-1.png", "norain-2.png"]

    code, out, _ = run_cli(capsys, "data", "prepare", str(downloads), "--root", str(root))  # again: nothing changes
    assert code == 0 and f"{root / 'LIVE1'}: 3 kept" in out
    code, out, _ = run_cli(capsys, "data", "check", str(root))  # the prepared root checks as standard too
    assert code == 0 and out.count("the standard copy") == 4


def test_check_names_what_differs_in_a_modified_copy_and_what_is_missing(downloads, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(downloads / "IRCNN/testsets/CBSD68", copy / "CBSD68")
    shutil.copytree(downloads / "DnCNN/testsets/LIVE1", copy / "LIVE1")
    folder = copy / "CBSD68"
    img = cv2.imread(str(folder / "101085.png"))
    cv2.imwrite(str(folder / "101085.jpg"), img, [int(cv2.IMWRITE_JPEG_QUALITY), 40])  # recompressed as JPEG
    (folder / "101085.png").unlink()
    cv2.imwrite(str(folder / "101087.png"), cv2.rotate(cv2.imread(str(folder / "101087.png")), cv2.ROTATE_90_CLOCKWISE))
    small = cv2.resize(cv2.imread(str(folder / "102061.png")), (32, 48), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "102061.png"), small)
    (folder / "103070.png").unlink()

    code, out, _ = run_cli(capsys, "data", "check", str(copy), "--report", str(tmp_path / "report.json"))
    assert code == 1
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("CBSD68"))
    assert "3 of 4 files found (3 differ" in head
    detail = {line.split(" (")[0].strip(): line for line in lines if line.startswith("  10")}
    assert "recompressed" in detail["101085.png"] and str(folder / "101085.jpg") in detail["101085.png"]
    assert "rotated by 90 degrees clockwise" in detail["101087.png"]
    assert "resized to 32x48 from 64x96" in detail["102061.png"]
    assert any(line.startswith("  missing 1: 103070.png; get them from cszn/IRCNN") for line in lines)
    assert any(line.startswith("LIVE1") and "the standard copy" in line for line in lines)
    assert any(line.startswith("Rain100L test (100 pairs): missing; get it from Arvaesri/PreNet") for line in lines)
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["name"]: r["status"] for r in report["CBSD68"]} == {
        "101085.png": "differs", "101087.png": "differs", "102061.png": "differs", "103070.png": "missing"}


def test_prepare_unpacks_an_archive(downloads, tmp_path, capsys):
    archive = tmp_path / "CBSD68.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (downloads / "IRCNN/testsets/CBSD68").iterdir():
            z.write(f, f"CBSD68/{f.name}")
    root = tmp_path / "data"
    code, out, _ = run_cli(capsys, "data", "prepare", str(archive), "--root", str(root), "--no-progress")
    assert code == 0 and f"unpacked {archive} into {root / 'downloads' / 'CBSD68'}" in out
    link = root / "test/denoise/bsd68/101085.png"
    assert link.is_symlink() and Path(os.readlink(link)) == (root / "downloads/CBSD68/CBSD68/101085.png").resolve()
    assert any(line.startswith("Rain100L test (100 pairs): missing") for line in out.splitlines())


def test_where_links_fail_hard_links_then_a_refusal_that_suggests_copy(downloads, tmp_path, capsys, monkeypatch):
    src = downloads / "DnCNN/testsets/LIVE1"

    def no_symlink(*args, **kwargs):
        raise OSError(1314, "A required privilege is not held by the client")  # Windows without Developer Mode

    monkeypatch.setattr(os, "symlink", no_symlink)
    code, out, _ = run_cli(capsys, "data", "prepare", str(src), "--root", str(tmp_path / "a"))
    assert code == 0 and "3 hard-linked" in out
    assert os.path.samefile(tmp_path / "a/LIVE1/bikes.bmp", src / "bikes.bmp")
    assert not (tmp_path / "a/LIVE1/bikes.bmp").is_symlink()

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    code, _, err = run_cli(capsys, "data", "prepare", str(src), "--root", str(tmp_path / "b"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "run again with --copy" in err
    code, out, _ = run_cli(capsys, "data", "prepare", str(src), "--root", str(tmp_path / "c"), "--copy")
    copied = tmp_path / "c/LIVE1/bikes.bmp"
    assert code == 0 and "3 copied" in out and not copied.is_symlink()
    assert not os.path.samefile(copied, src / "bikes.bmp")
    assert copied.read_bytes() == (src / "bikes.bmp").read_bytes()


def test_prepare_refuses_to_replace_another_file_or_to_lay_out_nothing(downloads, tmp_path, capsys):
    root = tmp_path / "data"
    write(root / "LIVE1" / "bikes.bmp", picture(7, (64, 80)))
    code, _, err = run_cli(capsys, "data", "prepare", str(downloads / "DnCNN"), "--root", str(root))
    assert code == 2 and f"{root / 'LIVE1' / 'bikes.bmp'} exists and is another file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "data", "prepare", str(empty), "--root", str(tmp_path / "data2"))
    assert code == 2 and "no standard set found" in err
    code, _, err = run_cli(capsys, "data", "check", str(tmp_path / "nowhere"))
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such file or folder" in err
