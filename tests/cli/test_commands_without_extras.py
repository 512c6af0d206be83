"""The `constyle` command of a core install (no MMEngine, no BasicSR): every subcommand but `train`
works, and `train` says what to install instead of a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = ("import sys\n"
         "for name in ('mmengine', 'basicsr'):\n"
         "    sys.modules[name] = None  # what a core install has: importing them raises ImportError\n"
         "from constyle_plugin.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def run(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sub", ["restore", "export", "convert", "data"])
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
