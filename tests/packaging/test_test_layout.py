"""The test suite's own layout: folders that mirror the package, and file names pytest can import.

The test folders are not packages (``tests/`` goes on ``sys.path`` for the shared helpers, and a
``tests/packaging`` package there would hide the real ``packaging``), so pytest imports each test file
by its base name: two files with the same name in different folders break collection ("import file
mismatch"). Name a file by its subject within the layer, e.g. ``test_basicsr_stop_signals.py``.
"""
from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
FOLDERS = {"core", "data", "training", "tools", "integrations", "cli", "packaging", "docs", "benchmarks", "forks"}


def test_test_file_names_are_unique_across_folders():
    seen = collections.defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        if "forks" not in path.relative_to(TESTS).parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files with the same name in different folders: {clashes}"


def test_test_files_live_in_the_folders_that_mirror_the_package():
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not loose, f"test files directly under tests/ (put each in the folder of what it tests): {loose}"
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= FOLDERS, f"unexpected test folders: {sorted(folders - FOLDERS)}"
    assert not list(TESTS.rglob("__init__.py")) or all("forks" in p.relative_to(TESTS).parts
                                                        for p in TESTS.rglob("__init__.py"))
