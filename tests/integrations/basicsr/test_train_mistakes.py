"""``basicsr train`` mistakes that are refused in one line naming the option, with nothing created."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import OPTIONS, refused_here, tiny

ensure_basicsr_importable()


def paired(tmp_path: Path, gt: int, lq: int) -> list:
    for folder, count in (("gt", gt), ("lq", lq)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(tmp_path / "data" / folder / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    return ["datasets:train:type=PairedImageDataset", f"datasets:train:dataroot_gt={tmp_path / 'data' / 'gt'}",
            f"datasets:train:dataroot_lq={tmp_path / 'data' / 'lq'}", "datasets:train:io_backend:type=disk"]


@pytest.mark.parametrize("mistake, key, says", [
    ("photos", "datasets.train.photos[0]", "did you mean 'astronaut'?"),
    ("periods", "train.scheduler.periods", "expected a list, e.g. [703632]"),
    ("pairs", "datasets.train.dataroot_lq", "holds 2 files but dataroot_gt"),
])
def test_mistake_is_one_line_and_creates_nothing(mistake, key, says, tmp_path, photos, prompter_file, capsys,
                                                 monkeypatch):
    extra = {"photos": ["datasets:train:photos=['astronautt','camera']"],
             "periods": ["train:scheduler:periods=703632"],
             "pairs": paired(tmp_path, 3, 2)}[mistake]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    refused_here(capsys, run_dir, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), *extra, fragments=(key, says))
    assert list(run_dir.iterdir()) == []
