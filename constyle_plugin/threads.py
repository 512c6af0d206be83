"""How many CPU threads torch uses in the plugin's commands (``basicsr train``, ``constyle train``).

On a machine busy with other work, torch's default (one thread per core) makes every thread wait for
a core: on two busy cores a small training job ran 20 times slower with two threads than with one.
The commands therefore leave torch only the cores that are free, unless the user chose a count
(``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, or ``torch.set_num_threads`` before). Standard library and torch.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Tuple

import torch

__all__ = ["THREAD_VARIABLES", "pick_torch_threads"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def pick_torch_threads(environ: Optional[Mapping[str, str]] = None,
                       load: Optional[Callable[[], Tuple[float, float, float]]] = None,
                       cores: Optional[int] = None) -> Optional[str]:
    """Lower torch's thread count to the cores other processes leave free; returns the line to log
    (``None`` when nothing changed).

    Free cores: the usable cores minus the one-minute load average, at least one. Nothing changes
    when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, when torch already uses no more threads
    than that, or when the load average cannot be read.
    """
    environ = os.environ if environ is None else environ
    chosen = [v for v in THREAD_VARIABLES if environ.get(v)]
    if chosen:
        return None
    try:
        busy = (load or os.getloadavg)()[0]
    except (OSError, AttributeError):
        return None
    cores = cores or _cores()
    current = torch.get_num_threads()
    threads = max(1, min(current, int(cores - busy + 0.5)))
    if threads >= current:
        return None
    torch.set_num_threads(threads)
    return (f"torch threads: {threads} instead of {current}: the CPU is busy (load average {busy:.1f} on "
            f"{cores} cores), and more threads than free cores slow training down many times over; set "
            f"OMP_NUM_THREADS to choose")
