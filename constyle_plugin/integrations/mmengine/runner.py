"""Running MMEngine configs: config checks, a Runner whose resume works on torch >= 2.6, and the
``constyle train`` entry point.

Resuming on torch >= 2.6: ``torch.load`` defaults to ``weights_only=True``, which rejects the
Python objects MMEngine 0.10 stores in its checkpoints (the message hub's ``HistoryBuffer`` with
numpy arrays, numpy scalars in the runtime info). :class:`ConStyleRunner` loads its checkpoints
with safe loading still on, allow-listing exactly those classes
(:func:`mmengine_checkpoint_globals`) for the duration of its own checkpoint loads; every other
``torch.load`` in the process keeps PyTorch's default allow-list.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
import shutil
import warnings
from typing import Any, Iterator, List, Mapping, Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner import Runner

from ...errors import ConfigError, OptionError
from ...files import atomic_write
from ...safe_loading import weights_only_loading
from . import scope
from .scope import SCOPE
from .config_checks import check_config, fit_dataloaders

__all__ = ["ConStyleRunner", "ConfigError", "ATOMIC_BACKEND", "AtomicLocalBackend", "check_config", "fit_dataloaders",
           "mmengine_checkpoint_globals", "train"]

ATOMIC_BACKEND = "constyle_atomic_local"  # the MMEngine file backend ConStyleRunner saves checkpoints with


# --------------------------------------------------------------------------------------------
# Safe loading of MMEngine's own checkpoints
# --------------------------------------------------------------------------------------------
def _numpy_globals() -> List[Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                          "uint8", "bool")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: Any) -> Any:
    """Stands in for ``builtins.getattr`` while loading: MMEngine pickles the statistics methods of
    ``HistoryBuffer`` as ``getattr(HistoryBuffer, 'min')`` and so on. Only that lookup is answered;
    any other ``getattr`` in a checkpoint is refused (a general ``getattr`` would reach any object)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = set(_HISTORY_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed and name in vars(HistoryBuffer):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refused getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) "
                                 f"while loading an MMEngine checkpoint: only HistoryBuffer's statistics "
                                 f"methods {sorted(allowed)} may be looked up")


def checkpoint_safe_globals() -> List[Any]:
    """The globals MMEngine's checkpoints need beyond PyTorch's default ``weights_only`` allow-list:
    the message hub's ``HistoryBuffer`` (with a ``getattr`` restricted to its statistics methods)
    and numpy array / dtype / scalar reconstruction."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return [HistoryBuffer, (_history_buffer_getattr, "builtins.getattr"), *_numpy_globals()]


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` also accepts :func:`checkpoint_safe_globals`.

    Nothing else is allowed: a pickle that names any other global is still refused, and nothing
    in the file is run. On a torch without ``torch.serialization.safe_globals`` (< 2.5, where
    ``weights_only`` defaults to ``False``) this does nothing.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        yield
        return
    with safe_globals(checkpoint_safe_globals()):
        yield


class ConStyleRunner(Runner):
    """MMEngine's Runner with two additions (select it with ``runner_type = 'ConStyleRunner'``):

    - :meth:`from_cfg` runs :func:`check_config` first, so an unknown type or a missing file fails
      before anything is built, naming the config key; a model that fails to build leaves no new work dir;
    - checkpoints (``resume`` and ``load_from``) load with safe loading plus exactly the globals
      MMEngine's own checkpoints need (:func:`mmengine_checkpoint_globals`);
    - checkpoints are saved atomically (:class:`AtomicLocalBackend`, registered with MMEngine's ``register_backend``);
    - ``launcher='pytorch'`` works without CUDA (gloo, DistributedDataParallel on the CPU).
    """

    @classmethod
    def from_cfg(cls, cfg: Config) -> "ConStyleRunner":
        fit_dataloaders(cfg)
        check_config(cfg)
        work_dir = cfg.get("work_dir")
        fresh = isinstance(work_dir, str) and not osp.exists(work_dir)
        try:
            return super().from_cfg(cfg)
        except BaseException as exc:
            if fresh and osp.isdir(work_dir):  # the Runner made it before building the model: no run began
                shutil.rmtree(work_dir, ignore_errors=True)
            if isinstance(exc, OptionError):  # only the model is built here: its options are under ``model``
                raise ConfigError(str(exc.under("model"))) from None
            raise

    def load_or_resume(self) -> None:
        """Runner.load_or_resume, with two changes for ``resume=True`` without a checkpoint path:

        - nothing to resume in the work dir: a warning that training starts from scratch (MMEngine
          logs "Auto resumed from the latest checkpoint None." and goes on);
        - the latest checkpoint does not load (truncated, damaged): a warning naming it, and the
          newest older ``iter_N.pth`` / ``epoch_N.pth`` of the work dir that loads is resumed
          instead; when none loads, :class:`ConfigError` names them.
        """
        if not self._has_loaded and self._resume and self._load_from is None:
            from mmengine.runner.checkpoint import find_latest_checkpoint

            latest = find_latest_checkpoint(self.work_dir)
            if latest is None:
                self.logger.warning(f"resume: nothing to resume in {self.work_dir} (no last_checkpoint file "
                                    f"there): training starts from scratch")
                self._resume = False
                try:
                    return super().load_or_resume()
                finally:
                    self._resume = True
            problems = []
            for candidate in _resume_candidates(latest, self.work_dir):
                problem = checkpoint_problem(candidate)
                if problem is None:
                    self._load_from = candidate
                    break
                problems.append(f"{candidate}: {problem}")
                self.logger.warning(f"resume: skipped {candidate}: {problem}")
            else:
                raise ConfigError(f"--resume: no checkpoint in {self.work_dir} loads: " + "; ".join(problems))
        return super().load_or_resume()

    def load_checkpoint(self, filename: str, map_location: Any = "cpu", strict: bool = False,
                        revise_keys: list = [(r"^module.", "")]):
        # MMEngine's loader calls torch.load without weights_only: safe only where torch >= 2.6
        # defaults to it; here it is safe on every torch the package allows.
        try:
            with mmengine_checkpoint_globals(), weights_only_loading():
                return super().load_checkpoint(filename, map_location=map_location, strict=strict,
                                               revise_keys=revise_keys)
        except pickle.UnpicklingError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            blocked = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
            raise ConfigError(f"{filename}: the checkpoint holds objects that safe loading does not allow "
                              f"({blocked}); nothing in it was run") from None

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """Runner.save_checkpoint, written atomically (:class:`AtomicLocalBackend`) unless the caller
        names a file backend of its own (``backend_args`` / ``file_client_args``)."""
        file_client_args = args[2] if len(args) > 2 else kwargs.get("file_client_args")
        if file_client_args is None and kwargs.get("backend_args") is None:
            kwargs["backend_args"] = {"backend": ATOMIC_BACKEND}
        return super().save_checkpoint(*args, **kwargs)

    def setup_env(self, env_cfg: Mapping[str, Any]) -> None:
        """Runner.setup_env; without CUDA, a distributed launch sets up a gloo process group itself
        (MMEngine's ``init_dist`` calls ``torch.cuda.set_device(local_rank % device_count)``, a
        division by zero on a CPU machine, and defaults to NCCL)."""
        if self.distributed and not torch.distributed.is_initialized() and not torch.cuda.is_available():
            if self.launcher != "pytorch":
                raise ConfigError(f"launcher: {self.launcher!r} needs CUDA here; on the CPU use the pytorch "
                                  f"launcher (torch.distributed.run), which runs with the gloo backend")
            torch.distributed.init_process_group(backend="gloo", rank=int(os.environ["RANK"]),
                                                 world_size=int(os.environ["WORLD_SIZE"]))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[Mapping[str, Any]], model: torch.nn.Module):
        """Runner.wrap_model; a distributed model on the CPU is wrapped without ``device_ids``
        (MMEngine passes ``[LOCAL_RANK]``, which DistributedDataParallel refuses for a CPU module)."""
        if self.distributed and not torch.cuda.is_available():
            if model_wrapper_cfg is None:
                model_wrapper_cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                                         find_unused_parameters=self.cfg.get("find_unused_parameters", False))
            model_wrapper_cfg = dict(model_wrapper_cfg)
            model_wrapper_cfg.setdefault("device_ids", None)
        return super().wrap_model(model_wrapper_cfg, model)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be resumed from (missing, truncated, damaged, not
    MMEngine's), or ``None`` when it reads (safe loading, as :class:`ConStyleRunner` loads it)."""
    if not osp.isfile(path):
        return "not found"
    try:
        with mmengine_checkpoint_globals():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (named in the message; nothing in the file runs)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"does not load ({type(exc).__name__}: {lines[0] if lines else ''})"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not an MMEngine checkpoint (no state_dict)"
    return None


def _resume_candidates(latest: str, work_dir: str) -> List[str]:
    """``latest``, then the work dir's other ``iter_N.pth`` / ``epoch_N.pth``, newest first."""
    import re

    numbered = []
    for name in os.listdir(work_dir):
        match = re.fullmatch(r"(iter|epoch)_(\d+)\.pth", name)
        if match:
            numbered.append((int(match.group(2)), osp.join(work_dir, name)))
    others = [path for _, path in sorted(numbered, reverse=True) if osp.abspath(path) != osp.abspath(latest)]
    return [latest, *others]


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose ``put`` (how checkpoints are written) writes a temporary
    file beside the target, fsyncs it and renames it into place (:func:`constyle_plugin.files.atomic_write`):
    a crash mid-write keeps the previous file of that name intact and never leaves a partial file under
    the name. Registered with MMEngine as :data:`ATOMIC_BACKEND`; :class:`ConStyleRunner` saves
    checkpoints through it."""

    def put(self, obj: bytes, filepath: Any) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(obj)
        atomic_write(filepath, write)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)  # the plugin's own name: idempotent


# --------------------------------------------------------------------------------------------
# constyle train
# --------------------------------------------------------------------------------------------
def load_config(config: str, cfg_options: Optional[Mapping[str, Any]] = None) -> Config:
    """Read a config file (its ``custom_imports`` are imported) and merge ``--cfg-options``; a config
    without ``default_scope`` gets the plugin's (``constyle``), as OpenMMLab packages' tools do."""
    if not osp.isfile(config):
        raise ConfigError(f"CONFIG: {config!r} is not a file")
    try:
        cfg = Config.fromfile(config)
    except SyntaxError as exc:
        raise ConfigError(f"CONFIG: {config}, line {exc.lineno}: {exc.msg} (not valid Python)") from None
    for key, value in dict(cfg_options or {}).items():
        try:
            cfg.merge_from_dict({key: value})
        except (TypeError, KeyError) as exc:  # e.g. a.b.c=... where the config's a.b is None
            raise ConfigError(f"{key}: --cfg-options cannot set it: {_unmergeable(cfg, key) or exc}") from None
    if cfg.get("default_scope") is None:
        cfg.default_scope = SCOPE
    return cfg


def _unmergeable(cfg: Config, key: str) -> Optional[str]:
    """Why ``key`` cannot be merged: the first enclosing entry that is not a dict, if any."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not (isinstance(node, (Mapping, Config)) and part in node):
            return None
        node = node.get(part)
        if not isinstance(node, Mapping):
            return (f"{'.'.join(parts[:i + 1])} is {node!r} in the config, not a dict; set the whole value "
                    f"in the config file")
    return None


def train(config: str, work_dir: Optional[str] = None, cfg_options: Optional[Mapping[str, Any]] = None,
          resume: Optional[str] = None, amp: bool = False, launcher: str = "none",
          local_rank: Optional[int] = None) -> Runner:
    """Train from an MMEngine config, as ``constyle train`` does; returns the finished Runner.

    Args:
        config: path of a Python config (e.g. ``options/mmengine/nafnet_constyle.py``).
        work_dir: where logs and checkpoints go; default the config's ``work_dir``, else
            ``./work_dirs/<config name>``.
        cfg_options: ``{'dotted.key': value}`` overrides (``--cfg-options``).
        resume: ``None`` (no resume), ``'auto'`` (the latest checkpoint in the work dir, if any) or
            a checkpoint path.
        amp: mixed precision (``AmpOptimWrapper``, dynamic loss scale); needs a CUDA device.
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        local_rank: sets ``LOCAL_RANK`` when the launcher did not.

    SIGINT / SIGTERM during training: the iteration in progress finishes, a checkpoint of it is saved
    as a scheduled one (:class:`~.hooks.StopOnSignalHook`) and
    :class:`~constyle_plugin.interrupt.TrainingStopped` is raised (naming the file); resume with
    ``resume='auto'``. A second Ctrl-C raises ``KeyboardInterrupt`` at once.
    """
    if local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(config))[0])
    if amp:
        if not torch.cuda.is_available():
            raise ConfigError("--amp: mixed precision (AmpOptimWrapper) needs a CUDA device; none is available")
        ow = cfg.optim_wrapper
        if ow.get("type", "OptimWrapper") == "OptimWrapper":
            ow.type = "AmpOptimWrapper"
            ow.setdefault("loss_scale", "dynamic")
    ow_type = (cfg.get("optim_wrapper") or {}).get("type")
    if isinstance(ow_type, str) and ow_type.rpartition(".")[2] == "AmpOptimWrapper" and not torch.cuda.is_available():
        # MMEngine asserts this only once the runner has built the model and the data.
        raise ConfigError(f"optim_wrapper.type: {ow_type} (mixed precision) needs a GPU and none is available; on "
                          f"the CPU use the config without it (e.g. nafnet_constyle.py, not nafnet_constyle_amp.py)")
    if resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        if not osp.isfile(resume):
            raise ConfigError(f"--resume: checkpoint {resume!r} not found")
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise ConfigError(f"--resume: {resume}: {problem}")
        cfg.resume = True
        cfg.load_from = resume
    fit_dataloaders(cfg)
    if "runner_type" not in cfg:
        runner = ConStyleRunner.from_cfg(cfg)
    else:
        check_config(cfg)
        runner = scope.RUNNERS.build(cfg)
    if resume == "auto" and not isinstance(runner, ConStyleRunner):  # ConStyleRunner logs it itself
        from mmengine.runner.checkpoint import find_latest_checkpoint

        if find_latest_checkpoint(runner.work_dir) is None:
            warnings.warn(f"--resume: nothing to resume in {runner.work_dir} (no last_checkpoint file there): "
                          f"training starts from scratch")
    from ...interrupt import StopSignals
    from .hooks import StopOnSignalHook

    with StopSignals("constyle train") as stop:
        runner.register_hook(StopOnSignalHook(stop))
        runner.train()
    return runner
