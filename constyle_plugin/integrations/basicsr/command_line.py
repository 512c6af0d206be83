"""The ``basicsr`` command's checks before anything is built or created on disk: the command line
(:func:`check_command_line`: the ``-opt`` file, its YAML, each ``--force_yml`` item), the options the
plugin prepares (:func:`prepare_options`), and ``--launcher pytorch`` without CUDA
(:func:`cpu_process_group`).
"""
from __future__ import annotations

import argparse
import ast
import re
from decimal import Decimal
from os import path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ...errors import close_matches
from .options import check_options, drop_absent_test_sets, point_sample_datasets
from .registry import MODEL, OptionError, current_host


__all__ = ['check_command_line', 'cpu_process_group', 'prepare_options']


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------
def prepare_options(opt: Dict[str, Any], warn: Optional[Callable[[str], None]] = None) -> None:
    """Check the parsed options, point the sample-photo datasets at the run's folder and leave out the
    all-in-one test sets the data root does not hold (partial validation, with a warning)."""
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
    drop_absent_test_sets(opt, warn)
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


def cpu_process_group(argv: Sequence[str]) -> Optional[str]:
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
