"""Trainer integrations: BasicSR (``integrations.basicsr``) and MMEngine (``integrations.mmengine``).

:func:`register_all` registers the plugin's entries with every trainer that is importable here. It is
what ``import constyle_plugin`` runs; it is idempotent and never replaces a name the host code base
already registered.
"""
from __future__ import annotations

import importlib
from typing import Dict

__all__ = ["register_all"]

_TRAINERS = (("basicsr", "basicsr"), ("mmengine", "mmengine"))


def register_all() -> Dict[str, object]:
    """Register with BasicSR and MMEngine where each is importable.

    Returns ``{trainer: its register() report}`` for the trainers that were found; a trainer that
    is not installed (or whose integration module is not part of this installation) is left out.
    Errors inside an integration module are not hidden.
    """
    reports: Dict[str, object] = {}
    for trainer, module_name in _TRAINERS:
        qualified = f"{__name__}.{module_name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            # Only a missing integration module (or its trainer) is skipped, nothing else.
            if exc.name in (qualified, trainer) or (exc.name or "").startswith(trainer + "."):
                continue
            raise
        if hasattr(module, "available") and not module.available():
            continue
        reports[trainer] = module.register()
    return reports
