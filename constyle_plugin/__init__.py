"""constyle-plugin: the ConStyle v2 prompter for any U-Net restoration network.

``wrap_unet(unet)`` hooks the frozen, pre-trained prompter into a U-Net's encoder and bottleneck;
importing the package also registers the plugin's archs, models, losses, datasets and metrics with
BasicSR and MMEngine when they are importable (idempotent; names a host already registered are
left alone).
"""
from .prompter import CheckpointError, ConStyleV2, Prompt
from .unet import ConStyleUNet, StageSpec, UNetStructureError, unwrap_unet, wrap_unet

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConStyleUNet", "ConStyleV2", "Prompt", "StageSpec", "UNetStructureError",
           "__version__", "unwrap_unet", "wrap_unet"]


def _register_integrations() -> None:
    try:
        from .integrations import register_all
    except ImportError:  # the integrations package is optional glue; the core works without it
        return
    register_all()


_register_integrations()
