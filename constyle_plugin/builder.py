"""Options -> wrapped network: the one place that turns ``{prompter, inject, stages, ...}`` into a
:class:`~constyle_plugin.unet.ConStyleUNet`, for every integration (BasicSR options, MMEngine
configs, ``constyle restore``) and for code that keeps its settings in a file.

Torch only, like the rest of the core. Errors are :class:`OptionError`s naming the option at fault
(``prompter.pretrained``, ``inject[1]``, ``stages.encoder[0]``); an integration puts its own prefix in
front (``network_g.``, ``model.``) with :meth:`OptionError.under`.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

__all__ = ["WRAP_OPTIONS", "OptionError", "check_inject", "check_stage_names", "load_prompter_option",
           "prompter_path", "wrap_from_options"]

# The options of a wrapped network beside its backbone (BasicSR's ConStyleUNet, MMEngine's ConStyleRestorer).
WRAP_OPTIONS = ("prompter", "inject", "stages", "probe_size", "in_channels")


class OptionError(ValueError):
    """A bad option; ``key`` is its dotted path, e.g. ``network_g.backbone.type``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "OptionError":
        """The same error for an option nested under ``prefix``."""
        return OptionError(join_keys(prefix, self.key), self.message)


def join_keys(*parts: str) -> str:
    return ".".join(p for p in parts if p)


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


def load_prompter_option(prompter: Any, key: str = "prompter"):
    """The :class:`ConStyleV2` a ``prompter`` option names (``None``: let ``wrap_unet`` take the packaged one)."""
    from .prompter import CheckpointError, ConStyleV2

    path = prompter_path(prompter, key)
    if path is None:
        return None
    try:
        return ConStyleV2.from_pretrained(path)
    except (CheckpointError, OSError) as exc:
        raise OptionError(join_keys(key, "pretrained"), str(exc)) from exc


def check_inject(inject: Any, key: str = "inject") -> Tuple[str, ...]:
    """``inject`` as a tuple of targets (``encoder``, ``bottleneck``, ``decoder``)."""
    from .unet import INJECT_TARGETS

    values = (inject,) if isinstance(inject, str) else inject
    if not isinstance(values, (list, tuple)) or not values:
        raise OptionError(key, f"expected a list of {list(INJECT_TARGETS)}, got {inject!r}")
    for v in values:
        if v not in INJECT_TARGETS:
            raise OptionError(key, f"{v!r} is not an injection target; choose from {list(INJECT_TARGETS)}")
    return tuple(values)


def check_stage_names(stages: Any, backbone: nn.Module, key: str = "stages") -> None:
    """Every module named in ``stages`` (``{encoder: [...], bottleneck: ..., decoder: [...]}``) must
    be a submodule of ``backbone``."""
    from .unet import StageSpec

    if isinstance(stages, StageSpec):
        stages = {"encoder": list(stages.encoder), "bottleneck": stages.bottleneck, "decoder": list(stages.decoder)}
    if not isinstance(stages, Mapping):
        raise OptionError(key, f"expected {{encoder: [...], bottleneck: ..., decoder: [...]}}, got {stages!r}")
    unknown = sorted(set(stages) - {"encoder", "bottleneck", "decoder"})
    if unknown:
        raise OptionError(join_keys(key, unknown[0]), "unknown key; expected encoder, bottleneck, decoder")
    modules = dict(backbone.named_modules())
    for role in ("encoder", "bottleneck", "decoder"):
        value = stages.get(role)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else list(value)
        for i, name in enumerate(names):
            where = join_keys(key, role) + ("" if isinstance(value, str) else f"[{i}]")
            if not isinstance(name, str) or not name or not isinstance(modules.get(name), nn.Module):
                close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise OptionError(where, f"{name!r} is not a module of {type(backbone).__name__}{hint}")


def wrap_from_options(backbone: nn.Module, prompter: Any = None,
                      inject: Union[str, Sequence[str]] = ("encoder", "bottleneck"),
                      stages: Optional[Any] = None, probe_size: Optional[Union[int, Sequence[int]]] = None,
                      in_channels: Optional[int] = None):
    """:func:`~constyle_plugin.unet.wrap_unet` with its arguments given as options (as read from a
    YAML or config file), each checked and named in the error when bad.

    Args:
        backbone: the built U-Net (``B x C x H x W`` -> ``B x C x H x W``).
        prompter: ``{pretrained: PATH}`` or ``~`` for the packaged prompter (see :func:`prompter_path`).
        inject: any of ``encoder``, ``bottleneck``, ``decoder``.
        stages: ``{encoder: [...], bottleneck: ..., decoder: [...]}``, or ``~`` for a known family's
            ready spec, else discovery by a probe forward.
        probe_size, in_channels: as in ``wrap_unet``.

    Returns a :class:`~constyle_plugin.unet.ConStyleUNet`.
    """
    from .unet import UNetStructureError, wrap_unet

    targets = check_inject(inject)
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
        return wrap_unet(backbone, prompter=prompter_net, stages=stages, inject=targets, **kwargs)
    except UNetStructureError as exc:
        raise OptionError("stages", str(exc)) from exc
