"""Safe ``torch.load`` for the runs the plugin's commands drive (BasicSR's and forks' pipelines).

BasicSR (1.2 forks and 1.4.2) and MMEngine call ``torch.load`` without ``weights_only``: safe only
where torch >= 2.6 defaults to it. Inside ``basicsr train|test`` every such call loads with
``weights_only=True`` whatever the torch version (``setup.cfg`` allows torch >= 2.0), with
:data:`STATE_SAFE_GLOBALS` allowed besides tensors and plain containers (a scheduler's
``Counter``). A call that passes ``weights_only`` itself is left as it is.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, Iterator

import torch

from .patches import Patches

__all__ = ["STATE_SAFE_GLOBALS", "safe_torch_load", "weights_only_loading"]

# The classes a BasicSR .state file may hold beside tensors and plain containers.
STATE_SAFE_GLOBALS = (collections.Counter, collections.OrderedDict)


def safe_torch_load(load: Callable, cpu_only: bool = False) -> Callable:
    """``load`` (``torch.load``) defaulting to ``weights_only=True``; with ``cpu_only``, a callable
    ``map_location`` (BasicSR's ``storage.cuda(device)``) reads onto the CPU instead."""
    def wrapped(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cpu_only and callable(map_location):
            map_location = "cpu"
        if "weights_only" not in kwargs and not args:
            kwargs["weights_only"] = True
            with torch.serialization.safe_globals(list(STATE_SAFE_GLOBALS)):
                return load(f, map_location, **kwargs)
        return load(f, map_location, *args, **kwargs)
    wrapped.__wrapped__ = load  # type: ignore[attr-defined]
    return wrapped


@contextlib.contextmanager
def weights_only_loading(cpu_only: bool = False) -> Iterator[None]:
    """Within the block, ``torch.load`` is :func:`safe_torch_load` (replaced through :class:`Patches`,
    restored afterwards)."""
    patches = Patches()
    patches.replace(torch, "load", ("f", "map_location"), lambda load: safe_torch_load(load, cpu_only), host="torch",
                    written_for="torch 2.x", more=True)
    try:
        yield
    finally:
        patches.restore()
