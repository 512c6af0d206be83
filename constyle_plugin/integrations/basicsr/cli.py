"""The ``basicsr`` command: ``basicsr train -opt X.yml [...]`` and ``basicsr test -opt X.yml [...]``.

It imports the plugin (so its registry entries exist), then runs BasicSR's own
``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` with the current folder as the root
(``experiments/``, ``results/``, ``tb_logger/`` are created there). Every flag after the command is
BasicSR's own and reaches its parser unchanged: ``-opt``, ``--launcher``, ``--auto_resume``,
``--debug``, ``--local_rank``, ``--force_yml key:sub=value ...``.

For the duration of the run, and nowhere else, a few of basicsr 1.4.2's functions are wrapped
(:class:`RunFixes`; each replaced function's signature is checked first, :mod:`.patching`; what the
plugin's own model classes can do is theirs, :mod:`.models`):

- the command line and options are checked before anything is built or created on disk
  (:func:`check_command_line`: the ``-opt`` file, its YAML, each ``--force_yml`` item;
  :func:`~.basicsr.check_options`: a bad option fails with its key, e.g. ``network_g.backbone.type``;
  a key that the plugin's models / datasets do not read is an error with a did-you-mean, one where
  BasicSR allows extra keys a warning; ``train.total_iter`` < 1 is refused; a model class's own
  ``check_train_options``, e.g. ``train.amp`` of ``ConStyleSRModel``), and the plugin's datasets
  that use the offline sample photos get ``sample_dir`` = ``<experiment or results folder>/sample_photos``;
- a training set that gives no batch (``batch_size_per_gpu`` larger than the dataset: BasicSR drops
  the last partial batch) is refused once the dataset is built; the folders this run made are then
  removed, and an earlier run's folder that BasicSR archived gets its name back;
- ``load_resume_state``: BasicSR maps the state onto ``torch.cuda.current_device()`` (fails without
  CUDA) and calls ``torch.load`` with the default ``weights_only``; here the run's own ``.state``
  file is read onto the CPU (or the current GPU when training on one) with ``weights_only=True`` and
  only the classes a BasicSR scheduler state needs (``collections.Counter``) allowed; ``--auto_resume``
  takes the newest state that loads together with its networks, and says which files it skipped and
  why; an explicit ``path.resume_state`` that does not load is an error naming the file;
- every other ``torch.load`` of the run that does not pass ``weights_only`` (BasicSR's
  ``load_network`` for ``pretrain_network_g`` and ``basicsr test``) loads with
  ``weights_only=True`` whatever the torch version (:mod:`constyle_plugin.safe_loading`);
- exact resumption: BasicSR restarts the interrupted epoch from its first batch and does not
  save random generator states, so a resumed run sees other data than an uninterrupted one. Here
  each checkpoint also saves the Python / NumPy / torch generator states
  (``training_states/<iter>.rank<r>.rng``), and the resumed epoch skips the batches already
  trained on, then restores the generators just before its first batch. With
  ``num_worker_per_gpu: 0`` the resumed run's losses equal an uninterrupted run's; with workers,
  the data order is the same but workers' random augmentations are re-seeded;
- validation leaves the global random generators as it found them, so ``val_freq`` does not
  change the training trajectory;
- checkpoints are written atomically (:func:`atomic_torch_save`: temporary file, fsync, rename), so
  a run killed while saving keeps its previous checkpoints and ``--auto_resume`` picks the last
  complete state;
- ``--launcher pytorch`` without CUDA: the command sets up the process group with gloo itself and
  BasicSR's parser sees ``--launcher none`` (its ``init_dist`` sets a CUDA device and asks for NCCL);
  the plugin's model classes wrap DistributedDataParallel on the CPU themselves;
- SIGINT / SIGTERM (``basicsr train``): the model's ``optimize_parameters`` finishes the current
  iteration, the state after it is saved as a scheduled checkpoint is (networks, training state,
  generator states, atomically; all ranks stop after the same iteration), and the command says where
  and how to resume (``--auto_resume``) and exits 130 / 143; a second Ctrl-C stops at once
  (:mod:`constyle_plugin.interrupt`). Data-loader workers ignore both signals.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import functools
import importlib
import os
import pickle
import random
import re
import shutil
import sys
from decimal import Decimal
from os import path as osp
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ...errors import close_matches
from ...core.prompter import atomic_write
from ...safe_loading import STATE_SAFE_GLOBALS, safe_torch_load
from .patching import HostChanged, Patches
from ...interrupt import StopSignals, TrainingStopped, ignore_stop_signals, signal_name
from .registry import (MODEL, ForkHost, OptionError, check_options, current_host, format_registration_report,
                       point_sample_datasets, register_here, registration_report)

__all__ = ["RunFixes", "atomic_torch_save", "capture_rng", "check_command_line", "load_state_file", "main",
           "restore_rng"]

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--launcher {none,pytorch,slurm}] [--auto_resume]
                  [--debug] [--local_rank N] [--force_yml key:sub=value [key:sub=value ...]]

Runs BasicSR's own training or test pipeline with the constyle-plugin registered
(ConStyleUNet, ConStyleV2, NAFNet/Restormer/ConvUNet where absent, ConStyleV2PretrainModel,
ConStyleSRModel, the stage-1 losses and the plugin's datasets). Experiments are written under
./experiments, test results under ./results. `basicsr train -h` shows BasicSR's own flags.

Inside a 1.2-era BasicSR fork (NAFNet, Restormer: a `basicsr` package without registries), it
runs the fork's own basicsr/train.py or basicsr/test.py with the plugin's names findable there;
--force_yml works there too, and the fork resumes by itself from its newest state."""


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


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _rng_path(states_dir: str, current_iter: int, rank: int) -> str:
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
        raise RuntimeError(f"{path}: the training state holds objects that safe loading does not allow "
                           f"({first}); nothing in it was run") from None


def _state_map_location(opt: Dict[str, Any]) -> Any:
    if opt.get("num_gpu", 0) and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        return lambda storage, loc: storage.cuda(device_id)
    return "cpu"


class _Resume:
    """What the resumed run needs beyond BasicSR's state: the generator states and where it stopped."""

    def __init__(self, epoch: int, current_iter: int, rng: Optional[Dict[str, Any]]) -> None:
        self.epoch = epoch
        self.iter = current_iter
        self.rng = rng


class RunFixes:
    """Wraps a few basicsr functions for one ``basicsr train|test`` run, and restores them afterwards.

    See the module docstring for what each wrapper does and why.
    """

    def __init__(self, command: str, stop: Optional[StopSignals] = None) -> None:
        self.command = command
        self.stop = stop  # SIGINT / SIGTERM: save after the current iteration and raise TrainingStopped
        self._train_sampler: Any = None
        self._iters_per_epoch = 1
        self.resume: Optional[_Resume] = None
        self.skipped: List[str] = []  # resume states passed over, with the reason
        self._patches = Patches()
        self._folders: List[tuple] = []  # (run folder, outermost missing folder or None, parent's entries before)
        self._model_built = False
        self._forced: Dict[str, str] = {}  # dotted key -> the --force_yml entry that set it

    # -------------------------------------------------------------------------------- patching
    def __enter__(self) -> "RunFixes":
        pipeline = importlib.import_module(f"basicsr.{self.command}")  # the names its pipeline looks up
        replace = self._patches.replace
        try:
            # BasicSR has no step between parsing the options and creating the run's folders: check there.
            replace(pipeline, "parse_options", ("root_path", "is_train"), self._wrap_parse_options)
            # BasicSR builds the model (where the plugin's model classes take over) after the folders and the
            # data: checkpoints with generator states, atomic saves and generator-neutral validation must
            # hold for every model class a run names, BasicSR's own included.
            replace(pipeline, "build_model", ("opt",), self._wrap_build_model)
            # BasicSR's load_network (pretrain_network_g, basicsr test) calls torch.load without weights_only.
            replace(torch, "load", ("f", "map_location"), safe_torch_load, host="torch", written_for="torch 2.x",
                    more=True)
            if self.command == "train":
                # basicsr's load_resume_state maps the state onto torch.cuda.current_device() (fails without
                # CUDA), loads it unsafely and takes the newest state even when it does not load.
                replace(pipeline, "load_resume_state", ("opt",), lambda _: self.load_resume_state)
                # The training sampler is made inside: resuming mid-epoch and an epoch without a batch are
                # handled on the loader and sampler it returns.
                replace(pipeline, "create_train_val_dataloader", ("opt", "logger"), self._wrap_dataloaders)
        except BaseException:  # a host that changed: leave nothing replaced
            self._patches.restore()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._patches.restore()
        if exc_type is not None and issubclass(exc_type, OptionError) and not self._model_built:
            self.take_back_folders()

    # -------------------------------------------------------------------------------- folders
    def _watch_folders(self, opt: Dict[str, Any]) -> None:
        """Note what exists where the run will make its folders (the experiment or results folder, the
        tb_logger folder), to take them back on a refusal."""
        paths = [opt["path"].get("experiments_root") or opt["path"].get("results_root")]
        if opt.get("is_train"):
            paths.append(osp.join(opt.get("root_path") or os.getcwd(), "tb_logger", opt["name"]))
        for path in [osp.abspath(p) for p in paths if p]:
            top = None
            if not osp.exists(path):  # the outermost folder the run will create (experiments/ on a first run)
                top = path
                while not osp.exists(osp.dirname(top)) and osp.dirname(top) != top:
                    top = osp.dirname(top)
            before = set(os.listdir(osp.dirname(path))) if osp.isdir(osp.dirname(path)) else set()
            self._folders.append((path, top, before))

    def take_back_folders(self) -> None:
        """Remove the folders this run created and give an archived predecessor its name back
        (a run refused after BasicSR made its experiment folder leaves the disk as it found it)."""
        import logging

        for handler in list(logging.getLogger("basicsr").handlers):  # the log file lives in the folder
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.getLogger("basicsr").removeHandler(handler)
        while self._folders:
            path, top, before = self._folders.pop()
            if top is not None:
                shutil.rmtree(top, ignore_errors=True)
                continue
            parent, base = osp.split(path)  # BasicSR renamed the existing folder to <path>_archived_<time>
            new = sorted(n for n in set(os.listdir(parent)) - before if n.startswith(base + "_archived_"))
            if new:
                shutil.rmtree(path, ignore_errors=True)
                os.rename(osp.join(parent, new[-1]), path)

    # -------------------------------------------------------------------------------- options
    def _wrap_parse_options(self, parse_options: Callable) -> Callable:
        def wrapped(root_path: str, is_train: bool = True):
            self._forced = check_command_line(sys.argv[1:])
            launcher = _cpu_process_group(sys.argv)
            argv = sys.argv
            if launcher:  # basicsr's init_dist would ask for a CUDA device: the group is set up already
                sys.argv = [a for i, a in enumerate(argv) if not a.startswith("--launcher")
                            and (i == 0 or argv[i - 1] != "--launcher")] + ["--launcher", "none"]
            try:
                opt, args = parse_options(root_path, is_train=is_train)
            finally:
                sys.argv = argv
            if launcher:
                opt["dist"], args.launcher = True, launcher
            if "manual_seed" in self._forced and self.command == "train" and isinstance(opt.get("manual_seed"), int):
                # BasicSR seeds the generators before it applies --force_yml: seed them with the value asked for
                from basicsr.utils import set_random_seed

                set_random_seed(opt["manual_seed"] + opt.get("rank", 0))
            self._watch_folders(opt)
            try:
                prepare_options(opt, warn=self.warn)
            except OptionError as exc:
                entry = self._forced.get(exc.key)
                raise (OptionError(exc.key, f"{exc.message} (set by --force_yml {entry})") if entry else exc) from None
            return opt, args
        return wrapped

    def warn(self, message: str) -> None:
        print(f"basicsr {self.command}: warning: {message}", file=sys.stderr, flush=True)

    # -------------------------------------------------------------------------------- resuming
    def load_resume_state(self, opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """basicsr.train.load_resume_state, reading onto the CPU without CUDA, with safe loading.

        ``--auto_resume`` takes the newest state that loads, together with the networks it points to
        (``models/net_<x>_<iter>.pth``); a state or network that does not load (truncated, not a
        checkpoint) is skipped with a message naming the file and why. An explicit
        ``path.resume_state`` that does not load is an :class:`OptionError` naming the file.
        """
        from basicsr.utils import check_resume, scandir

        if opt["auto_resume"]:
            state_dir = osp.join("experiments", opt["name"], "training_states")
            states = []
            if osp.isdir(state_dir):
                states = sorted((float(v.split(".state")[0]) for v in
                                 scandir(state_dir, suffix="state", recursive=False, full_path=False)), reverse=True)
            for number in states:
                path = osp.join(state_dir, f"{number:.0f}.state")
                try:
                    state = self._load_state(opt, path)
                except _Unloadable as exc:
                    self.skipped.append(f"skipped {exc.path} ({exc.reason})")
                    print(f"basicsr {self.command}: --auto_resume: {self.skipped[-1]}", file=sys.stderr, flush=True)
                    continue
                opt["path"]["resume_state"] = path
                break
            else:
                if states:
                    raise OptionError("--auto_resume", f"no training state in {state_dir} loads: "
                                      + "; ".join(self.skipped) + ". Without --auto_resume the run starts "
                                      f"afresh (BasicSR renames experiments/{opt['name']} to "
                                      f"{opt['name']}_archived_<time>)")
                self._check_pretrained_fit(opt)
                return None
        elif opt["path"].get("resume_state"):
            path = opt["path"]["resume_state"]
            if not osp.isfile(path):
                raise OptionError("path.resume_state", f"training state not found: {path!r}")
            try:
                state = self._load_state(opt, path)
            except _Unloadable as exc:
                raise OptionError("path.resume_state", f"{exc.path} cannot be loaded ({exc.reason})") from None
        else:
            self._check_pretrained_fit(opt)
            return None
        self._check_networks_fit(opt, path, int(state["iter"]))
        check_resume(opt, state["iter"])
        for name, value in opt["path"].items():  # the checkpoints check_resume points at must exist
            if name.startswith("pretrain_network") and value is not None and not osp.isfile(value):
                raise OptionError(f"path.{name}", f"{value!r} (the network saved with {path}) is missing")
        rng_file = _rng_path(osp.dirname(path), state["iter"], _rank())
        rng = None
        if osp.isfile(rng_file):
            try:
                rng = load_state_file(rng_file)
            except Exception as exc:  # optional: resuming without it only changes the augmentations drawn
                self.skipped.append(f"ignored {rng_file} ({_reason(exc)}): random augmentations will differ "
                                    f"from an uninterrupted run")
        self.resume = _Resume(int(state["epoch"]), int(state["iter"]), rng)
        return state

    def _check_pretrained_fit(self, opt: Dict[str, Any]) -> None:
        """A fresh run: each ``path.pretrain_network_<x>`` loaded strictly (``strict_load_<x>``, BasicSR's
        default) must fit the network the options build; else an :class:`OptionError` naming the file and
        the first missing / unexpected / mis-shaped keys with their shapes, before anything is created."""
        for key in [k for k in opt if k.startswith("network_")]:
            suffix = key.replace("network_", "")
            path = opt["path"].get(f"pretrain_{key}")
            if not path or not opt["path"].get(f"strict_load_{suffix}", True) or not osp.isfile(path):
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise OptionError(f"path.pretrain_{key}", f"{path} cannot be loaded ({_reason(exc)})") from None
            param_key = opt["path"].get(f"param_key_{suffix}", "params")
            if isinstance(saved, dict) and param_key not in saved and "params" in saved:
                param_key = "params"  # BasicSR's load_network falls back to it too
            if isinstance(saved, dict) and isinstance(saved.get(param_key), dict):
                saved = saved[param_key]
            if not isinstance(saved, dict):
                raise OptionError(f"path.pretrain_{key}", f"{path} holds no network weights")
            saved = {k[len("module."):] if k.startswith("module.") else k: v for k, v in saved.items()}
            wanted = _built_state(opt[key])
            if wanted is None:
                continue
            missing = [k for k in wanted if k not in saved]
            unexpected = [k for k in saved if k not in wanted]
            misshaped = [f"{k} {list(saved[k].shape)} vs {list(v.shape)}" for k, v in wanted.items()
                         if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape)]
            parts = [f"{len(items)} {what} key(s), first: {', '.join(items[:3])}"
                     for what, items in (("mis-shaped (file vs options)", misshaped), ("missing", missing),
                                         ("unexpected", unexpected)) if items]
            if parts:
                raise OptionError(f"path.pretrain_{key}", f"{path} does not fit {key} ({opt[key].get('type')}): "
                                  + "; ".join(parts) + f". Point it at a checkpoint of this network, or set "
                                  f"path.strict_load_{suffix}: false to load only the tensors that fit")

    def _check_networks_fit(self, opt: Dict[str, Any], state_path: str, iteration: int) -> None:
        """Each network saved with the state must load into the network the options build now; else an
        :class:`OptionError` naming the option, the first mismatched tensor and its two shapes. Runs
        before BasicSR writes anything into the run's folder (its options copy, the log)."""
        from basicsr.utils.registry import ARCH_REGISTRY

        ignored = opt["path"].get("ignore_resume_networks") or []
        for key in [k for k in opt if k.startswith("network_") and k not in ignored]:
            suffix = key.replace("network_", "")
            net_path = osp.join(opt["path"]["models"], f"net_{suffix}_{iteration}.pth")
            saved = torch.load(net_path, map_location="cpu", weights_only=True)
            param_key = opt["path"].get(f"param_key_{suffix}", "params")
            if isinstance(saved, dict) and isinstance(saved.get(param_key), dict):
                saved = saved[param_key]
            saved = {k[len("module."):] if k.startswith("module.") else k: v for k, v in saved.items()}
            options = copy.deepcopy(opt[key])
            try:  # not basicsr's build_network: its log line would set up the run's logger without its file
                wanted = ARCH_REGISTRY.get(options.pop("type"))(**options).state_dict()
            except Exception:  # building fails the same way later, with its own message
                return
            wrong = [(k, list(saved[k].shape), list(v.shape)) for k, v in wanted.items()
                     if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
            missing = [k for k in wanted if k not in saved]
            if not wrong and not missing:
                continue
            forced = [item for dotted, item in self._forced.items() if dotted == key or dotted.startswith(key + ".")]
            if wrong:
                name, before, now = wrong[0]
                what = (f"{net_path} holds {name} as {before}, the options now build {now} ({len(wrong)} "
                        f"mismatched tensor(s))")
            else:
                what = f"{net_path} lacks {missing[0]} ({len(missing)} missing tensor(s))"
            raise OptionError(key, f"the network does not fit the run being resumed ({state_path}): {what}"
                              + (f"; changed by --force_yml {', '.join(forced)}" if forced else "")
                              + ". Resume with the run's own network options, or start a new run under another "
                                "name; nothing in the run's folder was changed")

    def _load_state(self, opt: Dict[str, Any], path: str) -> Dict[str, Any]:
        """The state at ``path`` and a check that the networks saved with it load; :class:`_Unloadable`
        naming the file that does not."""
        try:
            state = load_state_file(path, map_location=_state_map_location(opt))
            if not isinstance(state, dict) or not {"epoch", "iter", "optimizers", "schedulers"} <= set(state):
                raise ValueError("not a BasicSR training state (no epoch / iter / optimizers / schedulers)")
        except Exception as exc:  # any failure to read it is reported with the file; nothing in it ran
            raise _Unloadable(path, _reason(exc)) from None
        ignored = opt["path"].get("ignore_resume_networks") or []
        for key in [k for k in opt if k.startswith("network_") and k not in ignored]:
            net_path = osp.join(opt["path"]["models"], f"net_{key.replace('network_', '')}_{state['iter']}.pth")
            if not osp.isfile(net_path):
                raise _Unloadable(net_path, f"missing; the network saved with {path}")
            try:
                torch.load(net_path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise _Unloadable(net_path, f"{_reason(exc)}; the network saved with {path}") from None
        return state

    def _wrap_dataloaders(self, create: Callable) -> Callable:
        def wrapped(opt: Dict[str, Any], logger: Any):
            for note in self.skipped:
                logger.warning(f"Resume: {note}.")
            result = create(opt, logger)
            train_loader, train_sampler = result[0], result[1]
            from basicsr.data.data_sampler import EnlargedSampler

            if type(train_sampler) is EnlargedSampler:  # this run's sampler only: no host name is replaced
                train_sampler.__class__ = _resumable(EnlargedSampler)
            self._train_sampler = train_sampler
            self._iters_per_epoch = len(train_loader) if train_loader is not None else 1
            if self.stop is not None and train_loader is not None and train_loader.num_workers > 0:
                train_loader.worker_init_fn = ignore_stop_signals(train_loader.worker_init_fn)
            if train_loader is not None and len(train_loader) == 0:
                raise _no_batch(opt, train_loader)
            if self.resume is not None and train_loader is not None and hasattr(train_sampler, "resume_from"):
                per_epoch = len(train_loader)
                done = self.resume.iter - self.resume.epoch * per_epoch
                if 0 <= done <= per_epoch:
                    train_sampler.resume_from(self.resume.epoch, done * train_loader.batch_size, self.resume.rng)
                    note = (f"Resuming inside epoch {self.resume.epoch}: skipping its first {done} of {per_epoch} "
                            f"batches (already trained on)")
                    if self.resume.rng is None:
                        note += "; no random generator state was saved with this checkpoint, so random " \
                                "augmentations will differ from an uninterrupted run"
                    logger.info(note + ".")
                else:
                    logger.warning(f"Resume: iteration {self.resume.iter} does not fall in epoch {self.resume.epoch} "
                                   f"of {per_epoch} iterations (was the dataset or batch size changed?); "
                                   f"the epoch restarts from its first batch.")
            return result
        return wrapped

    def _wrap_build_model(self, build_model: Callable) -> Callable:
        def wrapped(opt: Dict[str, Any]):
            try:
                model = build_model(opt)
            except OptionError as exc:
                raise _locate(exc, opt) from exc
            self._model_built = True
            save, validation = model.save, model.validation

            def save_with_rng(epoch: int, current_iter: int) -> None:
                rng = capture_rng()  # before saving, in case a host's save draws random numbers
                if current_iter != -1:  # first, so that a complete .state always has its .rng
                    states_dir = opt["path"]["training_states"]
                    os.makedirs(states_dir, exist_ok=True)
                    atomic_write(_rng_path(states_dir, current_iter, _rank()), lambda tmp: torch.save(rng, tmp))
                with atomic_torch_save():
                    save(epoch, current_iter)
                restore_rng(rng)

            def rng_neutral_validation(*args: Any, **kwargs: Any) -> Any:
                with preserved_rng():
                    return validation(*args, **kwargs)

            model.save = save_with_rng
            model.validation = rng_neutral_validation
            if self.stop is not None:
                model.optimize_parameters = self._stop_after(model.optimize_parameters, save_with_rng, opt)
            return model
        return wrapped

    def _stop_after(self, optimize: Callable, save: Callable, opt: Dict[str, Any]) -> Callable:
        """``model.optimize_parameters`` that, once a stop signal came (any rank), saves the state after
        this iteration as a scheduled checkpoint would (networks, training state, generator states) and
        raises :class:`TrainingStopped`; ``--auto_resume`` continues from it exactly."""
        def wrapped(current_iter: int, *args: Any, **kwargs: Any) -> Any:
            result = optimize(current_iter, *args, **kwargs)
            if not self.stop.agreed():
                return result
            from basicsr.utils import get_root_logger

            epoch = getattr(self._train_sampler, "epoch", None)
            if epoch is None:  # the epoch this iteration's batch came from
                epoch = (current_iter - 1) // max(1, self._iters_per_epoch)
            logger = get_root_logger()
            logger.info(f"{signal_name(self.stop.signum)} received: saving models and training states after "
                        f"iteration {current_iter}, then stopping.")
            save(epoch, current_iter)
            saved = [osp.join(opt["path"]["models"], f"net_{k.replace('network_', '')}_{current_iter}.pth")
                     for k in opt if k.startswith("network_")]
            saved.append(osp.join(opt["path"]["training_states"], f"{current_iter}.state"))
            logger.info(f"Stopped after iteration {current_iter}; resume with --auto_resume.")
            raise TrainingStopped(self.stop.signum, current_iter, saved)
        return wrapped


def _built_state(options: Dict[str, Any]) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict of the network ``options`` build, or ``None`` when it does not build (building
    fails the same way later, with its own message)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    options = copy.deepcopy(options)
    try:  # not basicsr's build_network: its log line would set up the run's logger without its file
        return ARCH_REGISTRY.get(options.pop("type"))(**options).state_dict()
    except Exception:
        return None


class _Unloadable(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, (EOFError, RuntimeError)) and ("zip archive" in first or "central directory" in first
                                                        or isinstance(exc, EOFError)):
        text = f"truncated or not a checkpoint: {text}"
    return text


def _no_batch(opt: Dict[str, Any], loader: Any) -> OptionError:
    """The refusal for a training loader without a single batch (BasicSR drops the last partial batch)."""
    train = opt["datasets"]["train"]
    samples = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
    ratio = train.get("dataset_enlarge_ratio", 1)
    world = opt.get("world_size", 1)
    detail = f"{len(loader.dataset)} training samples"
    if ratio != 1 or world != 1:
        detail += f" x dataset_enlarge_ratio {ratio} / {world} processes = {samples} per process"
    per = (f" ({loader.batch_size} with {opt.get('num_gpu')} GPUs)" if loader.batch_size != train["batch_size_per_gpu"]
           else "")
    return OptionError("datasets.train.batch_size_per_gpu",
                       f"{train['batch_size_per_gpu']}{per} is larger than the {detail}, and BasicSR drops the "
                       f"last incomplete batch, so an epoch has no batch and nothing would train; use at most "
                       f"{samples} (or more data, or dataset_enlarge_ratio / repeat)")


@contextlib.contextmanager
def atomic_torch_save() -> Iterator[None]:
    """Within the block, ``torch.save(obj, path)`` to a file path writes a temporary file beside it,
    fsyncs it and renames it into place (:func:`~constyle_plugin.core.prompter.atomic_write`): a crash
    mid-write leaves the previous file of that name intact and no partial file under the name.
    Saves to file objects are unchanged. BasicSR's ``save_network`` / ``save_training_state`` write
    with ``torch.save`` straight to the final path; the ``basicsr`` command runs a model's ``save``
    inside this block."""
    original = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, (str, os.PathLike)):
            atomic_write(f, lambda tmp: original(obj, tmp, *args, **kwargs))
        else:
            original(obj, f, *args, **kwargs)

    torch.save = save
    try:
        yield
    finally:
        torch.save = original


def _cpu_process_group(argv: Sequence[str]) -> Optional[str]:
    """``--launcher pytorch`` without CUDA: set up the process group with gloo here (basicsr's
    ``init_dist`` calls ``torch.cuda.set_device`` and asks for NCCL) and return the launcher; None where
    basicsr sets up the group itself (CUDA) or there is none."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--launcher", default="none")
    launcher = parser.parse_known_args(list(argv[1:]))[0].launcher
    if launcher == "none" or (torch.cuda.is_available() and torch.cuda.device_count() > 0):
        return None
    if launcher != "pytorch":
        raise OptionError("--launcher", f"{launcher!r} needs CUDA here; on the CPU use --launcher pytorch "
                                        f"(torch.distributed.run), which runs with the gloo backend")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")
    return launcher


def _locate(exc: OptionError, opt: Dict[str, Any]) -> OptionError:
    """An error raised by the ConStyleUNet builder names keys inside the network's options; put the
    network's key (``network_g``) in front when it is the only ConStyleUNet of the run."""
    if exc.key.split(".")[0] in opt:
        return exc
    nets = [k for k, v in opt.items() if k.startswith("network_") and isinstance(v, dict)
            and v.get("type") == "ConStyleUNet"]
    return exc.under(nets[0]) if len(nets) == 1 else exc


@functools.lru_cache(maxsize=None)
def _resumable(base: type) -> type:
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


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------
def prepare_options(opt: Dict[str, Any], warn: Optional[Callable[[str], None]] = None) -> None:
    """Check the parsed options and point the sample-photo datasets at the run's folder."""
    if opt.get("num_gpu", 0) and not torch.cuda.is_available():
        raise OptionError("num_gpu", f"{opt['num_gpu']} GPU(s) asked for but CUDA is not available here; "
                                     f"use `num_gpu: auto` (or 0) to run on the CPU")
    if not opt.get("is_train"):
        # `basicsr test` on a training options file evaluates its val / test sets only.
        datasets = opt.get("datasets") or {}
        for phase in [p for p in datasets if p.split("_")[0] not in ("val", "test")]:
            del datasets[phase]
        if not datasets:
            raise OptionError("datasets", "no val_* or test_* dataset to test on")
        for key in [k for k in opt if k.startswith("network_")]:
            if opt["path"].get(f"pretrain_{key}") is None:
                raise OptionError(f"path.pretrain_{key}", "set it to the trained checkpoint to test, e.g. "
                                  f"--force_yml path:pretrain_{key}=experiments/<name>/models/net_g_latest.pth")
    point_sample_datasets(opt)
    resuming = bool(opt.get("auto_resume") or opt["path"].get("resume_state"))
    check_options(opt, resuming=resuming, warn=warn)
    _check_queue(opt)
    if opt.get("is_train"):  # values only the model class can judge (ConStyleSRModel: train.amp)
        check_train = getattr(current_host().find(MODEL, opt.get("model_type")), "check_train_options", None)
        if callable(check_train):
            check_train(opt)


_EXPONENT_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _refuse_number_as_text(item: str, keys: str, value: str) -> None:
    """BasicSR's ``--force_yml`` makes numbers only of plain digits (``2000``, ``0.001``): ``1e-3`` would
    reach the options as text and fail far away (``lr='1e-3'`` deep inside the optimiser)."""
    if _EXPONENT_NUMBER.fullmatch(value):
        raise OptionError("--force_yml", f"{item!r}: BasicSR's --force_yml reads only plain digits as numbers, "
                                         f"so {value!r} would reach the options as text; write "
                                         f"{keys}={format(Decimal(value), 'f')}")


def check_command_line(args: Sequence[str]) -> Dict[str, str]:
    """Check what BasicSR's ``parse_options`` reads before it reads it: the ``-opt`` file exists and is
    a YAML mapping with the keys the parser needs, and each ``--force_yml`` item is ``key:sub=value``
    (one ``=``) whose parent keys exist. Returns ``{dotted key: item}`` of the ``--force_yml`` items.
    Without ``-opt`` BasicSR's own parser reports it. Raises :class:`OptionError`."""
    import yaml
    from basicsr.utils.options import ordered_yaml

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-opt", type=str)
    parser.add_argument("--force_yml", nargs="+", default=None)
    known, _ = parser.parse_known_args(list(args))
    if known.opt is None:
        return {}
    path = known.opt
    if not osp.isfile(path):
        raise OptionError("-opt", f"options file not found: {path!r}" if not osp.isdir(path)
                          else f"{path!r} is a folder, not an options file")
    try:
        with open(path) as fh:
            opt = yaml.load(fh, Loader=ordered_yaml()[0])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptionError("-opt", f"{path}: not valid YAML: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError("-opt", f"{path}: cannot be read ({exc})") from None
    if not isinstance(opt, dict):
        raise OptionError("-opt", f"{path}: expected a mapping of options, got {type(opt).__name__}")
    forced: Dict[str, str] = {}
    for item in known.force_yml or []:
        if item.count("=") != 1 or not item.split("=")[0].strip():
            raise OptionError("--force_yml", f"{item!r} is not key:sub=value (BasicSR takes exactly one '='"
                                             f" per item, and no spaces around it)")
        keys, value = (part.strip() for part in item.split("="))
        names = keys.split(":")
        node: Any = opt
        for i, name in enumerate(names[:-1]):
            if not isinstance(node.get(name), dict):
                close = _close(name, node)
                raise OptionError("--force_yml", f"{item!r}: the options have no section "
                                                 f"`{'.'.join(names[:i + 1])}` to set `{names[i + 1]}` in"
                                                 + (f"; did you mean {close[0]!r}?" if close else ""))
            node = node[name]
        if value.startswith("["):  # BasicSR evaluates it as Python
            try:
                ast.literal_eval(value)
            except (SyntaxError, ValueError):
                raise OptionError("--force_yml", f"{item!r}: {value!r} is not a list of plain values (BasicSR "
                                                 f"reads it as Python: e.g. [1, 2] or ['a', 'b'], strings quoted)"
                                  ) from None
        _refuse_number_as_text(item, keys, value)
        node[names[-1]] = value
        forced[".".join(names)] = item
    for key in ("name", "num_gpu", "datasets", "path"):
        if key not in opt:
            raise OptionError(key, f"missing from {path} (BasicSR's option parser needs it)")
    if not isinstance(opt["name"], str) or not opt["name"]:
        raise OptionError("name", f"expected the run's name (a string), got {opt['name']!r}")
    for key in ("datasets", "path"):
        if not isinstance(opt[key], dict):
            raise OptionError(key, f"expected a mapping, got {opt[key]!r}")
    for phase, dataset in opt["datasets"].items():
        if not isinstance(dataset, dict):
            raise OptionError(f"datasets.{phase}", f"expected a dataset dict with a `type`, got {dataset!r}")
    return forced


def _close(name: str, node: Dict[str, Any]) -> List[str]:
    return close_matches(name, node)


def _check_queue(opt: Dict[str, Any]) -> None:
    """A ConStyleMoCo queue must be a multiple of the batch size (all ranks)."""
    net = opt.get("network_g") or {}
    train = (opt.get("datasets") or {}).get("train")
    if net.get("type") != "ConStyleMoCo" or not isinstance(train, dict) or net.get("pretrained"):
        return
    per_gpu = int(train.get("batch_size_per_gpu", 1))
    batch = per_gpu * (opt.get("world_size", 1) if opt.get("dist") else max(1, int(opt.get("num_gpu") or 0)))
    queue = int(net.get("queue_size", 65760))
    if queue % batch:
        raise OptionError("network_g.queue_size", f"{queue} is not a multiple of the batch size {batch} "
                                                  f"(datasets.train.batch_size_per_gpu x GPUs)")


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``basicsr {train,test} -opt X.yml [BasicSR flags]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("train", "test"):
        print(f"basicsr: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2

    try:
        host = current_host()
    except ImportError as exc:
        print(f"basicsr {command}: no usable basicsr here ({exc}). Install BasicSR with "
              f"pip install 'constyle-plugin[basicsr]', or run inside a BasicSR fork installed with its "
              f"`python setup.py develop`.", file=sys.stderr)
        return 2
    register_here()
    print(f"basicsr {command}: {format_registration_report(registration_report())}", file=sys.stderr, flush=True)
    if command == "train":
        from ...threads import pick_torch_threads

        note = pick_torch_threads()
        if note:
            print(f"basicsr {command}: {note}", file=sys.stderr, flush=True)
    stop: Optional[StopSignals] = None
    user_args = list(rest)
    if isinstance(host, ForkHost):
        from .fork import prepare_fork_run

        try:
            argv0, rest, fixes, pipeline = prepare_fork_run(command, rest)
        except OptionError as exc:
            print(f"basicsr {command}: {exc}", file=sys.stderr)
            return 2
    else:
        import basicsr.test
        import basicsr.train

        root = os.getcwd()
        stop = StopSignals(f"basicsr {command}") if command == "train" else None
        argv0, fixes = f"basicsr {command}", RunFixes(command, stop=stop)
        run = basicsr.train.train_pipeline if command == "train" else basicsr.test.test_pipeline

        def pipeline() -> None:
            run(root)

    saved_argv = sys.argv
    sys.argv = [argv0, *rest]
    try:
        with stop if stop is not None else contextlib.nullcontext(), fixes:
            pipeline()
    except OptionError as exc:
        print(f"basicsr {command}: error in the options: {exc}", file=sys.stderr)
        return 2
    except HostChanged as exc:
        print(f"basicsr {command}: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(_stopped_message(command, exc, user_args), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if stop is None or stop.signum is None:
            raise
        print(f"basicsr {command}: stopped at once by a second Ctrl-C; nothing was saved after the last "
              f"checkpoint", file=sys.stderr, flush=True)
        return 130
    finally:
        sys.argv = saved_argv
    if stop is not None and stop.signum is not None:  # the signal came after the last iteration
        print(f"basicsr {command}: {signal_name(stop.signum)} received after the last iteration; the run finished "
              f"and saved its final networks", file=sys.stderr, flush=True)
        return 128 + stop.signum
    return 0


def _stopped_message(command: str, exc: TrainingStopped, args: Sequence[str]) -> str:
    import shlex

    again = list(args) if "--auto_resume" in args else [*args, "--auto_resume"]
    saved = ", ".join(osp.relpath(p) for p in exc.saved)
    return (f"basicsr {command}: stopped by {signal_name(exc.signum)} after iteration {exc.iteration}; saved "
            f"{saved}. Resume with: basicsr {command} {shlex.join(again)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
