"""wrap_unet / unwrap_unet: the ConStyle v2 prompter inside any U-Net, through forward hooks.

The user's network is not edited: forward hooks on a few of its modules (the encoder stages at
1/2, 1/4, 1/8, the bottleneck and optionally the decoder stages) add the prompt to their outputs
through small adapters that start as the identity. The stages are found by one probe forward
pass, or named explicitly with a :class:`StageSpec`.
"""
from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .injection import FeatureInjector, LatentFiLM, LatentModulator
from .prompter import FEATURE_CHANNELS, LATENT_DIM, ConStyleV2, Prompt, default_prompter_path

__all__ = ["ConStyleUNet", "StageInfo", "StageSpec", "UNetStructureError", "wrap_unet", "unwrap_unet",
           "discover_stages"]

INJECT_TARGETS = ("encoder", "bottleneck", "decoder")
DEFAULT_INJECT = ("encoder", "bottleneck")
DEFAULT_PROBE_SIZE = (256, 192)  # not square, so a global pooling (1 x 1) never passes for a stage


class UNetStructureError(ValueError):
    """The probe found no U-Net structure, or a StageSpec names modules that cannot be hooked."""


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
            raise TypeError(f"stages: expected a mapping with encoder/bottleneck/decoder, got {type(spec).__name__}")
        unknown = set(spec) - {"encoder", "bottleneck", "decoder"}
        if unknown:
            raise ValueError(f"stages: unknown key(s) {sorted(unknown)}; expected encoder, bottleneck, decoder")
        return cls(encoder=tuple(spec.get("encoder") or ()), bottleneck=spec.get("bottleneck"),
                   decoder=tuple(spec.get("decoder") or ()))

    def to_dict(self) -> Dict[str, Any]:
        return {"encoder": list(self.encoder), "bottleneck": self.bottleneck, "decoder": list(self.decoder)}

    def names(self) -> List[str]:
        return [*self.encoder, *([self.bottleneck] if self.bottleneck else []), *self.decoder]


@dataclass(frozen=True)
class StageInfo:
    """One hook point: its role, module name, scale (1/2**scale of the input) and channel count."""

    role: str
    name: str
    scale: int
    channels: int
    output_index: Optional[int] = None  # which element of a tuple/list output holds the feature


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------
@dataclass
class _Call:
    name: str
    depth: int
    start: int
    end: int = -1
    calls: int = 0
    in_hw: Optional[Tuple[int, int]] = None
    outs: Tuple[Tuple[Optional[int], Tuple[int, int], int], ...] = ()  # (index, (h, w), channels)


def _first_map(obj: Any) -> Optional[Tensor]:
    if isinstance(obj, Tensor):
        return obj if obj.dim() == 4 else None
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_map(item)
            if found is not None:
                return found
    if isinstance(obj, Mapping):
        return _first_map(list(obj.values()))
    return None


def _output_maps(out: Any) -> Tuple[Tuple[Optional[int], Tuple[int, int], int], ...]:
    if isinstance(out, Tensor):
        return ((None, tuple(out.shape[-2:]), out.shape[1]),) if out.dim() == 4 else ()
    if isinstance(out, (list, tuple)):
        return tuple((i, tuple(t.shape[-2:]), t.shape[1])
                     for i, t in enumerate(out) if isinstance(t, Tensor) and t.dim() == 4)
    return ()


def _probe(backbone: nn.Module, size: Tuple[int, int], in_channels: int) -> Tuple[Dict[str, _Call], Any]:
    """Run one forward pass on a random input, recording every submodule's input and output maps."""
    param = next(iter(backbone.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    calls: Dict[str, _Call] = {}
    clock = iter(range(1 << 62))
    handles = []

    def pre_hook(name):
        def hook(module, args, kwargs):
            rec = calls.get(name)
            if rec is None:
                first = _first_map((args, kwargs))
                rec = calls[name] = _Call(name, name.count(".") + 1, next(clock),
                                          in_hw=tuple(first.shape[-2:]) if first is not None else None)
            rec.calls += 1
        return hook

    def post_hook(name):
        def hook(module, args, output):
            rec = calls[name]
            if rec.calls == 1:
                rec.end = next(clock)
                rec.outs = _output_maps(output)
        return hook

    modes = {m: m.training for m in backbone.modules()}
    try:
        for name, module in backbone.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post_hook(name)))
        backbone.eval()
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(1, in_channels, *size, generator=generator).to(device=device, dtype=dtype)
        with torch.no_grad():
            output = backbone(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return calls, output


class _Scales:
    """Maps a spatial size to its scale s (size = R / 2**s, with stride-2 rounding) or None."""

    def __init__(self, reference: Tuple[int, int]) -> None:
        self.reference = reference

    def __call__(self, hw: Tuple[int, int]) -> Optional[int]:
        found = []
        for n, ref in zip(hw, self.reference):
            if n <= 0:
                return None
            s = round(math.log2(ref / n))
            if s < 0 or not (math.floor(ref / 2 ** s) <= n <= math.ceil(ref / 2 ** s)):
                return None
            found.append(s)
        return found[0] if found[0] == found[1] else None


def _infer_in_channels(backbone: nn.Module) -> int:
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _outermost(records: List[_Call]) -> List[_Call]:
    names = {r.name for r in records}
    return [r for r in records
            if not any(r.name.startswith(other + ".") for other in names if other != r.name)]


def discover_stages(backbone: nn.Module, probe_size: Tuple[int, int] = DEFAULT_PROBE_SIZE,
                    in_channels: Optional[int] = None) -> Tuple[StageSpec, List[StageInfo]]:
    """Find the encoder, bottleneck and decoder stages of ``backbone`` with one probe forward.

    The encoder stage at scale s (1/2**s) is the outermost module, run once, that takes a map at
    scale s-1 and returns one at scale s (measured against the largest resolution the probe saw);
    where downsampling is functional (``F.max_pool2d`` in ``forward``), the first module that runs
    at scale s stands in. The bottleneck is the last module at the coarsest scale before the
    resolution climbs back; decoder stages are the modules that climb (scale s -> s-1).
    """
    in_channels = in_channels or _infer_in_channels(backbone)
    calls, output = _probe(backbone, tuple(probe_size), in_channels)
    sizes = [r.in_hw for r in calls.values() if r.in_hw] + [hw for r in calls.values() for _, hw, _ in r.outs]
    sizes.append(tuple(probe_size))
    scale_of = _Scales((max(h for h, _ in sizes), max(w for _, w in sizes)))
    once = [r for r in calls.values() if r.calls == 1 and r.in_hw is not None and r.end >= 0]

    def out_at(rec: _Call, s: int) -> Optional[Tuple[Optional[int], int]]:
        """(output index, channels) if ``rec`` returns exactly one map at scale s and none coarser."""
        scales = [(i, scale_of(hw), c) for i, hw, c in rec.outs]
        hits = [(i, c) for i, sc, c in scales if sc == s]
        if len(hits) != 1 or any(sc is not None and sc > s for _, sc, _ in scales):
            return None
        return hits[0]

    def first(records: Iterable[_Call]) -> Optional[_Call]:
        records = _outermost(list(records))
        return min(records, key=lambda r: r.start) if records else None

    encoder: List[Tuple[_Call, int, Tuple[Optional[int], int]]] = []
    after = -1
    for s in range(1, 32):
        strict = first(r for r in once if r.start > after and scale_of(r.in_hw) == s - 1 and out_at(r, s))
        chosen = strict or first(r for r in once if r.start > after and scale_of(r.in_hw) == s and out_at(r, s))
        if chosen is None:
            break
        encoder.append((chosen, s, out_at(chosen, s)))
        after = chosen.end

    out_map = _first_map(output)
    seen = sorted({s for s in (scale_of(hw) for hw in sizes) if s is not None})
    if not encoder:
        raise UNetStructureError(
            f"no downsampling found: the probe ({in_channels} x {probe_size[0]} x {probe_size[1]}) saw feature maps "
            f"only at scale(s) {seen} (1/2**s of the input) and no module that halves the resolution. "
            + _HOW_TO_SPEC)
    if out_map is None or scale_of(tuple(out_map.shape[-2:])) != 0:
        got = "no image-shaped output" if out_map is None else f"an output of {tuple(out_map.shape[-2:])}"
        raise UNetStructureError(
            f"no way back up: the network goes down to 1/{2 ** encoder[-1][1]} of the input but returns {got}, "
            f"not a map at the input's resolution. " + _HOW_TO_SPEC)

    deepest, depth, _ = encoder[-1]
    def climbs(rec: _Call) -> bool:
        scales = [scale_of(rec.in_hw)] + [scale_of(hw) for _, hw, _ in rec.outs]
        return rec.start > deepest.end and any(sc is not None and sc < depth for sc in scales)

    t_climb = min((r.start for r in calls.values() if r.in_hw is not None and climbs(r)), default=1 << 62)
    # The bottleneck: the last outermost module that stays at the coarsest scale before the climb.
    middles = _outermost([r for r in once if deepest.end < r.start and r.end < t_climb
                          and scale_of(r.in_hw) == depth and out_at(r, depth)])
    bottleneck = max(middles, key=lambda r: r.end) if middles else deepest

    decoder: List[Tuple[_Call, int, Tuple[Optional[int], int]]] = []
    after = bottleneck.end
    for s in range(depth, 0, -1):
        up = first(r for r in once if r.start > after and scale_of(r.in_hw) == s and out_at(r, s - 1))
        if up is None:
            break
        decoder.append((up, s - 1, out_at(up, s - 1)))
        after = up.end

    infos = [StageInfo("encoder", rec.name, s, hit[1], hit[0]) for rec, s, hit in encoder[:3]]
    hit = out_at(bottleneck, depth)
    infos.append(StageInfo("bottleneck", bottleneck.name, depth, hit[1], hit[0]))
    infos += [StageInfo("decoder", rec.name, s, hit[1], hit[0]) for rec, s, hit in decoder]
    spec = StageSpec(encoder=tuple(i.name for i in infos if i.role == "encoder"), bottleneck=bottleneck.name,
                     decoder=tuple(i.name for i in infos if i.role == "decoder"))
    return spec, infos


_HOW_TO_SPEC = (
    "If this is a U-Net, name its stages explicitly: wrap_unet(net, stages=StageSpec(encoder=['down1', "
    "'down2', 'down3'], bottleneck='middle', decoder=['up3', 'up2', 'up1'])) with names from "
    "net.named_modules() (in an options file: stages: {encoder: [...], bottleneck: ..., decoder: [...]}).")


def _resolve_spec(backbone: nn.Module, spec: StageSpec, probe_size: Tuple[int, int],
                  in_channels: Optional[int]) -> List[StageInfo]:
    """Check that every name in ``spec`` is a module run once per forward, and read its channels."""
    modules = dict(backbone.named_modules())
    for name in spec.names():
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UNetStructureError(f"stages: {name!r} is not a module of {type(backbone).__name__}{hint}")
    in_channels = in_channels or _infer_in_channels(backbone)
    calls, _ = _probe(backbone, tuple(probe_size), in_channels)
    infos = []
    roles = ([("encoder", n, i + 1) for i, n in enumerate(spec.encoder)]
             + ([("bottleneck", spec.bottleneck, -1)] if spec.bottleneck else [])
             + [("decoder", n, -1) for n in spec.decoder])
    for role, name, scale in roles:
        rec = calls.get(name)
        if rec is None or rec.calls == 0:
            raise UNetStructureError(f"stages: module {name!r} never runs in {type(backbone).__name__}.forward")
        if rec.calls > 1:
            raise UNetStructureError(
                f"stages: module {name!r} runs {rec.calls} times per forward; a hook point must run once")
        if not rec.outs:
            raise UNetStructureError(f"stages: module {name!r} returns no B x C x H x W feature map")
        index, hw, channels = rec.outs[0]
        if role == "encoder":  # for tuple outputs, take the element nearest the expected scale
            target = (probe_size[0] / 2 ** scale)
            index, hw, channels = min(rec.outs, key=lambda o: abs(o[1][0] - target))
        infos.append(StageInfo(role, name, scale, channels, index))
    return infos


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------
class _StageHook:
    """A forward hook that sends a stage's output through its adapter.

    A plain object (not a closure) so that ``copy.deepcopy`` of the wrapper gives hooks bound to the
    copy's adapters, and so that pickling works.
    """

    def __init__(self, owner: "ConStyleUNet", info: StageInfo, key: str, feature: Optional[int]) -> None:
        self.owner = owner
        self.info = info
        self.key = key
        self.feature = feature

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        prompt = self.owner._active_prompt
        if prompt is None:  # the backbone was called on its own, not through the wrapper
            return None
        index = self.info.output_index
        x = output if index is None else output[index]
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise RuntimeError(f"ConStyle hook on {self.info.name!r}: expected a B x C x H x W output, "
                               f"got {type(x).__name__}")
        adapter = self.owner.adapters[self.key]
        if self.feature is not None:
            y = adapter(x, prompt.features[self.feature])
        else:
            y = adapter(x, prompt.latent)
        if index is None:
            return y
        items = list(output)
        items[index] = y
        return type(output)(items) if isinstance(output, tuple) else items


class ConStyleUNet(nn.Module):
    """A U-Net with the frozen ConStyle v2 prompter hooked into its stages (build with :func:`wrap_unet`).

    ``forward`` takes exactly what the backbone takes and returns what it returns; the first
    positional argument (or ``x`` / ``inp`` / ``img`` keyword) is the ``B x C x H x W`` image in
    [0, 1] that the prompter sees (grey inputs are replicated to RGB for the prompter).
    """

    def __init__(self, backbone: nn.Module, prompter: ConStyleV2, stages: StageSpec,
                 infos: Sequence[StageInfo], inject: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompter = prompter.freeze()
        self.stages = stages
        self.stage_info = tuple(infos)
        self.inject = tuple(inject)
        self.adapters = nn.ModuleDict()
        self._active_prompt: Optional[Prompt] = None
        for key, info, feature in self._plan():
            if info.role == "encoder":
                self.adapters[key] = FeatureInjector(FEATURE_CHANNELS[feature], info.channels)
            elif info.role == "bottleneck":
                self.adapters[key] = LatentModulator(LATENT_DIM, info.channels)
            else:
                self.adapters[key] = LatentFiLM(LATENT_DIM, info.channels)
        self._attach()

    def _plan(self) -> Iterator[Tuple[str, StageInfo, Optional[int]]]:
        encoders = [i for i in self.stage_info if i.role == "encoder"]
        decoders = [i for i in self.stage_info if i.role == "decoder"]
        if "encoder" in self.inject:
            for k, info in enumerate(encoders[:len(FEATURE_CHANNELS)]):
                yield f"encoder{k + 1}", info, k
        if "bottleneck" in self.inject:
            for info in self.stage_info:
                if info.role == "bottleneck":
                    yield "bottleneck", info, None
        if "decoder" in self.inject:
            for k, info in enumerate(decoders):
                yield f"decoder{k + 1}", info, None

    def _attach(self) -> None:
        modules = dict(self.backbone.named_modules())
        for key, info, feature in self._plan():
            modules[info.name].register_forward_hook(_StageHook(self, info, key, feature))

    def _detach(self) -> None:
        for module in self.backbone.modules():
            for hook_id, hook in list(module._forward_hooks.items()):
                if isinstance(hook, _StageHook) and hook.owner is self:
                    del module._forward_hooks[hook_id]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        image = args[0] if args else next((kwargs[k] for k in ("x", "inp", "img", "input") if k in kwargs), None)
        if image is None:
            raise TypeError("ConStyleUNet: pass the image batch as the first positional argument (or x=...)")
        with torch.no_grad():
            prompt = self.prompter(image)
        self._active_prompt = prompt
        try:
            return self.backbone(*args, **kwargs)
        finally:
            self._active_prompt = None

    def train(self, mode: bool = True) -> "ConStyleUNet":
        super().train(mode)
        self.prompter.eval()
        return self

    def prompt_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the plugin added (the adapters); the prompter's are frozen."""
        return self.adapters.parameters()

    def describe(self) -> str:
        """A table of the hook points: role, module, scale, channels, and whether a prompt goes there."""
        hooked = {info.name + info.role for _, info, _ in self._plan()}
        rows = [f"  {i.role:<10} {i.name:<32} 1/{2 ** i.scale if i.scale >= 0 else '?':<5} {i.channels:>5} ch"
                f"{'  <- prompt' if i.name + i.role in hooked else ''}" for i in self.stage_info]
        return f"{type(self.backbone).__name__} with ConStyle v2 at:\n" + "\n".join(rows) + f"\n{self.stages!r}"

    def extra_repr(self) -> str:
        return f"stages={self.stages!r}, inject={self.inject}"


def _default_prompter() -> ConStyleV2:
    if default_prompter_path() is not None:
        return ConStyleV2.from_pretrained()
    warnings.warn("constyle_plugin: no pre-trained prompter is packaged with this installation; the prompter "
                  "is untrained. Pass prompter=ConStyleV2.from_pretrained(path) with the authors' "
                  "pretrained_ConStyle_v2.pth or your own export.", UserWarning, stacklevel=3)
    return ConStyleV2().freeze()


def _check_inject(inject: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    inject = (inject,) if isinstance(inject, str) else tuple(inject)
    bad = [t for t in inject if t not in INJECT_TARGETS]
    if bad or not inject:
        raise ValueError(f"inject: {bad or inject} not understood; choose from {INJECT_TARGETS}")
    return inject


def wrap_unet(unet: nn.Module, prompter: Optional[ConStyleV2] = None,
              stages: Optional[Union[StageSpec, Mapping[str, Any]]] = None,
              inject: Union[str, Sequence[str]] = DEFAULT_INJECT,
              probe_size: Union[int, Tuple[int, int]] = DEFAULT_PROBE_SIZE,
              in_channels: Optional[int] = None) -> ConStyleUNet:
    """Put the frozen ConStyle v2 prompter into a U-Net, without editing its code.

    Args:
        unet: any restoration U-Net taking ``B x C x H x W`` images in [0, 1].
        prompter: a :class:`ConStyleV2`; default: the packaged pre-trained prompter.
        stages: a :class:`StageSpec` (or a dict) naming the hook points; default: a ready spec for a
            known family (``constyle_plugin.adapters``), else discovery by one probe forward.
        inject: any of ``"encoder"`` (f1, f2, f3 at 1/2, 1/4, 1/8), ``"bottleneck"`` (latent
            modulation of the coarsest stage), ``"decoder"`` (latent FiLM on each upsampling stage).
        probe_size: ``H x W`` of the probe input (multiples of the network's size multiple).
        in_channels: the network's input channels (default: the first Conv2d's).

    Returns:
        A :class:`ConStyleUNet` whose output equals ``unet``'s right after wrapping (every adapter
        ends in a zero-initialised projection). ``net.backbone is unet``.
    """
    if isinstance(unet, ConStyleUNet) or any(isinstance(h, _StageHook) for m in unet.modules()
                                              for h in m._forward_hooks.values()):
        raise ValueError("wrap_unet: this network is already wrapped; unwrap_unet it first")
    inject = _check_inject(inject)
    size = (probe_size, probe_size) if isinstance(probe_size, int) else tuple(probe_size)
    if stages is None:
        from .adapters import stage_spec_for

        stages = stage_spec_for(unet)
    if stages is None:
        stages, infos = discover_stages(unet, size, in_channels)
    else:
        stages = StageSpec.from_dict(stages)
        infos = _resolve_spec(unet, stages, size, in_channels)
    roles = {i.role for i in infos}
    missing = [t for t in inject if t not in roles]
    if missing:
        raise UNetStructureError(f"inject: asks for {missing} but the network has no such stage "
                                 f"(found {stages!r})")
    if prompter is None:
        prompter = _default_prompter()
    if not isinstance(prompter, ConStyleV2):
        raise TypeError(f"prompter: expected a ConStyleV2, got {type(prompter).__name__}")
    param = next(iter(unet.parameters()), None)
    if param is not None:
        prompter = prompter.to(param.device)
    net = ConStyleUNet(unet, prompter, stages, infos, inject)
    if param is not None:
        net.adapters.to(param.device)
        if param.is_floating_point():
            net.adapters.to(param.dtype)
    return net


def unwrap_unet(net: ConStyleUNet) -> nn.Module:
    """Remove the hooks and return the original module (``net.backbone``) with its trained weights."""
    if not isinstance(net, ConStyleUNet):
        raise TypeError(f"unwrap_unet: expected a ConStyleUNet, got {type(net).__name__}")
    net._detach()
    return net.backbone
