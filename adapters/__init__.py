"""Ready StageSpecs for known U-Net families (installed as ``constyle_plugin.adapters``).

Recognised by class name (anywhere in the class's MRO) and by submodule names, so they also fit
the NAFNet and Restormer classes that BasicSR forks ship with the same layout:

- ``NAFNet`` / ``NAFNetLocal``: encoder ``downs.0-2`` (outputs at 1/2, 1/4, 1/8), bottleneck
  ``middle_blks``, decoder ``ups.*``.
- ``Restormer``: encoder ``down1_2``, ``down2_3``, ``down3_4`` (1/2, 1/4, 1/8), bottleneck ``latent``
  (1/8), decoder ``up4_3``, ``up3_2``, ``up2_1``.
- ``ConvUNet`` (``constyle_plugin.archs``): encoder ``downs.0-2``, bottleneck ``bottleneck``,
  decoder ``ups.*``.
- ``MAXIM`` (``constyle_plugin.archs``, MAXIM-1S): encoder ``encoders.0-2`` (the downsampled element
  of their ``(downsampled, skip)`` outputs, at 1/2, 1/4, 1/8), bottleneck ``bottleneck``, decoder
  ``decoders.*`` (coarsest first).

A model wrapped in ``DataParallel`` / ``DistributedDataParallel`` gets the names with the
``module.`` prefix. This package imports only torch and the plugin's core.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch.nn as nn

from constyle_plugin.core.stages import StageSpec

__all__ = ["FAMILIES", "convunet_spec", "maxim_spec", "nafnet_spec", "restormer_spec", "stage_spec_for"]

_NAFNET_PARTS = ("intro", "encoders", "downs", "middle_blks", "ups", "decoders", "ending")
_RESTORMER_PARTS = ("patch_embed", "encoder_level1", "down1_2", "encoder_level2", "down2_3", "encoder_level3",
                    "down3_4", "latent", "up4_3", "reduce_chan_level3", "decoder_level3", "up3_2",
                    "reduce_chan_level2", "decoder_level2", "up2_1", "decoder_level1", "refinement", "output")
_CONVUNET_PARTS = ("intro", "encoders", "downs", "bottleneck", "ups", "decoders", "ending")
_MAXIM_PARTS = ("inputs", "encoders", "bottleneck", "skip_resamplers", "global_resamplers", "skip_gates",
                "bridge_resamplers", "decoders", "ending")


def _missing(model: nn.Module, parts: Sequence[str]) -> list:
    children = dict(model.named_children())
    return [p for p in parts if p not in children]


def _require(model: nn.Module, parts: Sequence[str], family: str) -> None:
    missing = _missing(model, parts)
    if missing:
        raise ValueError(f"{family} stage spec: {type(model).__name__} has no submodule(s) {missing}; "
                         f"pass stages=StageSpec(...) explicitly for this network")


def _ladder(model: nn.Module, down_name: str, bottleneck: str, up_name: str, family: str) -> StageSpec:
    downs, ups = getattr(model, down_name), getattr(model, up_name)
    if not isinstance(downs, nn.ModuleList) or not isinstance(ups, nn.ModuleList):
        raise ValueError(f"{family} stage spec: {type(model).__name__}.{down_name} and .{up_name} must be "
                         f"nn.ModuleList")
    return StageSpec(encoder=tuple(f"{down_name}.{i}" for i in range(min(3, len(downs)))),
                     bottleneck=bottleneck,
                     decoder=tuple(f"{up_name}.{i}" for i in range(len(ups))))


def nafnet_spec(model: nn.Module) -> StageSpec:
    """StageSpec of a NAFNet-layout model, from its actual number of levels.

    Encoder: ``downs.0``, ``downs.1``, ``downs.2`` (outputs at 1/2, 1/4, 1/8; fewer if the model has
    fewer levels); bottleneck: ``middle_blks``; decoder: every ``ups.i``, coarsest first.
    """
    _require(model, _NAFNET_PARTS, "NAFNet")
    return _ladder(model, "downs", "middle_blks", "ups", "NAFNet")


def convunet_spec(model: nn.Module) -> StageSpec:
    """StageSpec of ``constyle_plugin.archs.ConvUNet``: ``downs.0-2``, ``bottleneck``, every ``ups.i``."""
    _require(model, _CONVUNET_PARTS, "ConvUNet")
    return _ladder(model, "downs", "bottleneck", "ups", "ConvUNet")


def maxim_spec(model: nn.Module) -> StageSpec:
    """StageSpec of ``constyle_plugin.archs.MAXIM`` (MAXIM-1S), from its actual depth.

    Encoder: ``encoders.0-2`` (their ``(downsampled, skip)`` outputs are hooked on the downsampled
    element, at 1/2, 1/4, 1/8); bottleneck: ``bottleneck``; decoder: every ``decoders.i``, coarsest
    first (to 1/4, 1/2, 1/1 for depth 3).
    """
    _require(model, _MAXIM_PARTS, "MAXIM")
    encoders, decoders = model.encoders, model.decoders
    if not isinstance(encoders, nn.ModuleList) or not isinstance(decoders, nn.ModuleList):
        raise ValueError(f"MAXIM stage spec: {type(model).__name__}.encoders and .decoders must be nn.ModuleList")
    return StageSpec(encoder=tuple(f"encoders.{i}" for i in range(min(3, len(encoders)))), bottleneck="bottleneck",
                     decoder=tuple(f"decoders.{i}" for i in range(len(decoders))))


def restormer_spec(model: nn.Module) -> StageSpec:
    """StageSpec of a Restormer-layout model.

    Encoder: ``down1_2`` (1/2), ``down2_3`` (1/4), ``down3_4`` (1/8); bottleneck: ``latent`` (1/8);
    decoder: ``up4_3`` (to 1/4), ``up3_2`` (to 1/2), ``up2_1`` (to 1/1).
    """
    _require(model, _RESTORMER_PARTS, "Restormer")
    return StageSpec(encoder=("down1_2", "down2_3", "down3_4"), bottleneck="latent",
                     decoder=("up4_3", "up3_2", "up2_1"))


# class name -> (required submodules, spec builder)
FAMILIES: Dict[str, tuple] = {
    "NAFNet": (_NAFNET_PARTS, nafnet_spec),
    "NAFNetLocal": (_NAFNET_PARTS, nafnet_spec),
    "Restormer": (_RESTORMER_PARTS, restormer_spec),
    "ConvUNet": (_CONVUNET_PARTS, convunet_spec),
    "MAXIM": (_MAXIM_PARTS, maxim_spec),
}


def _prefixed(spec: StageSpec, prefix: str) -> StageSpec:
    return StageSpec(encoder=tuple(prefix + n for n in spec.encoder),
                     bottleneck=None if spec.bottleneck is None else prefix + spec.bottleneck,
                     decoder=tuple(prefix + n for n in spec.decoder))


def stage_spec_for(model: nn.Module) -> Optional[StageSpec]:
    """The ready StageSpec for a known family, or None when ``model`` is not one of them.

    A model is recognised when a class in its MRO is named as a family in ``FAMILIES`` and it has
    that family's submodules; names are those of ``model.named_modules()``.
    """
    prefix = ""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model, prefix = model.module, prefix + "module."
    for cls in type(model).__mro__:
        family = FAMILIES.get(cls.__name__)
        if family is not None:
            parts, build = family
            if _missing(model, parts):
                continue
            try:
                return _prefixed(build(model), prefix)
            except ValueError:
                continue
    return None
