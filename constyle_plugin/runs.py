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
from typing import Any, ContextManager, Dict, Mapping, Protocol

from torch import nn

from .errors import RestoreError

__all__ = ["BasicSRRunReader", "MMEngineRunReader", "register_run_reader", "run_reader"]

_INSTALL_HINT = {"basicsr": 'pip install "constyle-plugin[basicsr]" (or run inside a BasicSR fork)',
                 "mmengine": 'pip install "constyle-plugin[mmengine]"'}


class BasicSRRunReader(Protocol):
    """Builds the networks of BasicSR options files."""

    def build_arch(self, arch_type: Any, options: Mapping[str, Any], source: str) -> nn.Module:
        """The architecture ``arch_type`` (``network_g.type``) built with ``options``; errors name ``source``."""

    def metric_context(self) -> ContextManager[None]:
        """A context in which the basicsr importable here computes its metrics on this machine."""


class MMEngineRunReader(Protocol):
    """Reads MMEngine configs and Runner checkpoints, and builds their models."""

    def checkpoint_globals(self) -> ContextManager[None]:
        """A context in which ``torch.load(weights_only=True)`` accepts MMEngine's own checkpoints."""

    def load_config(self, path: str) -> Mapping[str, Any]:
        """The config file at ``path``, checked."""

    def config_from_dict(self, cfg: Dict[str, Any]) -> Mapping[str, Any]:
        """A config object (attribute access) made of the plain values ``cfg``."""

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        """The model a config's ``model`` section describes."""


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
            raise ImportError(f"reading a {kind} run needs {kind}: {_INSTALL_HINT.get(kind, 'install it')}") from exc
        raise
