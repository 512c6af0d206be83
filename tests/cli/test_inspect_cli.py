"""``constyle inspect`` on miniature data made here: a folder of photos noised strongly and photos darkened
strongly, a random prompter and a degradation head fitted here on other pictures (so the predictions are
known), the table, the JSON and the picture; a prompter without a head; inputs it refuses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin import ConStyleV2
from constyle_plugin.tools import inspection
from constyle_plugin.cli import main
from constyle_plugin.core.degradation_head import DegradationHead, head_path, save_degradation_head
from constyle_plugin.data.degradations import ALL_IN_ONE
from constyle_plugin.data.samples import dead_leaves, sample_photos

TYPES = list(ALL_IN_ONE)
KINDS = {"noisy": "noise", "dark": "low_light"}


def noisy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0, 0.25, x.shape), 0, 1).astype(np.float32)


def dark(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (0.12 * x ** 2.5).astype(np.float32)


def _png(path: Path, img: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(np.round(img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))


def _fit_head(prompter: ConStyleV2) -> DegradationHead:
    """A head taught noise against low light on dead-leaves pictures (none of the inspected photos): logistic
    regression on standardised z2, folded back into a head on the raw z2."""
    rng = np.random.default_rng(1)
    latents, labels = [], []
    for i in range(6):
        x = dead_leaves(64, np.random.default_rng([1, i])).astype(np.float32) / 255
        for make, kind in ((noisy, "noise"), (dark, "low_light")):
            latents.append(inspection.latent(prompter, make(x, rng)))
            labels.append(TYPES.index(kind))
    z, y = torch.tensor(np.stack(latents)), torch.tensor(labels)
    mean, std = z.mean(0), z.std(0) + 1e-8
    torch.manual_seed(0)
    fitted = torch.nn.Linear(128, len(TYPES))
    opt = torch.optim.Adam(fitted.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(fitted((z - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head = DegradationHead(TYPES)
    with torch.no_grad():
        head.weight.copy_(fitted.weight / std)
        head.bias.copy_(fitted.bias - (fitted.weight / std) @ mean)
    return head


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder of 6 images, prompter with its head, the same prompter without one)."""
    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    prompter = ConStyleV2().freeze()
    with_head = prompter.save_pretrained(root / "with_head" / "prompter.safetensors")
    save_degradation_head(_fit_head(prompter), with_head, prompter)
    without = root / "without_head" / "prompter.safetensors"
    without.parent.mkdir()
    shutil.copy(with_head, without)
    folder = root / "mixed"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i, (name, img) in enumerate(sample_photos(["camera", "chelsea", "coffee"])):
        x = cv2.resize(img, (72, 56), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        for tag, make in (("noisy", noisy), ("dark", dark)):
            _png((folder / "sub" if i == 2 else folder) / f"{name}_{tag}.png", make(x, rng))
    return folder, with_head, without


@pytest.fixture(autouse=True)
def small_references(monkeypatch):
    """The references at 48 px from three dead-leaves pictures and one photo: the same code, less time."""
    monkeypatch.setattr(inspection, "REFERENCE_SIZE", 48)
    monkeypatch.setattr(inspection, "REFERENCE_DEAD_LEAVES", 3)
    monkeypatch.setattr(inspection, "REFERENCE_PHOTOS", ("astronaut",))


def _rows(stdout: str):
    """The table's rows as (image, types cell, near cell), split on the runs of 2+ spaces."""
    import re

    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("image "))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("note:", "add --output", "wrote", "skipped", "no picture")):
            break
        rows.append(tuple(re.split(r"\s{2,}", line.strip())))
    return lines[start], rows


def _expected(name: str) -> str:
    return KINDS[Path(name).stem.rsplit("_", 1)[1]]


def test_the_table_names_each_images_degradation_with_probabilities(setup, capsys):
    folder, with_head, _ = setup
    assert main(["inspect", str(folder), "--prompter", str(with_head), "--top", "2"]) == 0
    out = capsys.readouterr().out
    header, rows = _rows(out)
    assert "most likely degradations (top 2)" in header and "near a reference cluster" in header
    assert sorted(r[0] for r in rows) == sorted(["camera_dark.png", "camera_noisy.png", "chelsea_dark.png",
                                                 "chelsea_noisy.png", "sub/coffee_dark.png", "sub/coffee_noisy.png"])
    for name, types, near in rows:
        cells = [c.rsplit(" ", 1) for c in types.split(" | ")]
        assert len(cells) == 2 and cells[0][0] == _expected(name), (name, types)
        percents = [float(p.rstrip("%")) for _, p in cells]
        assert percents[0] >= percents[1] and percents[0] > 50
        assert near.startswith(("yes (", "no ("))
    assert "carries no degradation head" not in out
    assert "add --output DIR for the picture" in out


def test_json_and_picture_of_a_folder(setup, tmp_path, capsys):
    folder, with_head, _ = setup
    out_dir = tmp_path / "out"
    assert main(["inspect", str(folder), "--prompter", str(with_head), "--json", "--output", str(out_dir)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON alone; the notes went to stderr
    assert f"wrote {out_dir / 'inspect.png'}" in captured.err
    assert json.loads((out_dir / "inspect.json").read_text()) == report
    assert report["head"] == {"classes": TYPES} and report["prompter"] == str(with_head)
    assert report["projection"]["fitted_on"] == "references"
    assert len(report["images"]) == 6
    for item in report["images"]:
        probs = [t["probability"] for t in item["top"]]
        assert item["predicted"] == item["top"][0]["type"] == _expected(item["name"])
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-3
        ratios = [n["distance_in_radii"] for n in item["nearest_references"]]
        assert ratios == sorted(ratios) and len(ratios) == 9  # the eight types and clean
        assert item["near_reference"] == (ratios[0] <= 1.0) and len(item["xy"]) == 2
        assert item["size_seen"] == [56, 72]  # smaller than --size: seen whole
    # references: 4 clean pictures (3 dead leaves, 1 photo) as they are and through each generator
    assert len(report["references"]) == 4 * 9
    assert {r["type"] for r in report["references"]} == {"clean", *TYPES}
    picture = cv2.imread(str(out_dir / "inspect.png"))
    assert picture is not None and picture.shape[0] > 300 and picture.shape[1] > 400
    colours = {tuple(c) for c in picture.reshape(-1, 3)[::7]}
    assert len(colours) > 50  # points, labels and a legend, not a blank canvas


def test_a_prompter_without_a_head_gets_a_note_the_nearest_references_and_the_picture(setup, tmp_path, capsys):
    folder, _, without = setup
    assert not head_path(without).exists()
    assert main(["inspect", str(folder), "--prompter", str(without), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "carries no degradation head" in line]
    assert len(notes) == 1 and str(without) in notes[0]
    header, rows = _rows(out)
    assert "nearest reference types" in header
    for name, types, near in rows:
        cells = [c.rsplit(" ", 1) for c in types.split(" | ")]
        ratios = [float(r.rstrip("x")) for _, r in cells]
        assert len(cells) == 3 and ratios == sorted(ratios)
        if _expected(name) == "low_light":  # darkness is what even a random network's latent follows
            assert cells[0][0] == "low_light", (name, types)
    assert (tmp_path / "inspect.png").is_file()
    report = json.loads((tmp_path / "inspect.json").read_text())
    assert report["head"] is None and all(item["top"] is None for item in report["images"])


def test_without_matplotlib_one_line_says_how_to_get_the_picture(setup, tmp_path, capsys, monkeypatch):
    import sys

    folder, with_head, _ = setup
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["inspect", str(folder / "camera_dark.png"), "--prompter", str(with_head),
                 "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "pip install matplotlib" in line]
    assert (tmp_path / "inspect.json").is_file() and not (tmp_path / "inspect.png").exists()


def test_a_larger_image_is_shrunk_to_size_and_a_smaller_one_seen_whole(setup, capsys):
    folder, with_head, _ = setup
    assert main(["inspect", str(folder / "camera_dark.png"), "--prompter", str(with_head), "--json",
                 "--size", "36"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["size_seen"] == [28, 36]
    assert main(["inspect", str(folder / "camera_dark.png"), "--prompter", str(with_head), "--json",
                 "--size", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["size_seen"] == [56, 72]


def test_an_unreadable_file_in_a_folder_is_skipped_and_named(setup, tmp_path, capsys):
    folder, with_head, _ = setup
    shutil.copytree(folder, tmp_path / "f")
    (tmp_path / "f" / "broken.png").write_bytes(b"not a png")
    assert main(["inspect", str(tmp_path / "f"), "--prompter", str(with_head)]) == 0
    out = capsys.readouterr().out
    assert len(_rows(out)[1]) == 6
    assert any(line.startswith("skipped: ") and "broken.png" in line for line in out.splitlines())


@pytest.mark.parametrize("case", ["missing input", "empty folder", "unreadable file", "missing prompter",
                                  "prompter folder", "top too large", "size too small", "other prompter's head"])
def test_bad_inputs_are_refused_in_one_line_naming_them(setup, tmp_path, capsys, case):
    folder, with_head, without = setup
    image = str(folder / "camera_dark.png")
    args, named = {
        "missing input": ([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such file or folder"),
        "empty folder": ([str(tmp_path)], f"{tmp_path}: no image files"),
        "unreadable file": ([str(tmp_path / "bad.jpg")], f"{tmp_path / 'bad.jpg'}: not a readable image"),
        "missing prompter": ([image, "--prompter", str(tmp_path / "p.safetensors")],
                             f"--prompter: {tmp_path / 'p.safetensors'} does not exist"),
        "prompter folder": ([image, "--prompter", str(tmp_path)], f"--prompter: {tmp_path} is a folder"),
        "top too large": ([image, "--prompter", str(with_head), "--top", "9"], "--top: expected 1 to 8"),
        "size too small": ([image, "--size", "8"], "--size: expected 0 (whole images) or a side of at least 16"),
        "other prompter's head": ([image, "--prompter", str(tmp_path / "other.safetensors")],
                                  "other.head.safetensors: this head was trained with other prompter weights"),
    }[case]
    if case == "unreadable file":
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    if case == "other prompter's head":
        torch.manual_seed(9)
        ConStyleV2().save_pretrained(tmp_path / "other.safetensors")
        shutil.copy(head_path(with_head), head_path(tmp_path / "other.safetensors"))
    assert main(["inspect", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("constyle inspect: error: ") and named in err[0], err
