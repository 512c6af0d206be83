"""``basicsr train`` on a busy CPU lowers torch's thread count to the free cores before training and
says so on one line, as ``constyle train`` does; ``OMP_NUM_THREADS`` keeps the user's choice."""
from __future__ import annotations

import os

import pytest
import torch

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import OPTIONS

ensure_basicsr_importable()


@pytest.mark.parametrize("chosen", [None, "4"])
def test_basicsr_train_picks_threads_before_training(four_threads, monkeypatch, capsys, tmp_path, chosen):
    import basicsr.train

    from constyle_plugin.integrations.basicsr.cli import main

    seen = []
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    if chosen is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", chosen)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(basicsr.train, "train_pipeline", lambda root: seen.append(torch.get_num_threads()))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-opt", str(OPTIONS)]) == 0
    err = capsys.readouterr().err
    if chosen is None:
        assert seen == [1]
        assert len([line for line in err.splitlines() if line.startswith("basicsr train: torch threads: 1 instead "
                                                                         "of 4: the CPU is busy")]) == 1
        assert "set OMP_NUM_THREADS to choose" in err
    else:
        assert seen == [4] and "torch threads" not in err
