"""``constyle train --resume`` without a path (MMEngine's auto-resume through ``ConStyleRunner``): the
checkpoint ``last_checkpoint`` names comes first, then the work dir's other ``iter_N.pth`` /
``epoch_N.pth``, newest (highest N) first; the first that loads is resumed, each one passed over is
named in a warning, in that order, and when none loads the error names them all.

In this process: the Runner is not built; its own loading (``Runner.load_or_resume``) is replaced by a
record of the checkpoint it is handed. ``tests/cli/test_train_checks.py`` runs the same fallback end to
end on a real two-checkpoint run.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from mmengine.runner import Runner

from constyle_plugin.integrations.mmengine.runner import ConfigError, ConStyleRunner


def checkpoint(path: Path, iteration: int, kind: str = "loads") -> Path:
    state = {"state_dict": {"w": torch.full((4,), float(iteration))}, "meta": {"iter": iteration}}
    if kind == "not_mmengine":  # a BasicSR-style file: loads, but holds no state_dict
        state = {"params": state["state_dict"]}
    torch.save(state, path)
    if kind == "truncated":  # a save cut short
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    return path


class _Log:
    def __init__(self) -> None:
        self.warnings: List[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def resume_in(work: Path, monkeypatch) -> Tuple[str, List[str]]:
    """``ConStyleRunner.load_or_resume`` with ``resume=True`` and no path, in ``work``: (the checkpoint
    handed to MMEngine's own loading, the warnings logged)."""
    handed = []
    monkeypatch.setattr(Runner, "load_or_resume", lambda self: handed.append(self._load_from))
    runner = ConStyleRunner.__new__(ConStyleRunner)  # only what load_or_resume reads
    runner._has_loaded, runner._resume, runner._load_from, runner._work_dir = False, True, None, str(work)
    runner.logger = _Log()
    runner.load_or_resume()
    assert len(handed) == 1
    return handed[0], runner.logger.warnings


def skipped(warnings: List[str]) -> List[str]:
    assert all(w.startswith("resume: skipped ") for w in warnings), warnings
    return [Path(w[len("resume: skipped "):].split(":", 1)[0]).name for w in warnings]


def test_the_newest_checkpoint_that_loads_is_resumed_passing_over_newer_ones_in_order(tmp_path, monkeypatch):
    # iteration numbers that sort differently as text (iter_12 < iter_9 < iter_8 as strings)
    checkpoint(tmp_path / "iter_2.pth", 2)
    checkpoint(tmp_path / "iter_8.pth", 8)
    checkpoint(tmp_path / "iter_9.pth", 9)
    checkpoint(tmp_path / "iter_10.pth", 10, "not_mmengine")
    checkpoint(tmp_path / "iter_11.pth", 11, "garbage")
    latest = checkpoint(tmp_path / "iter_12.pth", 12, "truncated")
    (tmp_path / "last_checkpoint").write_text(str(latest))
    (tmp_path / "iter_7.pth.tmp").write_bytes(b"")  # not a checkpoint name: never a candidate
    chosen, warnings = resume_in(tmp_path, monkeypatch)
    assert Path(chosen).name == "iter_9.pth"
    assert torch.load(chosen, weights_only=True)["meta"]["iter"] == 9
    assert skipped(warnings) == ["iter_12.pth", "iter_11.pth", "iter_10.pth"]
    assert "does not load" in warnings[0] and "does not load" in warnings[1]
    assert "not an MMEngine checkpoint" in warnings[2]


def test_last_checkpoint_comes_first_even_when_a_higher_number_exists(tmp_path, monkeypatch):
    """``last_checkpoint`` names the run's own latest save; a higher-numbered file beside it (an older
    run's) comes after it, then the rest newest first."""
    checkpoint(tmp_path / "iter_3.pth", 3)
    named = checkpoint(tmp_path / "iter_4.pth", 4, "truncated")
    checkpoint(tmp_path / "iter_20.pth", 20, "truncated")
    checkpoint(tmp_path / "epoch_5.pth", 5, "truncated")
    (tmp_path / "last_checkpoint").write_text(str(named))
    chosen, warnings = resume_in(tmp_path, monkeypatch)
    assert Path(chosen).name == "iter_3.pth"
    assert skipped(warnings) == ["iter_4.pth", "iter_20.pth", "epoch_5.pth"]


def test_the_latest_checkpoint_is_resumed_when_it_loads(tmp_path, monkeypatch):
    for it in (2, 4, 6):
        checkpoint(tmp_path / f"iter_{it}.pth", it)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_6.pth"))
    chosen, warnings = resume_in(tmp_path, monkeypatch)
    assert Path(chosen).name == "iter_6.pth" and warnings == []


def test_no_checkpoint_that_loads_is_refused_naming_each_newest_first(tmp_path, monkeypatch):
    for it, kind in ((1, "garbage"), (2, "not_mmengine"), (3, "truncated")):
        checkpoint(tmp_path / f"iter_{it}.pth", it, kind)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_3.pth"))
    with pytest.raises(ConfigError) as info:
        resume_in(tmp_path, monkeypatch)
    message = str(info.value)
    assert message.startswith(f"--resume: no checkpoint in {tmp_path} loads: ")
    positions = [message.index(f"iter_{it}.pth") for it in (3, 2, 1)]
    assert positions == sorted(positions), message
