"""The `constyle` command of a core install (no MMEngine, no BasicSR): every subcommand but `train`
works, and `train` says what to install instead of a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

BLOCK = ("import sys\n"
         "for name in ('mmengine', 'basicsr'):\n"
         "    sys.modules[name] = None  # what a core install has: importing them raises ImportError\n"
         "from constyle_plugin.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def run(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sub", ["restore", "export", "convert", "data", "inspect"])
def test_subcommands_build_without_the_extras(sub):
    proc = run(sub, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: constyle" in proc.stdout


@pytest.mark.parametrize("args", [["train", "cfg.py"], ["train", "cfg.py", "--cfg-options", "a=1"]])
def test_train_without_mmengine_says_what_to_install(args, tmp_path):
    proc = run(*args)
    assert proc.returncode == 2
    assert 'pip install "constyle-plugin[mmengine]"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_inspect_on_a_core_install_prints_the_table_and_says_how_to_get_the_picture(tmp_path):
    """No scikit-image (the references are dead-leaves pictures only), no matplotlib (no picture: one line
    says what to install), the packaged prompter."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    block = ("import sys\n"
             "for name in ('mmengine', 'basicsr', 'skimage', 'matplotlib'):\n"
             "    sys.modules[name] = None\n"
             "from constyle_plugin.tools import inspection\n"
             "inspection.REFERENCE_SIZE = 48  # smaller references: the same code, less time\n"
             "from constyle_plugin.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", block, "inspect", str(tmp_path / "a.png"), "--output",
                           str(tmp_path / "out"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert {r["source"] for r in report["references"]} == {f"dead_leaves_{i}" for i in range(4)}
    assert "pip install matplotlib" in proc.stderr and not (tmp_path / "out" / "inspect.png").exists()
