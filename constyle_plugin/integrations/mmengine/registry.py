"""MMEngine integration: what the plugin registers in the ``constyle`` scope (:mod:`.scope`).

``register()`` (run once the program imports mmengine, so ``custom_imports =
dict(imports=['constyle_plugin'])`` in a config is all a user adds) puts the catalogue's entries
(:mod:`constyle_plugin.integrations.catalogue`) into the scope's registries:

- MODELS: ``mmengine_models`` (``ConStyleRestorer``, stage 2; ``ConStylePretrainer``, stage 1;
  ``ConStyleDataPreprocessor``), the reference backbones (``archs``), the stage-1 losses (``losses``) and
  ``mmengine_losses`` (``ClassificationLoss`` and BasicSR's pixel losses; torch's ``L1Loss`` / ``MSELoss``
  where basicsr does not import);
- DATASETS: the keyword adapter (:func:`.data.keyword_dataset`) of each core dataset (``datasets``:
  ``MixDegradationDataset``, ``ConStylePretrainDataset``, the all-in-one benchmark data
  ``AllInOneTrainDataset``, ``AllInOneTestDataset``), and ``mmengine_datasets`` (``PairedFolderDataset``);
- METRICS: ``mmengine_metrics`` (``PSNR``, ``SSIM``: RGB, or Y with ``test_y_channel=True``; ``PretextAccuracy``);
- OPTIM_WRAPPER_CONSTRUCTORS: ``ConStyleOptimWrapperConstructor`` (trainable parameters only);
- RUNNERS: ``ConStyleRunner`` (early config checks, safe resume on torch >= 2.6);
- HOOKS: ``PrompterExportHook`` (writes the pre-trained prompter as ``.safetensors``).

An entry that cannot be imported here (a reference backbone missing from ``archs``, BasicSR's
``CharbonnierLoss`` without basicsr) is left out.

Configs use them with ``default_scope = 'constyle'`` or as ``type='constyle.NAFNet'``; MMEngine's
root registries are left as they are. Registration is idempotent.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from mmengine.registry import Registry

from .. import catalogue
from ...errors import ConStyleRuntimeError
from .data import (PSNR, SSIM, ADAPTERS, AllInOneTestDataset, AllInOneTrainDataset, ConStylePretrainDataset,
                   MixDegradationDataset, PairedFolderDataset, PretextAccuracy, default_cache_dir)
from .hooks import PrompterExportHook
from .models import (ConStyleDataPreprocessor, ConStyleOptimWrapperConstructor, ConStylePretrainer,
                     ConStyleRestorer)
from .runner import ConfigError, ConStyleRunner, check_config, mmengine_checkpoint_globals, train
from .scope import DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS, SCOPE

__all__ = ["DATASETS", "HOOKS", "KINDS", "METRICS", "MODELS", "OPTIM_WRAPPER_CONSTRUCTORS", "RUNNERS", "SCOPE",
           "AllInOneTestDataset", "AllInOneTrainDataset", "ConStyleDataPreprocessor", "ConStyleOptimWrapperConstructor",
           "ConStylePretrainDataset", "ConStylePretrainer", "ConStyleRestorer", "ConStyleRunner", "ConfigError",
           "MixDegradationDataset", "PSNR", "PairedFolderDataset", "PretextAccuracy", "PrompterExportHook", "SSIM",
           "check_config", "default_cache_dir", "entries", "mmengine_checkpoint_globals", "register", "train"]


# Which kinds of the catalogue each registry reads, in the order they are registered.
KINDS: Dict[str, Tuple[str, ...]] = {
    "models": ("mmengine_models", "archs", "losses", "mmengine_losses"),
    "datasets": ("datasets", "mmengine_datasets"),
    "metrics": ("mmengine_metrics",),
    "optim_wrapper_constructors": ("mmengine_optim_wrapper_constructors",),
    "runners": ("mmengine_runners",),
    "hooks": ("mmengine_hooks",),
}
_MAY_BE_MISSING = ("archs", "mmengine_losses")  # kinds whose entries are left out where they do not import


def _load(item: catalogue.Entry) -> Any:
    if item.kind == "datasets":  # a core dataset takes BasicSR's opt dict: MMEngine gets its keyword adapter
        adapter = ADAPTERS.get(item.name)
        if adapter is None:
            raise ConStyleRuntimeError(f"constyle_plugin: the catalogue's dataset {item.name!r} has no MMEngine "
                                       f"adapter (integrations.mmengine.data.keyword_dataset)")
        return adapter
    return item.load()


def entries() -> Dict[str, List[Tuple[str, type]]]:
    """What :func:`register` registers: ``{'models' | 'datasets' | 'metrics' | ...: [(name, class)]}``,
    the catalogue's entries of :data:`KINDS` that import here."""
    found: Dict[str, List[Tuple[str, type]]] = {}
    for registry, kinds in KINDS.items():
        found[registry] = []
        for item in (i for kind in kinds for i in catalogue.entries(kind)):
            try:
                found[registry].append((item.name, _load(item)))
            except (AttributeError, ImportError):
                if item.kind not in _MAY_BE_MISSING:
                    raise
                # a backbone missing from archs, or CharbonnierLoss without basicsr: left out here
    return found


def register(models: Optional[Registry] = None, datasets: Optional[Registry] = None,
             metrics: Optional[Registry] = None, optim_wrapper_constructors: Optional[Registry] = None,
             runners: Optional[Registry] = None, hooks: Optional[Registry] = None) -> Dict[str, List[str]]:
    """Register the plugin's classes into the ``constyle`` scope's registries (or those passed in).

    A name already present (ours from an earlier call, or another class registered in that scope)
    is left as it is. Returns ``{registry name: [names registered by this call]}`` (empty lists the
    second time).
    """
    targets = {"models": models or MODELS, "datasets": datasets or DATASETS, "metrics": metrics or METRICS,
               "optim_wrapper_constructors": optim_wrapper_constructors or OPTIM_WRAPPER_CONSTRUCTORS,
               "runners": runners or RUNNERS, "hooks": hooks or HOOKS}
    added: Dict[str, List[str]] = {}
    for kind, items in entries().items():
        registry = targets[kind]
        added[kind] = []
        for name, cls in items:
            if name in registry.module_dict:
                continue
            registry.register_module(name=name, module=cls)
            added[kind].append(name)
    return added
