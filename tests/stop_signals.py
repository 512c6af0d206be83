"""Helper for the tests that stop a training command with SIGINT / SIGTERM mid-run."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Tuple

from processes import quiet_env


def signal_when(cmd: List[str], cwd: Path, ready: Callable[[str], bool], sig: int = signal.SIGINT,
                timeout: float = 400) -> Tuple[int, str]:
    """Run ``cmd``; send ``sig`` once ``ready(output so far)`` is true; return (exit status, output)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=quiet_env())
    out, start, sent = [], time.time(), False
    try:
        for line in proc.stdout:
            out.append(line)
            if not sent and ready("".join(out)):
                proc.send_signal(sig)
                sent = True
            if time.time() - start > timeout:
                raise AssertionError("timed out:\n" + "".join(out)[-3000:])
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, f"exited ({proc.returncode}) before the signal was sent:\n" + "".join(out)[-3000:]
    return proc.returncode, "".join(out)
