"""Module paths that moved into the layer folders keep working: ``import constyle_plugin.unet`` gives
the module :mod:`constyle_plugin.core.unet` itself (the same object, so patching one patches the other).

:data:`MOVED` maps each such old name (relative to ``constyle_plugin``) to its home. Standard library only.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Dict, Optional

__all__ = ["MOVED", "install"]

PACKAGE = "constyle_plugin"
MOVED: Dict[str, str] = {
    "prompter": "core.prompter", "unet": "core.unet", "hooks": "core.hooks", "injection": "core.injection",
    "stages": "core.stages", "pretrained": "core.pretrained", "builder": "core.builder",
    "padding": "core.padding", "init_args": "core.init_args",
    "imageio": "data.imageio", "degradations": "data.degradations", "datasets": "data.datasets",
    "samples": "data.samples", "benchmark_layouts": "data.benchmark_layouts",
    "benchmark_datasets": "data.benchmark_datasets",
    "pretrain": "training.pretrain", "losses": "training.losses",
    "inference": "tools.restore", "evaluate": "tools.evaluate", "export": "tools.export",
    "convert": "tools.convert", "integrations.basicsr.patching": "patches",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``constyle_plugin.<old name>`` and hands back the module at its new home."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, name = fullname.partition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder, replaced in sys.modules by exec_module

    def exec_module(self, module: object) -> None:
        name = module.__name__  # type: ignore[attr-defined]
        sys.modules[name] = importlib.import_module(f"{PACKAGE}.{MOVED[name.partition('.')[2]]}")


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
