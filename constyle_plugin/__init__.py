"""constyle-plugin: the ConStyle v2 prompter for any U-Net restoration network.

``wrap_unet(unet)`` hooks the frozen, pre-trained prompter into a U-Net's encoder and bottleneck.
Importing the package imports torch and the core only; the plugin's archs, models, losses, datasets
and metrics are registered with BasicSR (any flavour, forks included) and MMEngine when the program
imports them, or at once if it already has (idempotent; names a host already has are left alone).
See :mod:`constyle_plugin.integrations`. The layers are folders: ``core``, ``archs``, ``data``, ``training``,
``tools``, ``integrations`` (see docs/design.md); module paths that moved keep working (:mod:`.moved`).
"""
from . import moved
from .core.prompter import ConStyleV2, Prompt
from .core.unet import ConStyleUNet, StageSpec, unwrap_unet, wrap_unet
from .errors import CheckpointError, ConStyleError, UNetStructureError
from .integrations import install as _install_integrations

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConStyleError", "ConStyleUNet", "ConStyleV2", "Prompt", "StageSpec",
           "UNetStructureError", "__version__", "unwrap_unet", "wrap_unet"]


moved.install()
_install_integrations()
