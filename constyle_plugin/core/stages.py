"""Where the prompt goes: :class:`StageSpec` (module names, given or discovered), :class:`StageInfo`
(one hook point as the probe measured it), and the checks of ``inject`` and of stage names, shared
by :func:`~constyle_plugin.core.unet.wrap_unet` and the options builder. Torch only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..errors import ConStyleTypeError, OptionError, WrapError, did_you_mean, join_keys

__all__ = ["DEFAULT_INJECT", "INJECT_TARGETS", "LAYOUTS", "StageInfo", "StageSpec", "check_inject", "check_stage_names",
           "check_stages_option"]

INJECT_TARGETS = ("encoder", "bottleneck", "decoder")
DEFAULT_INJECT = ("encoder", "bottleneck")
LAYOUTS = ("BCHW", "BHWC", "BLC")  # how a stage hands its feature on (see StageInfo)


@dataclass(frozen=True)
class StageSpec:
    """Where the prompt goes: module names as in ``backbone.named_modules()``.

    encoder: the modules whose outputs are the encoder features at 1/2, 1/4 and 1/8 of the input
        resolution, in that order (they receive ``f1``, ``f2``, ``f3``); fewer than three is fine.
    bottleneck: the module whose output is the coarsest feature map (modulated by the latent).
    decoder: the modules whose outputs climb back up (optionally modulated by the latent).

    Its ``repr`` is valid Python, so a discovered spec can be printed and frozen into code.
    """

    encoder: Tuple[str, ...] = ()
    bottleneck: Optional[str] = None
    decoder: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("encoder", "decoder"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, key, tuple(value))

    @classmethod
    def from_dict(cls, spec: Union["StageSpec", Mapping[str, Any]]) -> "StageSpec":
        """Build from a mapping such as an options file's ``stages: {encoder: [...], ...}``."""
        if isinstance(spec, StageSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise ConStyleTypeError(f"stages: expected a mapping with encoder/bottleneck/decoder, got {type(spec).__name__}")
        unknown = set(spec) - {"encoder", "bottleneck", "decoder"}
        if unknown:
            raise WrapError(f"stages: unknown key(s) {sorted(unknown)}; expected encoder, bottleneck, decoder")
        return cls(encoder=tuple(spec.get("encoder") or ()), bottleneck=spec.get("bottleneck"),
                   decoder=tuple(spec.get("decoder") or ()))

    @classmethod
    def from_stage_info(cls, infos: Sequence["StageInfo"]) -> "StageSpec":
        """The spec whose names are those of ``infos`` (hook points), role by role, in order."""
        return cls(encoder=tuple(i.name for i in infos if i.role == "encoder"),
                   bottleneck=next((i.name for i in infos if i.role == "bottleneck"), None),
                   decoder=tuple(i.name for i in infos if i.role == "decoder"))

    def to_dict(self) -> Dict[str, Any]:
        return {"encoder": list(self.encoder), "bottleneck": self.bottleneck, "decoder": list(self.decoder)}

    def names(self) -> List[str]:
        return [*self.encoder, *([self.bottleneck] if self.bottleneck else []), *self.decoder]


@dataclass(frozen=True)
class StageInfo:
    """One hook point: its role, module name, scale (1/2**scale of the input) and channel count.

    ``layout`` is how the stage hands its feature on: ``"BCHW"`` (a map), ``"BHWC"`` (channels last,
    as MLP-mixer and Swin-style blocks do) or ``"BLC"`` (``B x L x C`` tokens, as Uformer-style
    transformers do); the hook converts to ``B x C x H x W`` for the adapter and back.
    """

    role: str
    name: str
    scale: int
    channels: int
    output_index: Optional[int] = None  # which element of a tuple/list output holds the feature
    layout: str = "BCHW"


def check_inject(inject: Any, key: str = "inject") -> Tuple[str, ...]:
    """``inject`` (one target or a list of them) as a tuple of ``encoder`` / ``bottleneck`` / ``decoder``."""
    values = (inject,) if isinstance(inject, str) else inject
    if not isinstance(values, (list, tuple)) or not values:
        raise OptionError(key, f"expected a list of {list(INJECT_TARGETS)}, got {inject!r}")
    for v in values:
        if v not in INJECT_TARGETS:
            hint = did_you_mean(v, INJECT_TARGETS)
            raise OptionError(key, f"{v!r} is not an injection target; {hint + ' ' if hint else ''}"
                                   f"choose from {list(INJECT_TARGETS)}")
    return tuple(values)


def check_stages_option(stages: Any, key: str = "stages") -> None:
    """``stages`` must be ``None`` or ``{encoder: [names], bottleneck: name, decoder: [names]}`` (a name
    for a list is fine); else :class:`OptionError` naming ``key`` or the entry at fault. Needs no network."""
    if stages is None or isinstance(stages, StageSpec):
        return
    if not isinstance(stages, Mapping):
        raise OptionError(key, f"expected {{encoder: [...], bottleneck: ..., decoder: [...]}} (module names), "
                               f"got {stages!r}")
    unknown = sorted(set(stages) - {"encoder", "bottleneck", "decoder"})
    if unknown:
        hint = did_you_mean(unknown[0], ["encoder", "bottleneck", "decoder"])
        raise OptionError(join_keys(key, str(unknown[0])),
                          f"unknown key; expected encoder, bottleneck, decoder{'; ' + hint if hint else ''}")
    for role in ("encoder", "bottleneck", "decoder"):
        value = stages.get(role)
        if value is None or isinstance(value, str):
            continue
        if role == "bottleneck" or not isinstance(value, (list, tuple)):
            wanted = "a module name" if role == "bottleneck" else "a list of module names"
            raise OptionError(join_keys(key, role), f"expected {wanted}, got {value!r}")


def check_stage_names(stages: Any, backbone: nn.Module, key: str = "stages",
                      error: type = OptionError) -> None:
    """Every module named in ``stages`` (a :class:`StageSpec` or ``{encoder: [...], bottleneck: ...,
    decoder: [...]}``) must be a submodule of ``backbone``; else ``error(...)`` naming the entry at
    fault and the closest module names. ``error`` is :class:`OptionError` (``(key, message)``) or an
    exception class taking one message."""
    if isinstance(stages, StageSpec):
        stages = stages.to_dict()
    check_stages_option(stages, key)
    modules = dict(backbone.named_modules())
    for role in ("encoder", "bottleneck", "decoder"):
        value = stages.get(role)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else list(value)
        for i, name in enumerate(names):
            where = join_keys(key, role) + ("" if isinstance(value, str) else f"[{i}]")
            if not isinstance(name, str) or not name or not isinstance(modules.get(name), nn.Module):
                hint = did_you_mean(name, [n for n in modules if n], n=3)
                message = f"{name!r} is not a module of {type(backbone).__name__}{'; ' + hint if hint else ''}"
                if error is OptionError:
                    raise OptionError(where, message)
                raise error(f"{key}: {message}")
