"""The ``constyle`` scope: a child of each of MMEngine's root registries, as OpenMMLab packages
(mmdet, mmseg, mmagic) have their own.

A config with ``default_scope = 'constyle'`` builds ``type='NAFNet'`` from here (MMEngine's own
types, ``IterBasedTrainLoop``, ``EMAHook``, ..., through the parent); any config can name
``type='constyle.NAFNet'``. Nothing of the plugin goes into the root registries.
"""
from __future__ import annotations

import sys
from typing import Dict

import mmengine.registry as root
from mmengine.registry import Registry

__all__ = ["DATASETS", "HOOKS", "METRICS", "MODELS", "OPTIMIZERS", "OPTIM_WRAPPERS", "OPTIM_WRAPPER_CONSTRUCTORS",
           "REGISTRIES", "RUNNERS", "SCOPE"]

SCOPE = "constyle"

# MMEngine's root registries that have a child here: every one a config can name types of, so that
# building anything under ``default_scope='constyle'`` finds the scope (no fallback warning).
_ROOTS = ("RUNNERS", "RUNNER_CONSTRUCTORS", "LOOPS", "HOOKS", "STRATEGIES", "DATASETS", "DATA_SAMPLERS", "TRANSFORMS",
          "MODELS", "MODEL_WRAPPERS", "WEIGHT_INITIALIZERS", "OPTIMIZERS", "OPTIM_WRAPPERS",
          "OPTIM_WRAPPER_CONSTRUCTORS", "PARAM_SCHEDULERS", "METRICS", "EVALUATOR", "TASK_UTILS", "VISUALIZERS",
          "VISBACKENDS", "LOG_PROCESSORS", "INFERENCERS", "FUNCTIONS")


def _child(parent: Registry) -> Registry:
    existing = parent.children.get(SCOPE)
    if existing is not None:  # this module imported again under another name (importlib.reload)
        return existing
    return Registry(parent.name, parent=parent, scope=SCOPE)


REGISTRIES: Dict[str, Registry] = {name: _child(getattr(root, name)) for name in _ROOTS if hasattr(root, name)}
MODELS = REGISTRIES["MODELS"]
DATASETS = REGISTRIES["DATASETS"]
METRICS = REGISTRIES["METRICS"]
HOOKS = REGISTRIES["HOOKS"]
RUNNERS = REGISTRIES["RUNNERS"]
OPTIMIZERS = REGISTRIES["OPTIMIZERS"]
OPTIM_WRAPPERS = REGISTRIES["OPTIM_WRAPPERS"]
OPTIM_WRAPPER_CONSTRUCTORS = REGISTRIES["OPTIM_WRAPPER_CONSTRUCTORS"]

# MMEngine imports ``<default scope>.registry`` each time it builds under a default scope (an OpenMMLab
# package is named as its scope and holds a registry.py) and logs "Failed to import `constyle.registry`"
# when that fails. This scope is no package (PyPI's ``constyle`` is another project), so this module
# answers to that name: the import finds the registries it is after.
sys.modules.setdefault(f"{SCOPE}.registry", sys.modules[__name__])
