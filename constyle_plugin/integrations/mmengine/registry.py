"""MMEngine integration: what the plugin registers in the ``constyle`` scope (:mod:`.scope`).

``register()`` (run once the program imports mmengine, so ``custom_imports =
dict(imports=['constyle_plugin'])`` in a config is all a user adds) puts into the scope's registries:

- MODELS: ``ConStyleRestorer`` (stage 2), ``ConStylePretrainer`` (stage 1),
  ``ConStyleDataPreprocessor``, the reference backbones ``NAFNet``, ``Restormer``, ``ConvUNet``,
  ``MAXIM``, the stage-1 losses (``InfoNCELoss``, ``ContentLoss``, ``StyleLoss``, ``DistillKLLoss``,
  ``ClassificationLoss``) and BasicSR's pixel losses (``L1Loss``, ``MSELoss``, ``CharbonnierLoss``);
- DATASETS: ``MixDegradationDataset``, ``ConStylePretrainDataset``, ``PairedFolderDataset``, and the all-in-one
  benchmark data ``AllInOneTrainDataset``, ``AllInOneTestDataset``;
- METRICS: ``PSNR``, ``SSIM`` (RGB, or Y with ``test_y_channel=True``), ``PretextAccuracy``;
- OPTIM_WRAPPER_CONSTRUCTORS: ``ConStyleOptimWrapperConstructor`` (trainable parameters only);
- RUNNERS: ``ConStyleRunner`` (early config checks, safe resume on torch >= 2.6);
- HOOKS: ``PrompterExportHook`` (writes the pre-trained prompter as ``.safetensors``).

Configs use them with ``default_scope = 'constyle'`` or as ``type='constyle.NAFNet'``; MMEngine's
root registries are left as they are. Registration is idempotent.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from mmengine.registry import Registry

from ... import archs as _archs
from ...training import losses as _losses
from ...compat import ensure_basicsr_importable
from .data import (PSNR, SSIM, AllInOneTestDataset, AllInOneTrainDataset, ConStylePretrainDataset,
                   MixDegradationDataset, PairedFolderDataset, PretextAccuracy, default_cache_dir)
from .hooks import PrompterExportHook
from .models import (ConStyleDataPreprocessor, ConStyleOptimWrapperConstructor, ConStylePretrainer,
                     ConStyleRestorer)
from .runner import ConfigError, ConStyleRunner, check_config, mmengine_checkpoint_globals, train
from .scope import DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS, SCOPE

__all__ = ["DATASETS", "HOOKS", "METRICS", "MODELS", "OPTIM_WRAPPER_CONSTRUCTORS", "RUNNERS", "SCOPE",
           "AllInOneTestDataset", "AllInOneTrainDataset", "ConStyleDataPreprocessor", "ConStyleOptimWrapperConstructor",
           "ConStylePretrainDataset", "ConStylePretrainer", "ConStyleRestorer", "ConStyleRunner", "ConfigError",
           "MixDegradationDataset", "PSNR", "PairedFolderDataset", "PretextAccuracy", "PrompterExportHook", "SSIM",
           "check_config", "default_cache_dir", "entries", "mmengine_checkpoint_globals", "register", "train"]


def _pixel_losses() -> List[Tuple[str, type]]:
    try:
        ensure_basicsr_importable()
        from basicsr.losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss
    except ImportError:  # basicsr is a dependency; torch's own losses keep configs usable without it
        from torch.nn import L1Loss, MSELoss

        return [("L1Loss", L1Loss), ("MSELoss", MSELoss)]
    return [("L1Loss", L1Loss), ("MSELoss", MSELoss), ("CharbonnierLoss", CharbonnierLoss)]


def entries() -> Dict[str, List[Tuple[str, type]]]:
    """What :func:`register` registers: ``{'models' | 'datasets' | 'metrics' | ...: [(name, class)]}``."""
    return {
        "models": [
            ("ConStyleRestorer", ConStyleRestorer), ("ConStylePretrainer", ConStylePretrainer),
            ("ConStyleDataPreprocessor", ConStyleDataPreprocessor),
            *[(n, getattr(_archs, n)) for n in ("NAFNet", "Restormer", "ConvUNet", "MAXIM") if hasattr(_archs, n)],
            *[(n, getattr(_losses, n)) for n in ("InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss",
                                                 "ClassificationLoss")],
            *_pixel_losses(),
        ],
        "datasets": [("MixDegradationDataset", MixDegradationDataset),
                     ("ConStylePretrainDataset", ConStylePretrainDataset),
                     ("PairedFolderDataset", PairedFolderDataset),
                     ("AllInOneTrainDataset", AllInOneTrainDataset), ("AllInOneTestDataset", AllInOneTestDataset)],
        "metrics": [("PSNR", PSNR), ("SSIM", SSIM), ("PretextAccuracy", PretextAccuracy)],
        "optim_wrapper_constructors": [("ConStyleOptimWrapperConstructor", ConStyleOptimWrapperConstructor)],
        "runners": [("ConStyleRunner", ConStyleRunner)],
        "hooks": [("PrompterExportHook", PrompterExportHook)],
    }


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
