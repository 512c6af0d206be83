"""constyle-plugin: the ConStyle v2 prompter for any U-Net restoration network."""
from .prompter import CheckpointError, ConStyleV2, Prompt
from .unet import StageSpec

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConStyleV2", "Prompt", "StageSpec", "__version__"]
