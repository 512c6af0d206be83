"""Helpers for the tests that kill a process mid-write (atomic checkpoints and exports)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional


def quiet_env(**extra: str) -> Dict[str, str]:
    """The environment with one BLAS / OpenMP thread (tiny networks on a shared CPU), plus ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def kill_when(cmd: List[str], cwd: Path, ready: Callable[[str], bool], timeout: float = 300,
              env: Optional[Dict[str, str]] = None) -> str:
    """Run ``cmd``; SIGKILL it as soon as ``ready(stdout so far)`` is true; return its stdout."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env if env is not None else quiet_env())
    out, start = [], time.time()
    try:
        for line in proc.stdout:
            out.append(line)
            if ready("".join(out)):
                break
            if time.time() - start > timeout:
                raise AssertionError("timed out waiting:\n" + "".join(out)[-3000:])
        else:
            proc.wait()
            raise AssertionError(f"exited ({proc.returncode}) before it could be killed:\n" + "".join(out)[-3000:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(out)


def visible(folder: Path) -> List[str]:
    """File names, without the hidden temporary files an interrupted atomic write leaves behind."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# What the CPU launches test, on any machine: with one GPU visible, two ranks would both take it.
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}


def torchrun(*args: str) -> List[str]:
    """``python -m torch.distributed.run`` with 2 processes on this machine, then ``args``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
