"""Torch's thread count in the plugin's commands on a busy machine: the free cores, or the user's choice."""
from __future__ import annotations

import pytest
import torch

from constyle_plugin.threads import pick_torch_threads

from cli_runs import MMENGINE_CONFIG, run_cli


def test_busy_cores_leave_torch_the_free_ones(four_threads):
    note = pick_torch_threads(environ={}, load=lambda: (2.2, 2.0, 2.0), cores=4)
    assert torch.get_num_threads() == 2
    assert "torch threads: 2 instead of 4" in note and "load average 2.2 on 4 cores" in note
    assert "OMP_NUM_THREADS" in note


def test_fully_busy_cores_leave_one_thread(four_threads):
    pick_torch_threads(environ={}, load=lambda: (9.0, 9.0, 9.0), cores=4)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("environ, load", [
    ({"OMP_NUM_THREADS": "4"}, 9.0),  # the user's choice wins
    ({}, 0.3),  # an idle machine keeps torch's default
])
def test_nothing_changes_when_chosen_or_idle(four_threads, environ, load):
    assert pick_torch_threads(environ=environ, load=lambda: (load, load, load), cores=4) is None
    assert torch.get_num_threads() == 4


def test_constyle_train_picks_threads_before_training(four_threads, monkeypatch, capsys, tmp_path):
    import os

    import constyle_plugin.integrations.mmengine as mm

    seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(mm, "train", lambda *a, **k: seen.append(torch.get_num_threads()))
    code, _, err = run_cli(capsys, "train", str(MMENGINE_CONFIG), "--work-dir", str(tmp_path / "w"))
    assert code == 0 and seen == [1]
    assert "constyle train: torch threads: 1 instead of 4" in err
