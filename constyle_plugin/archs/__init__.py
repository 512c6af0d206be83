"""Reference U-Nets: NAFNet, Restormer, MAXIM-1S and a vanilla conv U-Net.

All four take any input size (padded internally to ``model.size_multiple``, output cropped back)
and keep the usual submodule names, so ``constyle_plugin.adapters.stage_spec_for`` knows where the
prompt goes. Nothing is registered here; the integrations register these classes under their names
only where the host code base has none. The archs import torch, timm, einops, the ground floor and
:mod:`constyle_plugin.core` (padding, recorded constructor arguments) only.
"""
from .convunet import ConvUNet
from .maxim import MAXIM
from .nafnet import NAFBlock, NAFNet
from .restormer import Restormer

__all__ = ["ConvUNet", "MAXIM", "NAFBlock", "NAFNet", "Restormer"]
