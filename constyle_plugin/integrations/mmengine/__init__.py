"""MMEngine integration: the ``constyle`` scope (child registries of MMEngine's root ones) holding
the plugin's models, datasets, metrics, hooks and runner; ``constyle train``'s runner.

Imported when the program imports mmengine (see :mod:`constyle_plugin.integrations`); importing
it imports mmengine.
"""
from .registry import (DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS, SCOPE,
                       ConStyleDataPreprocessor, ConStyleOptimWrapperConstructor, ConStylePretrainDataset,
                       ConStylePretrainer, ConStyleRestorer, ConStyleRunner, ConfigError, MixDegradationDataset,
                       PairedFolderDataset, PretextAccuracy, PrompterExportHook, PSNR, SSIM, check_config,
                       default_cache_dir, entries, mmengine_checkpoint_globals, register, train)

__all__ = ["DATASETS", "HOOKS", "METRICS", "MODELS", "OPTIM_WRAPPER_CONSTRUCTORS", "RUNNERS", "SCOPE",
           "ConStyleDataPreprocessor", "ConStyleOptimWrapperConstructor", "ConStylePretrainDataset",
           "ConStylePretrainer", "ConStyleRestorer", "ConStyleRunner", "ConfigError", "MixDegradationDataset",
           "PSNR", "PairedFolderDataset", "PretextAccuracy", "PrompterExportHook", "SSIM", "check_config",
           "default_cache_dir", "entries", "mmengine_checkpoint_globals", "register", "train"]
