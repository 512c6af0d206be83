"""Trainer integrations: BasicSR (``integrations.basicsr``) and MMEngine (``integrations.mmengine``).

``import constyle_plugin`` calls :func:`install`, which imports neither trainer: it asks
:func:`constyle_plugin.compat.when_imported` to register the plugin's entries once the program
imports one (or at once, for a trainer already imported):

- PyPI BasicSR (>= 1.3, registries): after the ``basicsr`` package has loaded, into its registries;
- 1.2-era BasicSR forks (NAFNet, Restormer: no registries, look-ups by module scans): after each of
  ``basicsr.models.archs``, ``basicsr.models``, ``basicsr.data`` and ``basicsr.models.losses`` has
  loaded, into the lists and module those look-ups read;
- MMEngine: after the ``mmengine`` package has loaded, into the ``constyle`` scope (child registries
  of MMEngine's root ones).

It also tells ``constyle restore`` where the readers of BasicSR and MMEngine runs are
(:mod:`constyle_plugin.runs`); they are imported only when a run of that kind is read.

:func:`register_all` registers at once with every trainer importable here (importing them).
Registration is idempotent and never replaces a name the host code base already has.

The integrations are the layer above the tools: they may import every layer below them (the ground
floor, core, archs, data, training, tools) and their trainer; only the command line imports them.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Dict

from ..compat import ensure_basicsr_importable, when_imported
from ..runs import register_run_reader

__all__ = ["FORK_LOOKUP_MODULES", "install", "register_all"]

# The modules through which a 1.2-era BasicSR fork finds archs, models, datasets and losses.
FORK_LOOKUP_MODULES = ("basicsr.models.archs", "basicsr.models", "basicsr.data", "basicsr.models.losses")
_installed = False


def _on_basicsr(module: types.ModuleType) -> None:
    if "basicsr.utils.registry" in sys.modules:  # PyPI BasicSR: the package has imported its registries
        from . import basicsr

        basicsr.register()


def _on_fork_module(module: types.ModuleType) -> None:
    from . import basicsr

    basicsr.register_with_fork_module(module)


def _on_mmengine(module: types.ModuleType) -> None:
    from . import mmengine

    mmengine.register()


def install() -> None:
    """Register with BasicSR (any flavour) and MMEngine whenever the program imports them."""
    global _installed
    if _installed:
        return
    _installed = True
    register_run_reader("basicsr", "constyle_plugin.integrations.basicsr.restore:READER")
    register_run_reader("mmengine", "constyle_plugin.integrations.mmengine.restore:READER")
    when_imported("basicsr", _on_basicsr)
    for name in FORK_LOOKUP_MODULES:
        when_imported(name, _on_fork_module)
    when_imported("mmengine", _on_mmengine)


def register_all() -> Dict[str, object]:
    """Register now with BasicSR and MMEngine where each is importable (this imports them).

    Returns ``{trainer: its register() report}`` for the trainers found. A trainer that is not
    installed is left out; errors inside an integration module are not hidden.
    """
    reports: Dict[str, object] = {}
    try:
        ensure_basicsr_importable()
    except ImportError:
        pass
    else:
        from . import basicsr

        reports["basicsr"] = basicsr.register_here()
    try:
        importlib.import_module("mmengine")
    except ImportError:
        pass
    else:
        from . import mmengine

        reports["mmengine"] = mmengine.register()
    return reports
