"""Compatibility shims for the third-party code bases the plugin runs inside.

Kept in one module so that every path into basicsr (the core training pieces and
``integrations/``) applies the same fixes exactly once.
"""
from __future__ import annotations

import importlib
import sys
import types

_FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"


def ensure_basicsr_importable() -> types.ModuleType:
    """Import and return ``basicsr``, working around its import of a removed torchvision module.

    basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, which torchvision 0.17
    renamed to ``_functional_tensor``. The old name is registered as an alias of the new module
    (only ``rgb_to_grayscale`` is used from it) before basicsr is imported. Idempotent; an
    environment whose torchvision still has the old module is left alone.
    """
    if _FUNCTIONAL_TENSOR not in sys.modules:
        try:
            importlib.import_module(_FUNCTIONAL_TENSOR)
        except ImportError:
            sys.modules[_FUNCTIONAL_TENSOR] = importlib.import_module(
                "torchvision.transforms._functional_tensor")
    return importlib.import_module("basicsr")


def basicsr_available() -> bool:
    """True when basicsr can be imported (with the shim applied)."""
    try:
        ensure_basicsr_importable()
    except ImportError:
        return False
    return True
