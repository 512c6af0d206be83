"""How ``constyle restore`` reads a BasicSR run, and how ``constyle evaluate`` runs the basicsr metrics
importable here (see :mod:`constyle_plugin.runs`): the options file (with the ``--force_yml`` overrides
BasicSR recorded in its copy beside the experiment), the checkpoint's ``params`` / ``params_ema`` and
the network, built through the basicsr importable here (PyPI registries or a 1.2-era fork's scans).
Importing this module does not import basicsr."""
from __future__ import annotations

import ast
import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml
from torch import Tensor, nn

from ...core.prompter import flatten_checkpoint, read_state_dict
from ...errors import ConStyleError, RestoreError
from ...runs import TrainingRun, without_prompter_file
from .fork import cuda_calls_on_cpu
from .registry import ARCH, ForkHost, current_host

__all__ = ["BASICSR_COPY_HEADER", "READER", "BasicSRReader", "read_options", "recorded_options"]

BASICSR_COPY_HEADER = "# GENERATE TIME:"  # first line of the options copy BasicSR's copy_opt_file writes


def _force_yml_value(value: str) -> Any:
    """A ``--force_yml`` value as BasicSR's option parser reads it: ``~`` / ``none``, ``true`` / ``false``,
    ``!!float X``, plain digits as numbers, ``[...]`` as a Python literal, anything else as text."""
    if value == "~" or value.lower() == "none":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.startswith("!!float"):
        return float(value[len("!!float"):])
    if value.isdigit():
        return int(value)
    if value.replace(".", "", 1).isdigit() and value.count(".") < 2:
        return float(value)
    if value.startswith("["):
        return ast.literal_eval(value)
    return value


def _apply_force_yml(opt: Dict[str, Any], entries: Sequence[str]) -> None:
    """BasicSR's ``--force_yml a:b:c=value`` overrides, applied to a parsed options dict."""
    for entry in entries:
        keys, _, value = entry.partition("=")
        node = opt
        parts = [k.strip() for k in keys.split(":")]
        for key in parts[:-1]:
            node = node.setdefault(key, {})
        node[parts[-1]] = _force_yml_value(value.strip())


def _recorded_force_yml(line: str) -> List[str]:
    """The ``--force_yml`` items of a command BasicSR recorded as ``# CMD: ...`` (the arguments joined
    by spaces, quotes gone): a word without ``=`` belongs to the item before it (``lr=!!float 1e-3``,
    ``periods=[1, 2]``); the items end at the next ``--flag``."""
    items: List[str] = []
    for word in re.split(r"\s+", line.split("--force_yml", 1)[1].strip()):
        if word.startswith("--"):
            break
        if "=" in word or not items:
            items.append(word)
        else:
            items[-1] += " " + word
    return [item for item in items if "=" in item]


def read_options(config: Path) -> Dict[str, Any]:
    """A BasicSR options file, with the ``--force_yml`` overrides that BasicSR records in the copy it
    keeps beside the experiment (``# CMD: ... --force_yml k=v``)."""
    text = config.read_text()
    opt = yaml.safe_load(text)
    if not isinstance(opt, dict) or "network_g" not in opt:
        raise ConStyleError(f"--config {config}: no network_g section: not a BasicSR options file")
    forced: List[str] = []
    for line in text.splitlines():
        if line.startswith("#") and "--force_yml" in line:
            forced += _recorded_force_yml(line)
    try:
        _apply_force_yml(opt, forced)
    except (ValueError, SyntaxError) as exc:
        raise RestoreError(f"--config {config}: a recorded --force_yml value does not read as BasicSR reads it "
                           f"({exc}); give the run's options with --config") from None
    return opt


def recorded_options(checkpoint: Path) -> Optional[Path]:
    """The options file BasicSR copied into ``experiments/NAME/`` for the run that wrote
    ``experiments/NAME/models/CHECKPOINT`` (``copy_opt_file`` heads the copy with ``# GENERATE TIME``)."""
    if checkpoint.parent.name != "models":
        return None
    found = []
    for path in sorted(checkpoint.parent.parent.glob("*.yml")) + sorted(checkpoint.parent.parent.glob("*.yaml")):
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                first = fh.readline()
        except OSError:
            continue
        if first.startswith(BASICSR_COPY_HEADER):
            found.append(path)
    if len(found) > 1:
        raise RestoreError(f"--config: {checkpoint.parent.parent} holds {len(found)} options files written by "
                           f"BasicSR ({', '.join(p.name for p in found)}); pass the one of this run with --config")
    return found[0] if found else None


def _basicsr_states(checkpoint: Path) -> Dict[str, Dict[str, Tensor]]:
    """``params`` as "model" and ``params_ema`` as "ema" (a file with one of them: "model")."""
    preferred = read_state_dict(checkpoint)  # errors name the file; params_ema preferred
    if checkpoint.suffix == ".safetensors":
        return {"model": preferred}
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)  # readable: read_state_dict read it
    if isinstance(raw, dict) and isinstance(raw.get("params"), dict) and isinstance(raw.get("params_ema"), dict):
        return {"model": flatten_checkpoint({"params": raw["params"]}, str(checkpoint)), "ema": preferred}
    return {"model": preferred}


def _build_basicsr(config: Path) -> Tuple[nn.Module, Optional[Dict[str, Any]]]:
    """The network of a BasicSR options file, and its backbone's options (``registry: basicsr``)."""
    # Through the basicsr importable here, whichever its flavour: PyPI BasicSR's registries or a
    # 1.2-era fork's module scans (a fork's own NAFNet is the one its checkpoints hold).
    opt = read_options(config)
    network_opt = dict(opt["network_g"])
    if "prompter" in network_opt:
        network_opt["prompter"] = without_prompter_file(network_opt["prompter"])
    arch_type = network_opt.pop("type", None)
    backbone = network_opt.get("backbone")
    backbone = {**backbone, "registry": "basicsr"} if isinstance(backbone, Mapping) else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prompter is untrained.*")
        return READER.build_arch(arch_type, network_opt, str(config)), backbone


class BasicSRReader:
    """Reads BasicSR runs and builds ``network_g`` through the basicsr importable here, whichever its
    flavour: PyPI BasicSR's registries or a 1.2-era fork's module scans (a fork's own NAFNet is the one
    its checkpoints hold)."""

    def recorded_options(self, checkpoint: Path) -> Optional[Path]:
        return recorded_options(checkpoint)

    def read_run(self, checkpoint: Path, options: Path) -> TrainingRun:
        net, backbone = _build_basicsr(options)
        return TrainingRun(net, _basicsr_states(checkpoint), str(options), backbone, checkpoint)

    def build_arch(self, arch_type: Any, options: Mapping[str, Any], source: str) -> nn.Module:
        host = current_host()
        cls = host.find(ARCH, arch_type)
        if cls is None:
            raise ConStyleError(f"--config {source}: network_g.type: {host.unknown(ARCH, arch_type)}")
        return cls(**options)

    def metric_context(self) -> ContextManager[None]:
        """Where the basicsr here is a 1.2-era fork and there is no CUDA, its metric functions run with
        their hard-coded ``.cuda()`` calls left on the CPU (NAFNet's SSIM); otherwise nothing changes."""
        return cuda_calls_on_cpu() if isinstance(current_host(), ForkHost) else contextlib.nullcontext()


READER = BasicSRReader()
