"""The ``basicsr`` command: ``basicsr train -opt X.yml [...]`` and ``basicsr test -opt X.yml [...]``.

It imports the plugin (so its registry entries exist), then runs BasicSR's own
``basicsr.train.train_pipeline`` / ``basicsr.test.test_pipeline`` with the current folder as the root
(``experiments/``, ``results/``, ``tb_logger/`` are created there). Every flag after the command is
BasicSR's own and reaches its parser unchanged: ``-opt``, ``--launcher``, ``--auto_resume``,
``--debug``, ``--local_rank``, ``--force_yml key:sub=value ...``.

For the duration of the run, and nowhere else, a few of basicsr 1.4.2's functions are wrapped
(:class:`RunFixes`):

- options are checked before anything is built (:func:`~.basicsr.check_options`: a bad option fails
  with its key, e.g. ``network_g.backbone.type``), and the plugin's datasets that use the offline
  sample photos get ``sample_dir`` = ``<experiment or results folder>/sample_photos``;
- ``load_resume_state``: BasicSR maps the state onto ``torch.cuda.current_device()`` (fails without
  CUDA) and calls ``torch.load`` with the default ``weights_only``; here the run's own ``.state``
  file is read onto the CPU (or the current GPU when training on one) with ``weights_only=True`` and
  only the classes a BasicSR scheduler state needs (``collections.Counter``) allowed;
- every other ``torch.load`` of the run that does not pass ``weights_only`` (BasicSR's
  ``load_network`` for ``pretrain_network_g`` and ``basicsr test``) loads with
  ``weights_only=True`` whatever the torch version (:mod:`.safe_loading`);
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
- ``--launcher pytorch`` without CUDA: the process group uses gloo and DistributedDataParallel
  runs on the CPU (basicsr sets a CUDA device and asks for NCCL).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import sys
from os import path as osp
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..prompter import atomic_write
from .basicsr import OptionError, check_options
from .safe_loading import STATE_SAFE_GLOBALS, safe_torch_load

__all__ = ["RunFixes", "atomic_torch_save", "capture_rng", "load_state_file", "main", "restore_rng"]

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--launcher {none,pytorch,slurm}] [--auto_resume]
                  [--debug] [--local_rank N] [--force_yml key:sub=value [key:sub=value ...]]

Runs BasicSR's own training or test pipeline with the constyle-plugin registered
(ConStyleUNet, ConStyleV2, NAFNet/Restormer/ConvUNet where absent, ConStyleV2PretrainModel,
ConStyleSRModel, the stage-1 losses and the plugin's datasets). Experiments are written under
./experiments, test results under ./results. `basicsr train -h` shows BasicSR's own flags.

Inside a 1.2-era BasicSR fork (NAFNet, Restormer: a `basicsr` package without registries), it
runs the fork's own basicsr/train.py or basicsr/test.py with the plugin's names findable there;
--force_yml works there too, and the fork resumes by itself from its newest state."""

_PLUGIN_DATASETS = {"MixDegradationDataset": ("dataroot_gt", "sample_photos"),
                    "ConStylePretrainDataset": ("dataroot", "sample_classes")}


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

    def __init__(self, command: str) -> None:
        self.command = command
        self.resume: Optional[_Resume] = None
        self._saved: List[tuple] = []

    # -------------------------------------------------------------------------------- patching
    def _patch(self, module: Any, name: str, value: Any) -> None:
        self._saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    def __enter__(self) -> "RunFixes":
        import basicsr.test as bs_test
        import basicsr.train as bs_train

        self._patch(bs_train, "parse_options", self._wrap_parse_options(bs_train.parse_options))
        self._patch(bs_test, "parse_options", self._wrap_parse_options(bs_test.parse_options))
        self._patch(bs_train, "load_resume_state", self.load_resume_state)
        self._patch(bs_train, "create_train_val_dataloader",
                    self._wrap_dataloaders(bs_train.create_train_val_dataloader))
        self._patch(bs_train, "EnlargedSampler", _make_resumable_sampler(bs_train.EnlargedSampler))
        self._patch(bs_train, "build_model", self._wrap_build_model(bs_train.build_model))
        self._patch(bs_test, "build_model", self._wrap_build_model(bs_test.build_model))
        import basicsr.utils.options as bs_options
        from basicsr.models.base_model import BaseModel

        self._patch(bs_options, "init_dist", _cpu_aware_init_dist(bs_options.init_dist))
        # BasicSR's load_network (pretrain_network_g, basicsr test) calls torch.load without weights_only
        self._patch(torch, "load", safe_torch_load(torch.load))
        self._patch(BaseModel, "model_to_device", _cpu_aware_model_to_device(BaseModel.model_to_device))
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._saved:
            module, name, value = self._saved.pop()
            setattr(module, name, value)

    # -------------------------------------------------------------------------------- options
    def _wrap_parse_options(self, parse_options: Callable) -> Callable:
        def wrapped(root_path: str, is_train: bool = True):
            opt, args = parse_options(root_path, is_train=is_train)
            prepare_options(opt)
            return opt, args
        return wrapped

    # -------------------------------------------------------------------------------- resuming
    def load_resume_state(self, opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """basicsr.train.load_resume_state, reading onto the CPU without CUDA, with safe loading."""
        from basicsr.utils import check_resume, scandir

        path = None
        if opt["auto_resume"]:
            state_dir = osp.join("experiments", opt["name"], "training_states")
            if osp.isdir(state_dir):
                states = [v for v in scandir(state_dir, suffix="state", recursive=False, full_path=False)]
                if states:
                    latest = max(float(v.split(".state")[0]) for v in states)
                    path = osp.join(state_dir, f"{latest:.0f}.state")
                    opt["path"]["resume_state"] = path
        elif opt["path"].get("resume_state"):
            path = opt["path"]["resume_state"]
        if path is None:
            return None
        if not osp.isfile(path):
            raise OptionError("path.resume_state", f"training state not found: {path!r}")
        state = load_state_file(path, map_location=_state_map_location(opt))
        check_resume(opt, state["iter"])
        for name, value in opt["path"].items():  # the checkpoints check_resume points at must exist
            if name.startswith("pretrain_network") and value is not None and not osp.isfile(value):
                raise OptionError(f"path.{name}", f"{value!r} (the network saved with {path}) is missing")
        rng_file = _rng_path(osp.dirname(path), state["iter"], _rank())
        rng = load_state_file(rng_file) if osp.isfile(rng_file) else None
        self.resume = _Resume(int(state["epoch"]), int(state["iter"]), rng)
        return state

    def _wrap_dataloaders(self, create: Callable) -> Callable:
        def wrapped(opt: Dict[str, Any], logger: Any):
            result = create(opt, logger)
            train_loader, train_sampler = result[0], result[1]
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
            return model
        return wrapped


@contextlib.contextmanager
def atomic_torch_save() -> Iterator[None]:
    """Within the block, ``torch.save(obj, path)`` to a file path writes a temporary file beside it,
    fsyncs it and renames it into place (:func:`~constyle_plugin.prompter.atomic_write`): a crash
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


def _cpu_aware_init_dist(init_dist: Callable) -> Callable:
    """basicsr's ``init_dist`` calls ``torch.cuda.set_device`` and defaults to NCCL; without CUDA the
    process group is set up with gloo on the CPU instead (``--launcher pytorch`` on a CPU machine)."""
    def wrapped(launcher: str, backend: str = "nccl", **kwargs: Any) -> None:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return init_dist(launcher, backend=backend, **kwargs)
        if launcher != "pytorch":
            raise OptionError("--launcher", f"{launcher!r} needs CUDA here; on the CPU use --launcher pytorch "
                                            f"(torch.distributed.run), which runs with the gloo backend")
        kwargs.pop("port", None)
        torch.distributed.init_process_group(backend="gloo", **kwargs)
    return wrapped


def _cpu_aware_model_to_device(model_to_device: Callable) -> Callable:
    """BaseModel.model_to_device passes ``device_ids=[torch.cuda.current_device()]`` to
    DistributedDataParallel, which fails without CUDA; on the CPU the module is wrapped without
    device ids."""
    def wrapped(self: Any, net: torch.nn.Module) -> torch.nn.Module:
        if not (self.opt.get("dist") and self.device.type == "cpu"):
            return model_to_device(self, net)
        net = net.to(self.device)
        return torch.nn.parallel.DistributedDataParallel(
            net, find_unused_parameters=self.opt.get("find_unused_parameters", False))
    return wrapped


def _locate(exc: OptionError, opt: Dict[str, Any]) -> OptionError:
    """An error raised by the ConStyleUNet builder names keys inside the network's options; put the
    network's key (``network_g``) in front when it is the only ConStyleUNet of the run."""
    if exc.key.split(".")[0] in opt:
        return exc
    nets = [k for k, v in opt.items() if k.startswith("network_") and isinstance(v, dict)
            and v.get("type") == "ConStyleUNet"]
    return exc.under(nets[0]) if len(nets) == 1 else exc


def _make_resumable_sampler(base: type) -> type:
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
def prepare_options(opt: Dict[str, Any]) -> None:
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
    folder = opt["path"].get("experiments_root") or opt["path"].get("results_root")
    for dataset in (opt.get("datasets") or {}).values():
        if not isinstance(dataset, dict):
            continue
        root_key, special = _PLUGIN_DATASETS.get(dataset.get("type"), (None, None))
        if root_key and dataset.get(root_key) in (None, special) and not dataset.get("sample_dir"):
            dataset["sample_dir"] = osp.join(folder, special)
    resuming = bool(opt.get("auto_resume") or opt["path"].get("resume_state"))
    check_options(opt, resuming=resuming)
    _check_queue(opt)


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

    import constyle_plugin  # noqa: F401  (registers with basicsr as it is imported)
    from .basicsr import ForkHost, current_host, register_here

    try:
        host = current_host()
    except ImportError as exc:
        print(f"basicsr {command}: no usable basicsr here ({exc}). Install BasicSR with "
              f"pip install 'constyle-plugin[basicsr]', or run inside a BasicSR fork installed with its "
              f"`python setup.py develop`.", file=sys.stderr)
        return 2
    register_here()
    if isinstance(host, ForkHost):
        from .basicsr_fork import run_fork

        return run_fork(command, rest)
    import basicsr.test
    import basicsr.train

    root = os.getcwd()
    saved_argv = sys.argv
    sys.argv = [f"basicsr {command}", *rest]
    try:
        with RunFixes(command):
            if command == "train":
                basicsr.train.train_pipeline(root)
            else:
                basicsr.test.test_pipeline(root)
    except OptionError as exc:
        print(f"basicsr {command}: error in the options: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
