"""The fixes a ``basicsr train|test`` run gets (:class:`RunFixes`): a few of basicsr's pipeline
functions replaced through :class:`~constyle_plugin.patches.Patches` for the run only (option checks
before the folders are made, safe and exact resumption, a training set without a batch refused,
checkpoints with generator states written atomically, generator-neutral validation, a clean stop on
SIGINT / SIGTERM). See :mod:`.cli` for what each does and why.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import os
import shutil
import sys
from os import path as osp
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from ...errors import ConStyleError
from ...files import atomic_write
from ...safe_loading import safe_torch_load
from ...patches import Patches
from ...interrupt import StopSignals, TrainingStopped, ignore_stop_signals, signal_name
from .registry import OptionError

from .command_line import check_command_line, cpu_process_group, prepare_options
from .resume import (Resume, Unloadable, capture_rng, load_state_file, preserved_rng, rank, restore_rng,
                     resumable_sampler, rng_path, state_map_location, unloadable_reason)

__all__ = ['RunFixes', 'atomic_torch_save', 'built_state']


class RunFixes:
    """Wraps a few basicsr functions for one ``basicsr train|test`` run, and restores them afterwards.

    See the module docstring for what each wrapper does and why.
    """

    def __init__(self, command: str, stop: Optional[StopSignals] = None) -> None:
        self.command = command
        self.stop = stop  # SIGINT / SIGTERM: save after the current iteration and raise TrainingStopped
        self._train_sampler: Any = None
        self._iters_per_epoch = 1
        self._batch_size = 1
        self.resume: Optional[Resume] = None
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
            launcher = cpu_process_group(sys.argv)
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
                except Unloadable as exc:
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
            except Unloadable as exc:
                raise OptionError("path.resume_state", f"{exc.path} cannot be loaded ({exc.reason})") from None
        else:
            self._check_pretrained_fit(opt)
            return None
        self._check_networks_fit(opt, path, int(state["iter"]))
        total = (opt.get("train") or {}).get("total_iter")
        if isinstance(total, (int, float)) and int(state["iter"]) >= int(total):
            raise OptionError("train.total_iter", f"{int(total)}, but the run being resumed ({path}) is already at "
                              f"iteration {int(state['iter'])}: nothing would be trained. To train on, resume with a "
                              f"longer schedule (--force_yml train:total_iter=N with N > {int(state['iter'])}, the "
                              f"scheduler's periods or milestones to match); nothing in the run's folder was changed")
        check_resume(opt, state["iter"])
        for name, value in opt["path"].items():  # the checkpoints check_resume points at must exist
            if name.startswith("pretrain_network") and value is not None and not osp.isfile(value):
                raise OptionError(f"path.{name}", f"{value!r} (the network saved with {path}) is missing")
        rng_file = rng_path(osp.dirname(path), state["iter"], rank())
        rng = None
        if osp.isfile(rng_file):
            try:
                rng = load_state_file(rng_file)
            except Exception as exc:  # optional: resuming without it only changes the augmentations drawn
                self.skipped.append(f"ignored {rng_file} ({unloadable_reason(exc)}): random augmentations will differ "
                                    f"from an uninterrupted run")
        self.resume = Resume(int(state["epoch"]), int(state["iter"]), rng)
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
                raise OptionError(f"path.pretrain_{key}", f"{path} cannot be loaded ({unloadable_reason(exc)})") from None
            param_key = opt["path"].get(f"param_key_{suffix}", "params")
            if isinstance(saved, dict) and param_key not in saved and "params" in saved:
                param_key = "params"  # BasicSR's load_network falls back to it too
            if isinstance(saved, dict) and isinstance(saved.get(param_key), dict):
                saved = saved[param_key]
            if not isinstance(saved, dict):
                raise OptionError(f"path.pretrain_{key}", f"{path} holds no network weights")
            saved = {k[len("module."):] if k.startswith("module.") else k: v for k, v in saved.items()}
            wanted = built_state(opt[key])
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
        ignored = opt["path"].get("ignore_resume_networks") or []
        for key in [k for k in opt if k.startswith("network_") and k not in ignored]:
            suffix = key.replace("network_", "")
            net_path = osp.join(opt["path"]["models"], f"net_{suffix}_{iteration}.pth")
            saved = torch.load(net_path, map_location="cpu", weights_only=True)
            param_key = opt["path"].get(f"param_key_{suffix}", "params")
            if isinstance(saved, dict) and isinstance(saved.get(param_key), dict):
                saved = saved[param_key]
            saved = {k[len("module."):] if k.startswith("module.") else k: v for k, v in saved.items()}
            wanted = built_state(opt[key])
            if wanted is None:  # the options do not build: the run's own build says why, before training
                return
            wrong = [(k, list(saved[k].shape), list(v.shape)) for k, v in wanted.items()
                     if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
            missing = [k for k in wanted if k not in saved]
            if not wrong and not missing:
                continue
            forced = self._forced_changes(opt, key, net_path)
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

    def _forced_changes(self, opt: Dict[str, Any], key: str, net_path: str) -> List[str]:
        """The ``--force_yml`` entries under ``key`` whose value differs from the one the run being resumed
        started with (its options copy, ``--force_yml`` included); all of them when that copy is not there."""
        import yaml

        from .restore import read_options, recorded_options

        try:
            copy = recorded_options(Path(net_path))
            recorded = read_options(copy) if copy is not None else None
        except (ConStyleError, OSError, ValueError, yaml.YAMLError):  # no single readable copy: name every entry
            recorded = None
        missing = object()

        def value(tree: Any, dotted: str) -> Any:
            for part in dotted.split("."):
                if not isinstance(tree, dict) or part not in tree:
                    return missing
                tree = tree[part]
            return tree

        return [item for dotted, item in self._forced.items() if (dotted == key or dotted.startswith(key + "."))
                and (recorded is None or value(recorded, dotted) != value(opt, dotted))]

    def _load_state(self, opt: Dict[str, Any], path: str) -> Dict[str, Any]:
        """The state at ``path`` and a check that the networks saved with it load; :class:`Unloadable`
        naming the file that does not."""
        try:
            state = load_state_file(path, map_location=state_map_location(opt))
            if not isinstance(state, dict) or not {"epoch", "iter", "optimizers", "schedulers"} <= set(state):
                raise ConStyleError("not a BasicSR training state (no epoch / iter / optimizers / schedulers)")
        except Exception as exc:  # any failure to read it is reported with the file; nothing in it ran
            raise Unloadable(path, unloadable_reason(exc)) from None
        ignored = opt["path"].get("ignore_resume_networks") or []
        for key in [k for k in opt if k.startswith("network_") and k not in ignored]:
            net_path = osp.join(opt["path"]["models"], f"net_{key.replace('network_', '')}_{state['iter']}.pth")
            if not osp.isfile(net_path):
                raise Unloadable(net_path, f"missing; the network saved with {path}")
            try:
                torch.load(net_path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise Unloadable(net_path, f"{unloadable_reason(exc)}; the network saved with {path}") from None
        return state

    def _wrap_dataloaders(self, create: Callable) -> Callable:
        def wrapped(opt: Dict[str, Any], logger: Any):
            for note in self.skipped:
                logger.warning(f"Resume: {note}.")
            result = create(opt, logger)
            train_loader, train_sampler = result[0], result[1]
            from basicsr.data.data_sampler import EnlargedSampler

            if type(train_sampler) is EnlargedSampler:  # this run's sampler only: no host name is replaced
                self._patches.replace(train_sampler, "__class__", ("dataset", "num_replicas", "rank", "ratio"),
                                      resumable_sampler)
            self._train_sampler = train_sampler
            self._iters_per_epoch = len(train_loader) if train_loader is not None else 1
            self._batch_size = int(getattr(train_loader, "batch_size", 1) or 1)
            if self.stop is not None and train_loader is not None and train_loader.num_workers > 0:
                train_loader.worker_init_fn = ignore_stop_signals(train_loader.worker_init_fn)
            if train_loader is not None and len(train_loader) == 0:
                raise _no_batch(opt, train_loader)
            if self.resume is not None and train_loader is not None and hasattr(train_sampler, "resume_from"):
                per_epoch = len(train_loader)
                done = self.resume.iter - self.resume.epoch * per_epoch
                position = (self.resume.rng or {}).get("position")
                if isinstance(position, dict) and position.get("epoch") == self.resume.epoch \
                        and position.get("batch_size") != train_loader.batch_size:
                    skip, before = int(position["samples"]), int(position["batch_size"])
                    train_sampler.resume_from(self.resume.epoch, skip, self.resume.rng)
                    note = (f"Resuming inside epoch {self.resume.epoch} with batch size {train_loader.batch_size} "
                            f"(it was {before}): skipping its first {skip} samples (already trained on: "
                            f"{skip // max(before, 1)} batches of {before})")
                elif 0 <= done <= per_epoch:
                    train_sampler.resume_from(self.resume.epoch, done * train_loader.batch_size, self.resume.rng)
                    note = (f"Resuming inside epoch {self.resume.epoch}: skipping its first {done} of {per_epoch} "
                            f"batches (already trained on)")
                else:
                    note = None
                if note is not None:
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
                    # where the epoch stands in samples (of this rank): a resume with another batch size
                    # skips the samples already trained on, not as many of its own batches
                    done = max(current_iter - epoch * self._iters_per_epoch, 0)
                    saved = {**rng, "position": {"epoch": int(epoch), "samples": int(done * self._batch_size),
                                                 "batch_size": int(self._batch_size)}}
                    atomic_write(rng_path(states_dir, current_iter, rank()), lambda tmp: torch.save(saved, tmp))
                with atomic_torch_save():
                    save(epoch, current_iter)
                restore_rng(rng)

            def rng_neutral_validation(*args: Any, **kwargs: Any) -> Any:
                with preserved_rng():
                    return validation(*args, **kwargs)

            replace = self._patches.replace
            replace(model, "save", ("epoch", "current_iter"), lambda _: save_with_rng)
            replace(model, "validation", ("dataloader", "current_iter", "tb_logger", "save_img"),
                    lambda _: rng_neutral_validation, more=True)
            if self.stop is not None:
                replace(model, "optimize_parameters", ("current_iter",),
                        lambda optimize: self._stop_after(optimize, save_with_rng, opt), more=True)
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


def built_state(options: Dict[str, Any]) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict of the network ``options`` build, or ``None`` when it does not build (building
    fails the same way later, with its own message)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    options = copy.deepcopy(options)
    try:  # not basicsr's build_network: its log line would set up the run's logger without its file
        return ARCH_REGISTRY.get(options.pop("type"))(**options).state_dict()
    except Exception:
        return None


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
    fsyncs it and renames it into place (:func:`~constyle_plugin.files.atomic_write`): a crash
    mid-write leaves the previous file of that name intact and no partial file under the name.
    Saves to file objects are unchanged. BasicSR's ``save_network`` / ``save_training_state`` write
    with ``torch.save`` straight to the final path; the ``basicsr`` command runs a model's ``save``
    inside this block."""
    def atomic(save: Callable) -> Callable:
        def wrapped(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(f, (str, os.PathLike)):
                atomic_write(f, lambda tmp: save(obj, tmp, *args, **kwargs))
            else:
                save(obj, f, *args, **kwargs)
        return wrapped

    patches = Patches()
    patches.replace(torch, "save", ("obj", "f"), atomic, host="torch", written_for="torch 2.x", more=True)
    try:
        yield
    finally:
        patches.restore()


def _locate(exc: OptionError, opt: Dict[str, Any]) -> OptionError:
    """An error raised by the ConStyleUNet builder names keys inside the network's options; put the
    network's key (``network_g``) in front when it is the only ConStyleUNet of the run."""
    if exc.key.split(".")[0] in opt:
        return exc
    nets = [k for k, v in opt.items() if k.startswith("network_") and isinstance(v, dict)
            and v.get("type") == "ConStyleUNet"]
    return exc.under(nets[0]) if len(nets) == 1 else exc
