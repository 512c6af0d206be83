"""How ``constyle restore`` reads a training run of a trainer it does not import itself (and how
``constyle evaluate`` runs that trainer's metrics).

The core knows BasicSR and MMEngine runs only through the readers the integrations register here
(:func:`register_run_reader`), by the name of the module that provides them, so that neither this
module nor the restore code imports an integration or a trainer:

- ``"basicsr"``: :class:`BasicSRRunReader`, the archs of the ``basicsr`` importable here (PyPI
  registries or a 1.2-era fork's module scans);
- ``"mmengine"``: :class:`MMEngineRunReader`, MMEngine's configs, checkpoints and model registry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, Mapping, Optional, Protocol

from torch import Tensor, nn

from .errors import CheckpointError, MissingDependencyError, RestoreError

__all__ = ["BasicSRRunReader", "MMEngineRunReader", "TrainingRun", "no_recorded_config", "register_run_reader",
           "run_reader", "without_prompter_file"]

_INSTALL_HINT = {"basicsr": 'pip install "constyle-plugin[basicsr]" (or run inside a BasicSR fork)',
                 "mmengine": 'pip install "constyle-plugin[mmengine]"'}


class BasicSRRunReader(Protocol):
    """Reads BasicSR runs: their options files (recorded ``--force_yml`` overrides included), checkpoints
    and networks."""

    def recorded_options(self, checkpoint: Path) -> Optional[Path]:
        """The options copy BasicSR wrote beside the run of ``checkpoint`` (``None``: not a BasicSR run)."""

    def read_run(self, checkpoint: Path, options: Path) -> "TrainingRun":
        """The network of the options file ``options`` and the weights of ``checkpoint``."""

    def build_arch(self, arch_type: Any, options: Mapping[str, Any], source: str) -> nn.Module:
        """The architecture ``arch_type`` (``network_g.type``) built with ``options``; errors name ``source``."""

    def metric_context(self) -> ContextManager[None]:
        """A context in which the basicsr importable here computes its metrics on this machine."""


class MMEngineRunReader(Protocol):
    """Reads MMEngine configs and Runner checkpoints, and builds their models."""

    def read_run(self, checkpoint: Path, config: Optional[Path]) -> "TrainingRun":
        """The network of ``config`` (``None``: the config MMEngine recorded for the run, read without
        running it) and the weights of the Runner checkpoint ``checkpoint``."""

    def checkpoint_globals(self) -> ContextManager[None]:
        """A context in which ``torch.load(weights_only=True)`` accepts MMEngine's own checkpoints."""

    def load_config(self, path: str) -> Mapping[str, Any]:
        """The config file at ``path``, checked."""

    def config_from_dict(self, cfg: Dict[str, Any]) -> Mapping[str, Any]:
        """A config object (attribute access) made of the plain values ``cfg``."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        """The model a config's ``model`` section describes."""


def _mismatch(checkpoint: Path, config: str, net: nn.Module, state: Mapping[str, Tensor]) -> CheckpointError:
    """Which keys differ between ``state`` and ``net``: the first few of each kind and the counts."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    parts = [f"{len(items)} {what} key(s), first: {', '.join(items[:3])}"
             for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
             if items]
    hint = ""
    if unexpected and all(k.startswith(("net.", "data_preprocessor.")) for k in unexpected):
        hint = " (an MMEngine checkpoint: pass the MMEngine config of its run)"
    return CheckpointError(f"{checkpoint}: does not fit the network of {config}: {'; '.join(parts)}{hint}")


@dataclass
class TrainingRun:
    """A trainer's checkpoint with the network its config builds (weights not loaded yet)."""

    net: nn.Module
    states: Dict[str, Dict[str, Tensor]]  # "model", and "ema" where the run kept an EMA copy
    source: str  # the config the network was built from
    backbone_options: Optional[Dict[str, Any]] = None  # {type, registry, **options} of a wrapped backbone
    checkpoint: Optional[Path] = None

    def load(self, variant: str = "model") -> nn.Module:
        """Load ``states[variant]`` into ``net`` (strict; a mismatch is named in one line); returns ``net``."""
        state = self.states[variant]
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise _mismatch(self.checkpoint or Path("?"), self.source, self.net, state) from None
        return self.net


def no_recorded_config(checkpoint: Path) -> RestoreError:
    """The error for a checkpoint whose trainer recorded no config of its run."""
    return RestoreError(
        f"--config: no config recorded for {checkpoint} by its trainer (BasicSR's options copy in "
        f"experiments/<name>/ for a checkpoint in experiments/<name>/models/, or the config MMEngine "
        f"recorded in the checkpoint and dumped into its work dir); other files beside it are never "
        f"used. Pass the training config with --config")


def without_prompter_file(prompter_opt: Any) -> Any:
    """The checkpoint holds the prompter's weights: the file the training run loaded is not needed."""
    if isinstance(prompter_opt, Mapping) and prompter_opt.get("pretrained") is not None:
        return {**prompter_opt, "pretrained": None}
    return prompter_opt


# kind -> "module:attribute" of the reader
_READERS: Dict[str, str] = {}


def register_run_reader(kind: str, target: str) -> None:
    """Name the reader of ``kind`` runs (``"basicsr"`` / ``"mmengine"``) as ``"module:attribute"``;
    the module is imported the first time a run of that kind is read."""
    _READERS[kind] = target


def run_reader(kind: str) -> Any:
    """The reader of ``kind`` runs. Raises ImportError (saying what to install) when its trainer is
    not importable here, :class:`RestoreError` when no integration registered one."""
    target = _READERS.get(kind)
    if target is None:
        raise RestoreError(f"--config: no reader of {kind} runs is registered (is constyle_plugin installed "
                           f"with its integrations?)")
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == kind:
            raise MissingDependencyError(f"reading a {kind} run needs {kind}: {_INSTALL_HINT.get(kind, 'install it')}") from exc
        raise
