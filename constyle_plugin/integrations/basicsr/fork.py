"""``basicsr train|test`` inside a 1.2-era BasicSR fork (NAFNet, Restormer and those built the same way).

The fork's own pipeline runs: its ``basicsr/train.py`` / ``basicsr/test.py`` ``main()``, its model
classes, losses, schedulers and checkpoint format. The plugin's entries are findable through the
fork's module scans (:func:`~.basicsr.register_with_fork_module`), so only ``network_g`` changes in
the fork's own options file (``type: ConStyleUNet``, ``backbone:`` the fork's arch entry).

For the duration of the run, and nowhere else (:class:`ForkRunFixes`):

- the command's own flags are taken off before the fork's parser sees them: ``--force_yml
  key:sub=value ...`` (BasicSR 1.4's syntax; 1.2 has no such flag) and ``--auto_resume`` (1.2-era
  forks resume from the newest state of the experiment whenever there is one);
- the parsed options are checked before anything is created on disk: every ``ConStyleUNet``
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
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ...builder import OptionError, check_file, join_keys
from .registry import ForkHost, check_network_options, point_sample_datasets
from ...safe_loading import safe_torch_load

__all__ = ["ForkRunFixes", "apply_overrides", "prepare_fork_run", "split_command_flags"]


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
            node[keys[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise OptionError("--force_yml", f"{item!r}: the value is not valid YAML ({exc})") from None


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
        self._saved: List[tuple] = []
        self._group_file: Optional[str] = None

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> "ForkRunFixes":
        # `parse` is bound by name in basicsr/train.py (whose parse_options test.py reuses): wrap
        # the original once and put the wrapper wherever it is bound.
        options = importlib.import_module("basicsr.utils.options")
        original = options.parse
        wrapped = self._wrap_parse(original)
        for name in ("basicsr.utils.options", "basicsr.train", f"basicsr.{self.command}"):
            module = importlib.import_module(name)
            if getattr(module, "parse", None) is original:
                self._patch(module, "parse", wrapped)
        self._patch(torch, "load", safe_torch_load(torch.load, cpu_only=not torch.cuda.is_available()))
        if not torch.cuda.is_available():
            # Calls that would fail without CUDA anyway: the device index of the fork's resume, and
            # hard-coded .cuda() (NAFNet's SSIM metric) that then computes on the CPU.
            self._patch(torch.cuda, "current_device", lambda: 0)
            self._patch(torch.Tensor, "cuda", _stay_on_cpu)
            self._patch(torch.nn.Module, "cuda", _stay_on_cpu)
        base_model = importlib.import_module("basicsr.models.base_model")
        base = getattr(base_model, "BaseModel", None)
        if base is not None and hasattr(base, "model_ema"):
            self._patch(base, "model_ema", _exact_frozen_ema(base.model_ema))
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
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)
        if self._group_file is not None:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            with contextlib.suppress(OSError):
                os.unlink(self._group_file)

    def _wrap_parse(self, parse: Callable) -> Callable:
        def wrapped(opt_path: str, is_train: bool = True, *args: Any, **kwargs: Any) -> Dict[str, Any]:
            if not os.path.isfile(opt_path):
                raise OptionError("-opt", f"options file not found: {opt_path!r}")
            if not self.overrides:
                opt = parse(opt_path, is_train, *args, **kwargs)
            else:
                # The fork derives paths from the options (experiments/<name>/...) inside parse:
                # apply the overrides to the file's contents first, and parse those.
                with _overridden_copy(opt_path, self.overrides) as path:
                    opt = parse(path, is_train, *args, **kwargs)
            _check_fork_options(opt)
            return opt
        return wrapped


@contextlib.contextmanager
def _overridden_copy(opt_path: str, overrides: Sequence[str]) -> Iterator[str]:
    import yaml

    try:
        with open(opt_path) as fh:
            opt = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise OptionError("-opt", f"{opt_path}: not valid YAML ({exc})") from None
    if not isinstance(opt, dict):
        raise OptionError("-opt", f"{opt_path}: expected a mapping of options")
    apply_overrides(opt, overrides)
    fd, path = tempfile.mkstemp(prefix="options_", suffix=".yml")
    try:
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(opt, fh, sort_keys=False)
        yield path
    finally:
        os.unlink(path)


def _stay_on_cpu(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


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
