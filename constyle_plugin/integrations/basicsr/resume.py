"""Exact resumption of a ``basicsr train`` run: the random generator states saved beside each
checkpoint (``training_states/<iter>.rank<r>.rng``), the run's own state files read with safe loading,
and the training sampler that skips what an interrupted epoch already used. Used by :mod:`.run_fixes`.
"""
from __future__ import annotations

import contextlib
import functools
import pickle
import random
from os import path as osp
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from ...errors import ConStyleRuntimeError
from ...safe_loading import STATE_SAFE_GLOBALS


__all__ = ['Resume', 'Unloadable', 'capture_rng', 'load_state_file', 'preserved_rng', 'rank', 'restore_rng', 'resumable_sampler', 'rng_path', 'state_map_location', 'unloadable_reason']


# ------------------------------------------------------------------------------------------------
# Random generator states
# ------------------------------------------------------------------------------------------------
def capture_rng() -> Dict[str, Any]:
    """The Python, NumPy and torch (CPU and initialised CUDA) generator states, as tensors and
    plain values only, so that ``torch.load(..., weights_only=True)`` reads them back."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing the global random generators (validation, for instance)."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def rng_path(states_dir: str, current_iter: int, rank: int) -> str:
    return osp.join(states_dir, f"{current_iter}.rank{rank}.rng")


# ------------------------------------------------------------------------------------------------
# Reading the run's own state files
# ------------------------------------------------------------------------------------------------
def load_state_file(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a BasicSR ``.state`` (or this command's ``.rng``) file with ``weights_only=True``.

    Besides tensors and plain containers only :data:`STATE_SAFE_GLOBALS` are allowed; anything else
    is refused (nothing in the file runs) with an error naming the file.
    """
    try:
        with torch.serialization.safe_globals(list(STATE_SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConStyleRuntimeError(f"{path}: the training state holds objects that safe loading does not allow "
                           f"({first}); nothing in it was run") from None


def state_map_location(opt: Dict[str, Any]) -> Any:
    if opt.get("num_gpu", 0) and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        return lambda storage, loc: storage.cuda(device_id)
    return "cpu"


class Resume:
    """What the resumed run needs beyond BasicSR's state: the generator states and where it stopped."""

    def __init__(self, epoch: int, current_iter: int, rng: Optional[Dict[str, Any]]) -> None:
        self.epoch = epoch
        self.iter = current_iter
        self.rng = rng


class Unloadable(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def unloadable_reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, (EOFError, RuntimeError)) and ("zip archive" in first or "central directory" in first
                                                        or isinstance(exc, EOFError)):
        text = f"truncated or not a checkpoint: {text}"
    return text


@functools.lru_cache(maxsize=None)
def resumable_sampler(base: type) -> type:
    class ResumableSampler(base):
        """BasicSR's EnlargedSampler that, once, skips the samples an interrupted epoch already used and
        restores the random generators just before the first remaining one is drawn."""

        _resume: Optional[tuple] = None

        def resume_from(self, epoch: int, skip: int, rng: Optional[Dict[str, Any]]) -> None:
            self._resume = (epoch, skip, rng)

        def __iter__(self):
            indices = super().__iter__()
            if self._resume is None or self._resume[0] != self.epoch:
                return indices
            _, skip, rng = self._resume
            self._resume = None
            return self._resumed(list(indices)[skip:], rng)

        @staticmethod
        def _resumed(indices: List[int], rng: Optional[Dict[str, Any]]):
            # A generator: its body runs at the first draw, after the DataLoader's iterator has taken
            # its own seed, which is where the uninterrupted run's generators stood.
            if rng is not None:
                restore_rng(rng)
            yield from indices

    ResumableSampler.__name__ = base.__name__
    ResumableSampler.__qualname__ = base.__qualname__
    return ResumableSampler
