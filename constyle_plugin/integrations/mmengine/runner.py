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
import inspect
import os
import os.path as osp
import pickle
import shutil
import warnings
from typing import Any, Iterator, List, Mapping, Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import (DATA_SAMPLERS, DATASETS, EVALUATOR, FUNCTIONS, HOOKS, LOG_PROCESSORS, LOOPS,
                               METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS,
                               PARAM_SCHEDULERS, RUNNERS, TRANSFORMS, VISBACKENDS, VISUALIZERS,
                               WEIGHT_INITIALIZERS, Registry)
from mmengine.runner import Runner

from ...errors import ConfigError, OptionError, did_you_mean
from ...core.prompter import atomic_write
from ...safe_loading import weights_only_loading
from . import scope
from .scope import SCOPE

__all__ = ["ConStyleRunner", "ConfigError", "atomic_local_writes", "check_config", "fit_dataloaders",
           "mmengine_checkpoint_globals", "train"]


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
      before anything is built, naming the config key;
    - checkpoints (``resume`` and ``load_from``) load with safe loading plus exactly the globals
      MMEngine's own checkpoints need (:func:`mmengine_checkpoint_globals`);
    - checkpoints are saved atomically (:func:`atomic_local_writes`);
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
        except OptionError as exc:  # only the model is built here: its options are under ``model``
            if fresh and osp.isdir(work_dir):  # the Runner made it before building the model
                shutil.rmtree(work_dir, ignore_errors=True)
            raise ConfigError(str(exc.under("model"))) from None

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
        """Runner.save_checkpoint, with local files written atomically (:func:`atomic_local_writes`)."""
        with atomic_local_writes():
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


@contextlib.contextmanager
def atomic_local_writes() -> Iterator[None]:
    """Within the block, MMEngine's local file backend (``LocalBackend.put``, which checkpoint saving
    uses) writes a temporary file beside the target, fsyncs it and renames it into place
    (:func:`constyle_plugin.core.prompter.atomic_write`): a crash mid-write keeps the previous file of that
    name intact and never leaves a partial file under the name."""
    from mmengine.fileio.backends.local_backend import LocalBackend

    original = LocalBackend.put

    def put(self: Any, obj: bytes, filepath: Any) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(obj)
        atomic_write(filepath, write)

    LocalBackend.put = put
    try:
        yield
    finally:
        LocalBackend.put = original


# --------------------------------------------------------------------------------------------
# Config checks
# --------------------------------------------------------------------------------------------
# Keys whose string value names an existing input file or folder.
INPUT_PATH_KEYS = ("pretrained", "dataroot", "dataroot_gt", "dataroot_lq", "lq_folder", "gt_folder", "data_root",
                   "meta_info_file", "ann_file", "checkpoint")
# Values of those keys that are not paths (the offline sample photos of the plugin's datasets).
SPECIAL_ROOTS = ("sample_photos", "sample_classes")


# Keys of a model config that hold the config of a module (a string there is a mistake: a
# --cfg-options value that did not parse as a dict, a bare type name).
MODULE_CONFIG_KEYS = ("backbone", "pixel_loss", "data_preprocessor")
# Dataloader keys that MMEngine's Runner.build_dataloader reads itself (the others go to DataLoader).
MMENGINE_DATALOADER_KEYS = ("dataset", "sampler", "batch_sampler", "batch_size", "collate_fn", "worker_init_fn",
                            "num_batch_per_epoch", "disable_subprocess_warning", "persistent_workers")


def fit_dataloaders(cfg: Config) -> None:
    """``persistent_workers`` off in every dataloader that runs without workers (``num_workers=0``,
    the usual debugging override), where torch's DataLoader refuses it."""
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if isinstance(loader, Mapping) and not loader.get("num_workers", 0) and loader.get("persistent_workers"):
            loader["persistent_workers"] = False


def registry_forwards_kwargs(cls: Any) -> bool:
    """MMEngine's parameter schedulers and optimiser wrappers take ``**kwargs`` only to hand them to
    the next class of their MRO (``LRSchedulerMixin`` -> ``CosineAnnealingParamScheduler``,
    ``AmpOptimWrapper`` -> ``OptimWrapper``): their arguments are those of the whole chain."""
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

    return isinstance(cls, type) and issubclass(cls, (_ParamScheduler, OptimWrapper))


def _argument_names(cls: Any, forwarded: bool = False) -> Optional[List[str]]:
    """The keyword arguments ``cls`` accepts, or ``None`` when it takes any (``**kwargs``). With
    ``forwarded``, ``**kwargs`` passed on along the MRO add the arguments of the next ``__init__``."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    chain = [c for c in getattr(cls, "__mro__", ()) if "__init__" in vars(c) and c is not object] if forwarded else []
    if not chain:
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return [n for n, p in params.items() if p.kind in keyword]
    names: List[str] = []
    for klass in chain:
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            return None
        names += [n for n, p in params.items() if p.kind in keyword and n != "self" and n not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return names
    return None


class _Checker:
    def __init__(self, scope: Optional[str]) -> None:
        self.scope = scope
        self.errors: List[str] = []

    def type_(self, registry: Registry, node: Any, key: str, check_args: bool = False) -> Any:
        """``node['type']`` must resolve in ``registry``; with ``check_args``, the other keys must be
        arguments of the class (unless it takes ``**kwargs``). Returns the class found, or None."""
        if not isinstance(node, Mapping):
            return None
        t = node.get("type")
        if t is None or not isinstance(t, str):
            return None  # no type (defaults apply) or a class given directly
        reg = registry
        try:
            with registry.switch_scope_and_registry(self.scope) as reg:
                found = reg.get(t)
        except (KeyError, ImportError, ModuleNotFoundError):
            found = None
        if found is None:
            names = set()
            while reg is not None:  # the scope's names and those it falls back to
                names.update(reg.module_dict)
                reg = reg.parent
            hint = did_you_mean(t, sorted(names), n=3)
            hint = f"; {hint}" if hint else ""
            self.errors.append(f"{key}.type: {t!r} is not registered in MMEngine's {registry.name} registry"
                               f"{hint} (is the package that defines it in custom_imports?)")
        elif check_args:
            self.arguments(found, node, key)
        return found

    def arguments(self, cls: Any, node: Mapping, key: str) -> None:
        options = getattr(cls, "OPTIONS", None)  # wrappers taking **opt declare what they accept
        if isinstance(options, tuple):
            for k in node:
                if k != "type" and k not in options:
                    hint = did_you_mean(k, options)
                    hint = f"; {hint}" if hint else ""
                    self.errors.append(f"{key}.{k}: {cls.__name__} has no option {k!r}{hint}")
            return
        names = _argument_names(cls, forwarded=registry_forwards_kwargs(cls))
        if names is None:
            return
        for k in node:
            if k != "type" and k not in names:
                hint = did_you_mean(k, names)
                hint = f"; {hint}" if hint else ""
                self.errors.append(f"{key}.{k}: {getattr(cls, '__name__', cls)} takes no argument {k!r}{hint}")

    def path(self, value: Any, key: str) -> None:
        if isinstance(value, str) and value and value not in SPECIAL_ROOTS and "://" not in value:
            if not osp.exists(osp.expanduser(value)):
                self.errors.append(f"{key}: {value!r} does not exist")

    def paths_in(self, node: Any, key: str) -> None:
        """Check every INPUT_PATH_KEYS entry anywhere under ``node``."""
        if isinstance(node, Mapping):
            for k, v in node.items():
                sub = f"{key}.{k}"
                if k in INPUT_PATH_KEYS:
                    self.path(v, sub)
                self.paths_in(v, sub)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                self.paths_in(v, f"{key}[{i}]")

    def model(self, node: Any, key: str) -> None:
        """Every dict with a ``type`` inside the model config builds from MODELS (except init_cfg)."""
        if isinstance(node, Mapping):
            self.type_(MODELS, node, key, check_args=True)
            self.model_options(node, key)
            for k, v in node.items():
                if k == "init_cfg":
                    for i, item in enumerate(v if isinstance(v, (list, tuple)) else [v]):
                        self.type_(WEIGHT_INITIALIZERS, item, f"{key}.{k}" + (f"[{i}]" if isinstance(v, (list, tuple)) else ""))
                elif isinstance(v, Mapping) and "type" in v:
                    self.model(v, f"{key}.{k}")
                elif isinstance(v, (list, tuple)):
                    for i, item in enumerate(v):
                        if isinstance(item, Mapping) and "type" in item:
                            self.model(item, f"{key}.{k}[{i}]")

    def model_options(self, node: Mapping, key: str) -> None:
        """A model class with a ``check_options(node)`` (the plugin's) checks its own option values."""
        t = node.get("type")
        if not isinstance(t, str):
            return
        try:
            with MODELS.switch_scope_and_registry(self.scope) as reg:
                cls = reg.get(t)
        except (KeyError, ImportError, ModuleNotFoundError):
            return
        check = getattr(cls, "check_options", None)
        if callable(check):
            try:
                check(node)
            except OptionError as exc:
                self.errors.append(str(exc.under(key)))

    def dataset(self, node: Any, key: str) -> None:
        if not isinstance(node, Mapping):
            return
        self.layout(self.type_(DATASETS, node, key, check_args=True), node, key)
        for k, v in node.items():
            if k == "pipeline" and isinstance(v, (list, tuple)):
                for i, t in enumerate(v):
                    self.type_(TRANSFORMS, t, f"{key}.pipeline[{i}]")
            elif k in ("dataset", "datasets"):
                for i, d in enumerate(v if isinstance(v, (list, tuple)) else [v]):
                    self.dataset(d, f"{key}.{k}" + (f"[{i}]" if isinstance(v, (list, tuple)) else ""))

    def layout(self, cls: Any, node: Mapping, key: str) -> None:
        """The data layout of a dataset type declaring ``check_layout`` (the all-in-one benchmark datasets:
        folders, pairs, list files), checked before the runner makes its work dir: MMEngine builds the
        datasets only when training starts."""
        check = getattr(cls, "check_layout", None)
        if check is None:
            return
        from ...errors import LayoutError

        try:
            check(node)
        except OptionError as exc:
            self.errors.append(f"{key}.{exc.key}: {exc.message}")
        except LayoutError as exc:
            self.errors.append(f"{key}.dataroot: {exc}")

    def loop(self, node: Any, key: str) -> None:
        """A loop config names its type (or, for ``train_cfg``, ``by_epoch``, as MMEngine allows) and
        only that loop's arguments."""
        if not isinstance(node, Mapping):
            return
        if "type" in node or key != "train_cfg":
            self.type_(LOOPS, node, key, check_args=True)
        elif "by_epoch" in node:
            from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

            cls = EpochBasedTrainLoop if node["by_epoch"] else IterBasedTrainLoop
            self.arguments(cls, {k: v for k, v in node.items() if k != "by_epoch"}, key)

    def iterations(self, node: Any) -> None:
        """``train_cfg.max_iters`` / ``max_epochs`` must be positive: a run of zero iterations would
        end at once and save an untrained model."""
        if not isinstance(node, Mapping):
            return
        for name, unit in (("max_iters", "iterations"), ("max_epochs", "epochs")):
            value = node.get(name)
            if name in node and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                self.errors.append(f"train_cfg.{name}: must be a positive whole number of {unit}, got {value!r} "
                                   f"(the run would end without training)")

    def dataloader_keys(self, node: Any, key: str) -> None:
        """The keys of a dataloader config are what MMEngine's ``build_dataloader`` reads plus the
        arguments of ``torch.utils.data.DataLoader`` (where the rest go)."""
        if not isinstance(node, Mapping):
            return
        from torch.utils.data import DataLoader

        names = sorted(set(inspect.signature(DataLoader).parameters) | set(MMENGINE_DATALOADER_KEYS))
        for k in node:
            if k not in names:
                hint = did_you_mean(k, names)
                hint = f"; {hint}" if hint else ""
                self.errors.append(f"{key}.{k}: not a dataloader option{hint}")

    def train_batches(self, loader: Any, train_cfg: Any) -> None:
        """A finite sampler with ``drop_last`` and fewer samples (per process) than ``batch_size``
        yields no batch: the run would never train. Builds the training dataset to count it (only
        in that case)."""
        if not isinstance(loader, Mapping) or not isinstance(loader.get("dataset"), Mapping):
            return
        sampler = loader.get("sampler")
        sampler_type = sampler.get("type") if isinstance(sampler, Mapping) else None
        if isinstance(sampler_type, str) and "Infinite" in sampler_type:
            return
        if loader.get("batch_sampler") is not None:
            return
        batch_size = loader.get("batch_size", 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            self.errors.append(f"train_dataloader.batch_size: must be a positive whole number, got {batch_size!r}")
            return
        if not loader.get("drop_last", False) or batch_size == 1:
            return
        import copy

        try:
            with DATASETS.switch_scope_and_registry(self.scope) as reg:
                dataset = reg.build(copy.deepcopy(dict(loader["dataset"])))
            count = len(dataset)
        except Exception as exc:  # noqa: BLE001  (reported with the key; building is the user's config)
            self.errors.append(f"train_dataloader.dataset: could not be built to count its samples "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return
        world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
        per_process = -(-count // world)
        if per_process < batch_size:
            where = f" per process ({count} over {world} processes)" if world > 1 else ""
            self.errors.append(f"train_dataloader.batch_size: {batch_size} is larger than the {per_process} "
                               f"sample(s){where} of train_dataloader.dataset, and drop_last=True drops that "
                               f"one short batch: no batch would ever be trained. Lower batch_size or set "
                               f"train_dataloader.drop_last=False")

    def many(self, registry: Registry, node: Any, key: str, check_args: bool = False) -> None:
        if isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                self.type_(registry, item, f"{key}[{i}]", check_args)
        else:
            self.type_(registry, node, key, check_args)


def check_config(cfg: Config) -> None:
    """Fail early, naming the config key, when a config names an unregistered ``type``, gives a
    model / dataset / metric / hook an argument it does not take, or names a missing input file
    or folder.

    Checks the model (every nested ``type`` against MODELS), the datasets, samplers and collate
    functions of the three dataloaders, evaluators and metrics, the optimiser wrapper, optimiser,
    constructor and parameter schedulers, loops, hooks, visualiser, log processor and runner
    type; the arguments of the loops and the keys of the dataloaders (a misspelt ``max_iter`` or
    ``batchsize`` is named with a did-you-mean); a positive ``train_cfg.max_iters`` /
    ``max_epochs``; that a finite training sampler with ``drop_last`` gets at least one full batch
    (the training dataset is built to count it only then); and the paths under ``model`` and the
    datasets in keys such as ``pretrained``, ``dataroot_gt``, ``lq_folder``, ``gt_folder``, plus
    ``load_from``. Raises :class:`ConfigError` listing every problem found, before anything is written.
    """
    c = _Checker(cfg.get("default_scope"))
    if "model" not in cfg or cfg.get("model") is None:
        c.errors.append("model: the config has no model")
    else:
        c.model(cfg.model, "model")
        c.paths_in(cfg.model, "model")
        if isinstance(cfg.model, Mapping):
            for k in MODULE_CONFIG_KEYS:
                value = cfg.model.get(k)
                if k in cfg.model and value is not None and not isinstance(value, (Mapping, torch.nn.Module)):
                    c.errors.append(f"model.{k}: expected a dict(type=...) config, got {value!r}")
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        if not isinstance(loader, Mapping):
            continue
        key = f"{split}_dataloader"
        c.dataset(loader.get("dataset"), f"{key}.dataset")
        c.paths_in(loader.get("dataset"), f"{key}.dataset")
        c.type_(DATA_SAMPLERS, loader.get("sampler"), f"{key}.sampler")
        c.type_(DATA_SAMPLERS, loader.get("batch_sampler"), f"{key}.batch_sampler")
        c.type_(FUNCTIONS, loader.get("collate_fn"), f"{key}.collate_fn")
    for split in ("val", "test"):
        ev = cfg.get(f"{split}_evaluator")
        key = f"{split}_evaluator"
        if isinstance(ev, Mapping) and "metrics" in ev:
            c.type_(EVALUATOR, ev, key)
            c.many(METRICS, ev["metrics"], f"{key}.metrics", check_args=True)
        elif ev is not None:
            c.many(METRICS, ev, key, check_args=True)
    ow = cfg.get("optim_wrapper")
    if isinstance(ow, Mapping):
        # constructor and paramwise_cfg are read by the optimiser-wrapper constructor, not the wrapper
        c.type_(OPTIM_WRAPPERS, {k: v for k, v in ow.items() if k not in ("constructor", "paramwise_cfg")},
                "optim_wrapper", check_args=True)
        c.type_(OPTIMIZERS, ow.get("optimizer"), "optim_wrapper.optimizer", check_args=True)
        ctor = ow.get("constructor")
        if isinstance(ctor, str):
            c.type_(OPTIM_WRAPPER_CONSTRUCTORS, {"type": ctor}, "optim_wrapper.constructor")
    c.many(PARAM_SCHEDULERS, cfg.get("param_scheduler"), "param_scheduler", check_args=True)
    for key in ("train_cfg", "val_cfg", "test_cfg"):
        c.loop(cfg.get(key), key)
    c.iterations(cfg.get("train_cfg"))
    for split in ("train", "val", "test"):
        c.dataloader_keys(cfg.get(f"{split}_dataloader"), f"{split}_dataloader")
    hooks = cfg.get("default_hooks") or {}
    if isinstance(hooks, Mapping):
        for name, hook in hooks.items():
            c.type_(HOOKS, hook, f"default_hooks.{name}", check_args=True)
    c.many(HOOKS, cfg.get("custom_hooks") or [], "custom_hooks", check_args=True)
    vis = cfg.get("visualizer")
    c.type_(VISUALIZERS, vis, "visualizer")
    if isinstance(vis, Mapping):
        c.many(VISBACKENDS, vis.get("vis_backends") or [], "visualizer.vis_backends")
    c.type_(LOG_PROCESSORS, cfg.get("log_processor"), "log_processor", check_args=True)
    runner_type = cfg.get("runner_type")
    if isinstance(runner_type, str):
        c.type_(RUNNERS, {"type": runner_type}, "runner_type")
    load_from = cfg.get("load_from")
    if load_from:
        c.path(load_from, "load_from")
    if not c.errors:
        c.train_batches(cfg.get("train_dataloader"), cfg.get("train_cfg"))
    if c.errors:
        raise ConfigError("; ".join(c.errors))


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
