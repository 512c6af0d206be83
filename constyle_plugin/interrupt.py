"""Stopping a training command cleanly on SIGINT (Ctrl-C) or SIGTERM (a cluster about to preempt).

:class:`StopSignals` replaces the two handlers for the duration of a run: the first signal only
records itself (the trainer finishes the current iteration, writes a resumable state and raises
:class:`TrainingStopped`); the handlers the process had before come back at once, so a second
Ctrl-C stops immediately (``KeyboardInterrupt``) and a second SIGTERM ends the process. In a
distributed run every rank must stop after the same iteration: :meth:`StopSignals.agreed` asks all
ranks. Standard library and torch only.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Dict, List, Optional

__all__ = ["StopSignals", "TrainingStopped", "ignore_stop_signals", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class TrainingStopped(Exception):
    """Raised by a trainer after it saved a resumable state on a stop signal."""

    def __init__(self, signum: int, iteration: int, saved: List[str]) -> None:
        self.signum, self.iteration, self.saved = signum, iteration, list(saved)
        super().__init__(f"stopped by {signal_name(signum)} after iteration {iteration}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: SIGINT / SIGTERM set :attr:`signum` instead of stopping the process (main
    thread only; elsewhere it does nothing). ``command`` prefixes the line written on the first signal."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()  # a second signal acts as it would have without us: at once
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        # os.write, not print: the signal may arrive while the main thread is writing to stderr
        os.write(2, (f"\n{self.command}: {signal_name(signum)} received: finishing the current iteration and "
                     f"saving a resumable state; {again} again stops at once without saving\n").encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self) -> bool:
        """Whether to stop now: this process got a signal, or (distributed) any rank did. All ranks
        call it once per iteration, so they stop after the same one."""
        import torch

        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and int(flag.item()):
            self.signum = int(flag.item())
        return bool(int(flag.item()))


class ignore_stop_signals:
    """A data-loader ``worker_init_fn`` wrapper: workers ignore SIGINT / SIGTERM (a terminal's Ctrl-C
    and a job scheduler reach the whole process group; a worker killed by SIGTERM makes the main
    process fail mid-iteration), so the main process stops them when it has saved. Picklable."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)
