"""constyle-plugin: the ConStyle v2 prompter for any U-Net restoration network.

``wrap_unet(unet)`` hooks the frozen, pre-trained prompter into a U-Net's encoder and bottleneck.
Importing the package imports torch and the core only; the plugin's archs, models, losses, datasets
and metrics are registered with BasicSR (any flavour, forks included) and MMEngine when the program
imports them, or at once if it already has (idempotent; names a host already has are left alone).
See :mod:`constyle_plugin.integrations`.
"""
from .errors import CheckpointError, ConStyleError, UNetStructureError
from .prompter import ConStyleV2, Prompt
from .unet import ConStyleUNet, StageSpec, unwrap_unet, wrap_unet

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConStyleError", "ConStyleUNet", "ConStyleV2", "Prompt", "StageSpec",
           "UNetStructureError", "__version__", "unwrap_unet", "wrap_unet"]


def _install_integrations() -> None:
    try:
        from .integrations import install
    except ImportError:  # the integrations package is optional glue; the core works without it
        return
    install()


_install_integrations()
