"""Options -> wrapped network: the one place that turns ``{prompter, inject, stages, ...}`` into a
:class:`~constyle_plugin.core.unet.ConStyleUNet`, for every integration (BasicSR options, MMEngine
configs, ``constyle restore``) and for code that keeps its settings in a file.

Torch only, like the rest of the core. Errors are :class:`OptionError`s naming the option at fault
(``prompter.pretrained``, ``inject[1]``, ``stages.encoder[0]``); an integration puts its own prefix in
front (``network_g.``, ``model.``) with :meth:`OptionError.under`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from ..errors import CheckpointError, OptionError, UNetStructureError, join_keys
from .prompter import ConStyleV2
from .promptmaps import check_prompt_size
from .stages import check_inject, check_stage_names
from .unet import ConStyleUNet, wrap_unet

__all__ = ["WRAP_OPTIONS", "OptionError", "check_inject", "check_stage_names", "load_prompter_option",
           "prompter_path", "wrap_from_options"]

# The options of a wrapped network beside its backbone (BasicSR's ConStyleUNet, MMEngine's ConStyleRestorer).
WRAP_OPTIONS = ("prompter", "inject", "stages", "probe_size", "in_channels", "prompt_size")


def check_file(key: str, path: Any, what: str) -> str:
    """``path`` as a string (``~`` expanded) if it names an existing file, else :class:`OptionError`."""
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(key, f"expected the path of {what}, got {path!r}")
    expanded = os.path.expanduser(str(path))
    if Path(expanded).is_dir():
        raise OptionError(key, f"{what} expected, but {str(path)!r} is a folder")
    if not Path(expanded).is_file():
        raise OptionError(key, f"{what} not found: {str(path)!r}")
    return expanded


def prompter_path(prompter: Any, key: str = "prompter") -> Optional[str]:
    """The checkpoint path of a ``prompter`` option; ``None`` for the packaged prompter.

    Accepted: ``{pretrained: PATH}``, ``{pretrained: ~}`` / ``{}`` / ``~`` (the packaged one), or a bare
    path.
    """
    if prompter is None:
        return None
    if isinstance(prompter, (str, os.PathLike)):
        prompter = {"pretrained": prompter}
    if not isinstance(prompter, Mapping):
        raise OptionError(key, f"expected {{pretrained: PATH}} or {{pretrained: ~}}, got {prompter!r}")
    unknown = sorted(set(prompter) - {"pretrained"})
    if unknown:
        raise OptionError(join_keys(key, unknown[0]), "unknown option; a prompter takes only `pretrained`")
    path = prompter.get("pretrained")
    return None if path is None else check_file(join_keys(key, "pretrained"), path, "prompter checkpoint")


def load_prompter_option(prompter: Any, key: str = "prompter") -> Optional[ConStyleV2]:
    """The :class:`ConStyleV2` a ``prompter`` option names (``None``: let ``wrap_unet`` take the packaged one)."""
    path = prompter_path(prompter, key)
    if path is None:
        return None
    try:
        return ConStyleV2.from_pretrained(path)
    except (CheckpointError, OSError) as exc:
        raise OptionError(join_keys(key, "pretrained"), str(exc)) from exc


def wrap_from_options(backbone: nn.Module, prompter: Any = None,
                      inject: Union[str, Sequence[str]] = ("encoder", "bottleneck"),
                      stages: Optional[Any] = None, probe_size: Optional[Union[int, Sequence[int]]] = None,
                      in_channels: Optional[int] = None, prompt_size: Optional[int] = None) -> ConStyleUNet:
    """:func:`~constyle_plugin.core.unet.wrap_unet` with its arguments given as options (as read from a
    YAML or config file), each checked and named in the error when bad.

    Args:
        backbone: the built U-Net (``B x C x H x W`` -> ``B x C x H x W``).
        prompter: ``{pretrained: PATH}`` or ``~`` for the packaged prompter (see :func:`prompter_path`).
        inject: any of ``encoder``, ``bottleneck``, ``decoder``.
        stages: ``{encoder: [...], bottleneck: ..., decoder: [...]}``, or ``~`` for a known family's
            ready spec, else discovery by a probe forward.
        probe_size, in_channels: as in ``wrap_unet``.
        prompt_size: the longer side the prompter sees (pixels), ``~`` for full resolution.

    Returns a :class:`~constyle_plugin.core.unet.ConStyleUNet`.
    """
    targets = check_inject(inject)
    prompt_size = check_prompt_size(prompt_size)
    if stages is not None:
        check_stage_names(stages, backbone)
    prompter_net = load_prompter_option(prompter)
    kwargs: dict = {}
    if probe_size is not None:
        if isinstance(probe_size, bool) or not (isinstance(probe_size, int) or (
                isinstance(probe_size, (list, tuple)) and len(probe_size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in probe_size))):
            raise OptionError("probe_size", f"expected an int or [H, W], got {probe_size!r}")
        kwargs["probe_size"] = probe_size if isinstance(probe_size, int) else tuple(probe_size)
    if in_channels is not None:
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels <= 0:
            raise OptionError("in_channels", f"expected a positive int, got {in_channels!r}")
        kwargs["in_channels"] = in_channels
    try:
        return wrap_unet(backbone, prompter=prompter_net, stages=stages, inject=targets, prompt_size=prompt_size,
                         **kwargs)
    except UNetStructureError as exc:
        raise OptionError("stages", str(exc)) from exc
