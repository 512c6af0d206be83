"""A resume whose networks no longer fit the options is refused in one line, naming the option and the
two shapes, before anything in the run's folder changes (the options copy, the logs, the checkpoints)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import NAME, OPTIONS, basicsr, ok, refused, tiny

ensure_basicsr_importable()


def fingerprint(folder: Path):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def width8_run(tmp_path_factory, photos, prompter_file) -> Path:
    run_dir = tmp_path_factory.mktemp("width8")
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *tiny(photos, prompter_file, total_iter=2),
               "train:scheduler:periods=[2]"))
    return run_dir


@pytest.mark.parametrize("how", [["--auto_resume"], ["--force_yml", "path:resume_state=STATE"]])
def test_resume_with_another_width_is_refused_before_anything_changes(width8_run, photos, prompter_file, how):
    exp = width8_run / "experiments" / NAME
    before = fingerprint(width8_run)
    flags = [f.replace("STATE", str(exp / "training_states" / "2.state")) for f in how]
    force = [f for f in flags if f != "--force_yml" and "=" in f]
    args = ["train", "-opt", str(OPTIONS)] + [f for f in flags if f == "--auto_resume"]
    proc = basicsr(width8_run, *args, "--force_yml", *tiny(photos, prompter_file, total_iter=2),
                   "train:scheduler:periods=[2]", "network_g:backbone:width=16", *force)
    line = refused(proc, "network_g", "--force_yml network_g:backbone:width=16", "models/net_g_2.pth")
    assert "8, 3, 3, 3" in line.replace("x", ", ") or "[8, 3, 3, 3]" in line, line
    assert "16" in line
    assert fingerprint(width8_run) == before


def test_a_changed_inject_names_only_the_options_that_changed(width8_run, photos, prompter_file):
    """The run's own --force_yml entries (width, block counts, prompter file) are what it was trained with: the
    refusal names only the entry that differs from them."""
    before = fingerprint(width8_run)
    proc = basicsr(width8_run, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
                   *tiny(photos, prompter_file, total_iter=4), "train:scheduler:periods=[4]",
                   "network_g:inject=['encoder','bottleneck','decoder']")
    line = refused(proc, "network_g", "changed by --force_yml network_g:inject=['encoder','bottleneck','decoder']")
    assert "width" not in line.split("changed by")[1] and "enc_blk_nums" not in line and "prompter" not in line
    assert fingerprint(width8_run) == before
