"""``basicsr train|test`` inside a 1.2-era BasicSR fork (NAFNet, Restormer and those built the same way).

The fork's own pipeline runs: its ``basicsr/train.py`` / ``basicsr/test.py`` ``main()``, its model
classes, losses, schedulers and checkpoint format. The plugin's entries are findable through the
fork's module scans (:func:`~.basicsr.register_with_fork_module`), so only ``network_g`` changes in
the fork's own options file (``type: ConStyleUNet``, ``backbone:`` the fork's arch entry).

For the duration of the run, and nowhere else (:class:`ForkRunFixes`; each replaced function's
signature is checked first, :mod:`constyle_plugin.patches`):

- the command's own flags are taken off before the fork's parser sees them: ``--force_yml
  key:sub=value ...`` (BasicSR 1.4's syntax; 1.2 has no such flag) and ``--auto_resume`` (1.2-era
  forks resume from the newest state of the experiment whenever there is one);
- the options file (with the ``--force_yml`` items applied) is parsed by the fork's own ``parse``
  and checked before anything is created on disk; when the run changes anything in it, the fork
  reads a checked copy (``-opt`` points there): every ``ConStyleUNet``
  network (backbone type found in the fork, prompter file, inject targets, stage names) and the
  ``path.pretrain_network_*`` files; ``num_gpu: auto`` means the GPUs visible, or 0 (the CPU);
  ``num_gpu`` > 0 without CUDA is refused with what to write instead; the plugin's datasets that
  read the offline sample photos export them into the run's folder, as with PyPI BasicSR;
- ``torch.load`` called without ``weights_only`` loads with ``weights_only=True`` (only
  ``collections.Counter`` / ``OrderedDict`` allowed besides tensors and plain containers), whatever
  the torch version; without CUDA, the fork's resume (``storage.cuda(torch.cuda.current_device())``)
  reads onto the CPU, and ``.cuda()`` calls (NAFNet's SSIM metric hard-codes them) leave tensors
  and modules on the CPU;
- validation that calls ``torch.distributed`` collectives without a process group (NAFNet's
  ``dist_validation``) runs: with ``--launcher none`` a one-process group is set up (gloo for CPU
  tensors, NCCL for CUDA ones) and taken down afterwards;
- an EMA copy (Restormer's ``model_ema``) copies the parameters that do not train (the frozen
  prompter) exactly instead of averaging them, so the prompter stays bit-identical.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ...core.builder import OptionError, check_file, join_keys
from ...patches import Patches
from .options import point_sample_datasets
from .registry import ForkHost, check_network_options
from ...safe_loading import safe_torch_load

__all__ = ["ForkRunFixes", "apply_overrides", "cuda_calls_on_cpu", "prepare_fork_run", "split_command_flags"]


def split_command_flags(args: Sequence[str]) -> Tuple[List[str], List[str], bool]:
    """``(args for the fork's parser, --force_yml items, --auto_resume given)``."""
    rest: List[str] = []
    overrides: List[str] = []
    auto_resume = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--force_yml":
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                overrides.append(args[i])
                i += 1
            continue
        if arg == "--auto_resume":
            auto_resume = True
        else:
            rest.append(arg)
        i += 1
    return rest, overrides, auto_resume


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def apply_overrides(opt: Dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``key:sub=value`` items (values read as YAML) to the options, in place."""
    import yaml

    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0]:
            raise OptionError("--force_yml", f"{item!r} is not key:sub=value")
        path, value = item.split("=", 1)
        keys = path.split(":")
        node: Any = opt
        for i, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                if k in node:
                    raise OptionError("--force_yml", f"{item!r}: {':'.join(keys[:i + 1])} is not a mapping")
                node[k] = {}
            node = node[k]
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise OptionError("--force_yml", f"{item!r}: the value is not valid YAML ({exc})") from None
        if isinstance(parsed, str) and _EXPONENT_NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads 1e-3 (no dot) as text; it is the number meant
        node[keys[-1]] = parsed


def _check_fork_options(opt: Dict[str, Any]) -> None:
    gpus = opt.get("num_gpu", 0)
    if gpus == "auto":
        opt["num_gpu"] = gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and not torch.cuda.is_available():
        raise OptionError("num_gpu", f"{gpus} GPU(s) asked for but CUDA is not available here; set num_gpu: 0 "
                                     f"(or auto), e.g. --force_yml num_gpu=0")
    point_sample_datasets(opt)
    host = ForkHost()
    for key in [k for k in opt if k.startswith("network_")]:
        net = opt[key]
        if isinstance(net, dict) and net.get("type") == "ConStyleUNet":
            check_network_options(net, key, host=host)
    if not opt.get("path", {}).get("resume_state"):
        for name, value in (opt.get("path") or {}).items():
            if name.startswith("pretrain_network") and value is not None:
                check_file(join_keys("path", name), value, "checkpoint")


class ForkRunFixes:
    """Wraps a few of the fork's functions for one run, and restores them afterwards (see the
    module docstring for each and why)."""

    def __init__(self, command: str, overrides: Sequence[str], launcher: str) -> None:
        self.command = command
        self.overrides = list(overrides)
        self.launcher = launcher
        self._patches = Patches()
        self._group_file: Optional[str] = None
        self._options_copy: Optional[str] = None

    def __enter__(self) -> "ForkRunFixes":
        self._point_at_checked_options()
        fork = "a BasicSR 1.2-era fork (NAFNet, Restormer)"
        try:
            # The fork's load_network and resume call torch.load without weights_only (unsafe before torch 2.6).
            self._patches.replace(torch, "load", ("f", "map_location"),
                                  lambda load: safe_torch_load(load, cpu_only=not torch.cuda.is_available()),
                                  host="torch", written_for="torch 2.x", more=True)
            if not torch.cuda.is_available():
                # Calls that fail without CUDA: the device index of the fork's resume
                # (storage.cuda(torch.cuda.current_device()), read onto the CPU by the torch.load above), and
                # hard-coded .cuda() (NAFNet's SSIM metric) that then computes on the CPU.
                self._patches.replace(torch.cuda, "current_device", (), lambda _: _device_zero,
                                      host="torch", written_for="torch 2.x")
                _leave_cuda_calls_on_cpu(self._patches)
            base = getattr(importlib.import_module("basicsr.models.base_model"), "BaseModel", None)
            if base is not None and hasattr(base, "model_ema"):
                # The fork's EMA (Restormer's ImageCleanModel) averages the frozen prompter too, which
                # drifts by rounding; the fork's model classes are the fork's own, so no subclass can fix it.
                self._patches.replace(base, "model_ema", ("self", "decay"), _exact_frozen_ema, written_for=fork)
        except BaseException:  # a host that changed: leave nothing replaced
            self._patches.restore()
            raise
        if self.launcher == "none" and torch.distributed.is_available() and not torch.distributed.is_initialized():
            fd, self._group_file = tempfile.mkstemp(prefix="constyle_pg_")
            os.close(fd)
            os.unlink(self._group_file)  # the FileStore creates it
            # The fork may validate on the CPU (num_gpu: 0) on a machine with CUDA: a backend per device.
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend, init_method=f"file://{self._group_file}",
                                                 rank=0, world_size=1)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patches.restore()
        if self._options_copy is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._options_copy)
        if self._group_file is not None:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            with contextlib.suppress(OSError):
                os.unlink(self._group_file)

    def _point_at_checked_options(self) -> None:
        """Check the ``-opt`` file (with the --force_yml items applied) as the fork will parse it, and
        when the run changes anything in it, point ``sys.argv`` at a checked copy: the fork derives its
        folders from the options inside its own ``parse``, so what it reads must already be final."""
        args = sys.argv
        if "-opt" not in args or args.index("-opt") + 1 >= len(args):
            return  # the fork's own parser reports it
        at = args.index("-opt") + 1
        opt_path = args[at]
        if not os.path.isfile(opt_path):
            raise OptionError("-opt", f"options file not found: {opt_path!r}")
        raw = _read_options(opt_path)
        apply_overrides(raw, self.overrides)
        with _written(raw) as path:
            opt = importlib.import_module("basicsr.utils.options").parse(path, is_train=self.command == "train")
        _check_fork_options(opt)
        changed = bool(self.overrides) or raw.get("num_gpu") != opt["num_gpu"]
        raw["num_gpu"] = opt["num_gpu"]
        for phase, dataset in (opt.get("datasets") or {}).items():
            if isinstance(dataset, dict) and "sample_dir" in dataset and "sample_dir" not in raw["datasets"][phase]:
                raw["datasets"][phase]["sample_dir"] = dataset["sample_dir"]
                changed = True
        if changed:
            fd, self._options_copy = tempfile.mkstemp(prefix="options_", suffix=".yml")
            _dump(raw, os.fdopen(fd, "w"))
            args[at] = self._options_copy


def _read_options(opt_path: str) -> Dict[str, Any]:
    import yaml

    try:
        with open(opt_path) as fh:
            opt = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise OptionError("-opt", f"{opt_path}: not valid YAML ({exc})") from None
    if not isinstance(opt, dict):
        raise OptionError("-opt", f"{opt_path}: expected a mapping of options")
    return opt


def _dump(opt: Dict[str, Any], fh: Any) -> None:
    import yaml

    with fh:
        yaml.safe_dump(opt, fh, sort_keys=False)


@contextlib.contextmanager
def _written(opt: Dict[str, Any]) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="options_", suffix=".yml")
    try:
        _dump(opt, os.fdopen(fd, "w"))
        yield path
    finally:
        os.unlink(path)


def _stay_on_cpu(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


def _leave_cuda_calls_on_cpu(patches: Patches) -> None:
    patches.replace(torch.Tensor, "cuda", (), lambda _: _stay_on_cpu, host="torch", written_for="torch 2.x")
    patches.replace(torch.nn.Module, "cuda", ("self", "device"), lambda _: _stay_on_cpu, host="torch",
                    written_for="torch 2.x")


@contextlib.contextmanager
def cuda_calls_on_cpu() -> Iterator[None]:
    """Without CUDA, the hard-coded ``.cuda()`` calls of a fork's code (NAFNet's SSIM metric moves its
    window with one) leave tensors and modules on the CPU while the context lasts; with CUDA, nothing
    changes."""
    if torch.cuda.is_available():
        yield
        return
    patches = Patches()
    try:
        _leave_cuda_calls_on_cpu(patches)
        yield
    finally:
        patches.restore()


def _device_zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _exact_frozen_ema(model_ema: Callable) -> Callable:
    def wrapped(self: Any, decay: float = 0.999) -> None:
        model_ema(self, decay)
        net_g = self.get_bare_model(self.net_g) if hasattr(self, "get_bare_model") else self.net_g
        frozen = {k: p for k, p in net_g.named_parameters() if not p.requires_grad}
        with torch.no_grad():
            for k, p in self.net_g_ema.named_parameters():
                if k in frozen:
                    p.copy_(frozen[k])
    return wrapped


def prepare_fork_run(command: str, args: Sequence[str]) -> Tuple[str, List[str], ForkRunFixes, Callable[[], None]]:
    """What the ``basicsr`` command needs to run the fork's ``basicsr/<command>.py``: ``(argv[0],
    the arguments for the fork's parser, the run's fixes, the fork's main)``. Raises OptionError
    when the fork has no ``main()`` there."""
    rest, overrides, _ = split_command_flags(args)
    launcher = "none"
    if "--launcher" in rest and rest.index("--launcher") + 1 < len(rest):
        launcher = rest[rest.index("--launcher") + 1]
    module = importlib.import_module(f"basicsr.{command}")
    if not callable(getattr(module, "main", None)):
        raise OptionError("", f"this fork's basicsr/{command}.py has no main()")
    return f"basicsr/{command}.py", rest, ForkRunFixes(command, overrides, launcher), module.main
