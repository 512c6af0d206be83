"""Finding a U-Net's stages: one probe forward pass records each submodule's output resolution; the
encoder stages are where it first reaches 1/2, 1/4, 1/8, the bottleneck is the coarsest stage, the
decoder stages are where it climbs back (:func:`discover_stages`). An explicit :class:`StageSpec` is
checked against the same probe (:func:`resolve_spec`). Torch and the standard library only.
"""
from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import UNetStructureError
from .stages import StageInfo, StageSpec, check_stage_names

__all__ = ["DEFAULT_PROBE_SIZE", "IMAGE_KEYWORDS", "discover", "discover_stages", "read_example_inputs", "input_conv",
           "meta_tensor", "resolve_spec"]

DEFAULT_PROBE_SIZE = (256, 192)  # not square, so a global pooling (1 x 1) never passes for a stage


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------
PROBE_BATCH = 2  # not 1: a window-attention matrix (windows x heads x N x N) never passes for a map
Shape = Tuple[int, ...]


@dataclass
class _Call:
    name: str
    depth: int
    start: int
    end: int = -1
    calls: int = 0
    in_shapes: Tuple[Shape, ...] = ()
    out_shapes: Tuple[Tuple[Optional[int], Shape], ...] = ()
    fed_by: Optional[str] = None  # the module whose output tensor is this module's first input
    # filled in once the reference size is known:
    in_hw: Optional[Tuple[int, int]] = None
    outs: Tuple[Tuple[Optional[int], Tuple[int, int], int, str], ...] = ()  # (index, (h, w), channels, layout)


def _flat_tensors(obj: Any, limit: int = 4) -> List[Tensor]:
    found: List[Tensor] = []

    def walk(o: Any) -> None:
        if len(found) >= limit:
            return
        if isinstance(o, Tensor):
            if o.dim() in (3, 4):
                found.append(o)
        elif isinstance(o, (list, tuple)):
            for item in o:
                walk(item)
        elif isinstance(o, Mapping):
            for item in o.values():
                walk(item)

    walk(obj)
    return found


def _output_tensors(out: Any) -> List[Tuple[Optional[int], Tensor]]:
    if isinstance(out, Tensor):
        return [(None, out)] if out.dim() in (3, 4) else []
    if isinstance(out, (list, tuple)):
        return [(i, t) for i, t in enumerate(out) if isinstance(t, Tensor) and t.dim() in (3, 4)]
    return []


@dataclass
class _ProbeResult:
    calls: Dict[str, _Call]
    output_shapes: Tuple[Shape, ...]
    size: Tuple[int, int]
    batch: int
    in_channels: int
    note: str = ""

    def describe(self) -> str:
        return f"{self.batch} x {self.in_channels} x {self.size[0]} x {self.size[1]}"


class _ProbeFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class _Example:
    """The user's inputs for the probe: positional and keyword arguments, and the image among them."""
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    image: Tensor
    image_key: Optional[str] = None  # the keyword that holds the image, when it is passed by keyword


IMAGE_KEYWORDS = ("x", "inp", "img", "input", "image")


def read_example_inputs(example: Union[Sequence[Any], Mapping[str, Any]]) -> _Example:
    """Read ``example_inputs``: positional arguments with the image first, or a dict of keyword arguments
    whose image is under ``x`` / ``inp`` / ``img`` / ``input`` / ``image`` (else its first 4-d tensor)."""
    if isinstance(example, Tensor):
        example = (example,)
    if isinstance(example, Mapping):
        kwargs = dict(example)
        key = next((k for k in IMAGE_KEYWORDS if isinstance(kwargs.get(k), Tensor)), None)
        key = key or next((k for k, v in kwargs.items() if isinstance(v, Tensor) and v.dim() == 4), None)
        image = kwargs.get(key) if key is not None else None
        args: Tuple[Any, ...] = ()
    elif isinstance(example, Sequence) and not isinstance(example, str):
        args, kwargs, key = tuple(example), {}, None
        image = args[0] if args else None
    else:
        raise UNetStructureError(f"example_inputs: expected a tuple of positional arguments (the image first) "
                                 f"or a dict of keyword arguments, got {type(example).__name__}")
    if not isinstance(image, Tensor) or image.dim() != 4 or min(image.shape[-2:]) < 2:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise UNetStructureError(f"example_inputs: the image must come first (or as x=...), a B x C x H x W "
                                 f"tensor; got {got}")
    return _Example(args, kwargs, image, key)


def _probe(backbone: nn.Module, size: Tuple[int, int], in_channels: int,
           batch: int = PROBE_BATCH, example: Optional[_Example] = None) -> _ProbeResult:
    """Run one forward pass on a random input (or on ``example``), recording every submodule's input
    and output shapes.

    The network is left exactly as it was: modes, every buffer (BatchNorm statistics, counters) and
    the random number generators are restored, whatever its forward did.
    """
    param = next(iter(backbone.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    calls: Dict[str, _Call] = {}
    clock = iter(range(1 << 62))
    handles = []
    made_by: Dict[int, Tuple[str, "weakref.ref[Tensor]"]] = {}

    def pre_hook(name):
        def hook(module, args, kwargs):
            rec = calls.get(name)
            if rec is None:
                inputs = _flat_tensors((args, kwargs))
                fed_by = None
                if inputs:
                    maker = made_by.get(id(inputs[0]))
                    if maker is not None and maker[1]() is inputs[0]:
                        fed_by = maker[0]
                rec = calls[name] = _Call(name, name.count(".") + 1, next(clock),
                                          in_shapes=tuple(tuple(t.shape) for t in inputs), fed_by=fed_by)
            rec.calls += 1
        return hook

    def post_hook(name):
        def hook(module, args, output):
            rec = calls[name]
            tensors = _output_tensors(output)
            if rec.calls == 1:
                rec.end = next(clock)
                rec.out_shapes = tuple((i, tuple(t.shape)) for i, t in tensors)
            for _, t in tensors:
                made_by[id(t)] = (name, weakref.ref(t))
        return hook

    modes = {m: m.training for m in backbone.modules()}
    buffers = [(module, key, buf, buf.detach().clone()) for module in backbone.modules()
               for key, buf in module.named_buffers(recurse=False) if buf is not None]
    rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        for name, module in backbone.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post_hook(name)))
        backbone.eval()
        if example is None:
            generator = torch.Generator().manual_seed(0)
            x = torch.rand(batch, in_channels, *size, generator=generator).to(device=device, dtype=dtype)
            args, kwargs = (x,), {}
        else:
            args, kwargs = example.args, example.kwargs
            batch, in_channels, size = example.image.shape[0], example.image.shape[1], tuple(example.image.shape[-2:])
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            try:
                output = backbone(*args, **kwargs)
            except Exception as exc:  # the user's network refused the probe: reported by the caller
                raise _ProbeFailed(exc) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for module, key, buf, saved in buffers:
                if getattr(module, key, None) is not buf:
                    setattr(module, key, buf)
                buf.copy_(saved)
    return _ProbeResult(calls, tuple(tuple(t.shape) for t in _flat_tensors(output)), tuple(size), batch,
                        in_channels)


def _probe_with_fallback(backbone: nn.Module, size: Tuple[int, int], in_channels: int,
                         example: Optional[_Example] = None) -> _ProbeResult:
    """The probe at ``size``; if the network raises on it and ``size`` is not square, a square probe.

    Token-based transformers (Uformer-style, ``h = w = sqrt(L)``) accept square inputs only. When even
    that fails, the network's own error is reported as a :class:`UNetStructureError`, with advice.
    With ``example`` (the user's inputs) there is one probe, on those inputs.
    """
    if example is not None:
        try:
            return _probe(backbone, size, in_channels, example=example)
        except _ProbeFailed as failed:
            raise UNetStructureError(
                f"the probe forward failed inside {type(backbone).__name__} on example_inputs (image "
                f"{tuple(example.image.shape)}): {failed}. " + _HOW_TO_SPEC) from failed.cause
    try:
        return _probe(backbone, size, in_channels)
    except _ProbeFailed as first:
        failure = first
    tried = f"{PROBE_BATCH} x {in_channels} x {size[0]} x {size[1]}"
    if size[0] != size[1]:
        side = max(size)
        try:
            result = _probe(backbone, (side, side), in_channels)
        except _ProbeFailed as second:
            raise UNetStructureError(
                f"the probe forward failed inside {type(backbone).__name__}: with a {tried} input: "
                f"{failure}; with a square {side} x {side} one too: {second}. Pass probe_size=(H, W) that "
                f"the network accepts and in_channels= if {in_channels} is wrong. " + _HOW_TO_SPEC) from second.cause
        result.note = (f"square probe {side} x {side}: the network raised on the {size[0]} x {size[1]} probe "
                       f"({str(failure)[:160]})")
        return result
    raise UNetStructureError(
        f"the probe forward failed inside {type(backbone).__name__} with a {tried} input: {failure}. Pass "
        f"probe_size=(H, W) that the network accepts and in_channels= if {in_channels} is wrong; if its "
        f"forward takes more than the image, pass example_inputs=(x, ...). " + _HOW_TO_SPEC) from failure.cause


class _Layouts:
    """Reads recorded shapes as maps: scale s (size = R / 2**s, stride-2 rounding), channels, layout."""

    def __init__(self, probe: _ProbeResult) -> None:
        ph, pw = probe.size
        sizes = [probe.size]
        shapes = [s for r in probe.calls.values() for s in r.in_shapes]
        shapes += [s for r in probe.calls.values() for _, s in r.out_shapes]
        for shape in shapes:  # a network that pads its input: the padded size is the reference
            if len(shape) == 4 and shape[0] == probe.batch and ph <= shape[2] < 2 * ph and pw <= shape[3] < 2 * pw:
                sizes.append(shape[2:])
        self.reference = (max(h for h, _ in sizes), max(w for _, w in sizes))
        self.batch = probe.batch

    def scale(self, hw: Optional[Tuple[int, int]]) -> Optional[int]:
        if hw is None or tuple(hw) == (1, 1):  # a global pooling is never a stage
            return None
        found = []
        for n, ref in zip(hw, self.reference):
            if n <= 0:
                return None
            s = round(math.log2(ref / n))
            if s < 0 or not (math.floor(ref / 2 ** s) <= n <= math.ceil(ref / 2 ** s)):
                return None
            found.append(s)
        return found[0] if found[0] == found[1] else None

    def _token_hw(self, length: int) -> Optional[Tuple[int, int]]:
        rh, rw = self.reference
        for s in range(0, 16):
            for h in {math.floor(rh / 2 ** s), math.ceil(rh / 2 ** s)}:
                for w in {math.floor(rw / 2 ** s), math.ceil(rw / 2 ** s)}:
                    if h * w == length and (h, w) != (1, 1) and self.scale((h, w)) == s:
                        return h, w
        return None

    def read(self, shape: Shape) -> Optional[Tuple[Tuple[int, int], int, str]]:
        """((h, w), channels, layout) of a recorded shape, or None if it is no feature map."""
        if not shape or shape[0] != self.batch:
            return None
        if len(shape) == 4:
            if self.scale(shape[2:]) is not None:
                return tuple(shape[2:]), shape[1], "BCHW"
            if self.scale(shape[1:3]) is not None:
                return tuple(shape[1:3]), shape[3], "BHWC"
        elif len(shape) == 3:
            hw = self._token_hw(shape[1])
            if hw is not None:
                return hw, shape[2], "BLC"
        return None

    def fill(self, probe: _ProbeResult) -> None:
        for rec in probe.calls.values():
            rec.in_hw = next((m[0] for m in map(self.read, rec.in_shapes) if m is not None), None)
            outs = []
            for index, shape in rec.out_shapes:
                m = self.read(shape)
                if m is not None:
                    outs.append((index, m[0], m[1], m[2]))
            rec.outs = tuple(outs)


def _infer_in_channels(backbone: nn.Module) -> int:
    return input_conv(backbone)[1]


def meta_tensor(module: nn.Module) -> Optional[str]:
    """The name of the module's first parameter or buffer on the meta device (``None`` if there is none)."""
    return next((n for n, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta), None)


def input_conv(backbone: nn.Module) -> Tuple[Optional[str], int]:
    """(name, in_channels) of the first Conv2d, or (None, 3) when the network has none."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module.in_channels
    return None, 3


def _outermost(records: List[_Call]) -> List[_Call]:
    names = {r.name for r in records}
    return [r for r in records
            if not any(r.name.startswith(other + ".") for other in names if other != r.name)]


def _seen(probe: _ProbeResult, layouts: _Layouts, limit: int = 14) -> str:
    """What the probe saw, module by module at the top level: 'name: in -> out' scales."""
    def fmt(rec: _Call) -> str:
        outs = ", ".join(f"1/{2 ** layouts.scale(hw)} {c}ch{'' if lay == 'BCHW' else ' ' + lay}"
                         + ("" if i is None else f" [{i}]") for i, hw, c, lay in rec.outs) or "no map"
        s_in = layouts.scale(rec.in_hw)
        runs = f" (runs {rec.calls} times; first run)" if rec.calls > 1 else ""
        return f"{rec.name}{runs}: {'-' if s_in is None else f'1/{2 ** s_in}'} -> {outs}"
    top = sorted((r for r in probe.calls.values() if r.depth == 1), key=lambda r: r.start)
    lines = [fmt(r) for r in top[:limit]] + ([f"... {len(top) - limit} more"] if len(top) > limit else [])
    return f"the probe ({probe.describe()}{'; ' + probe.note if probe.note else ''}) saw, at the top level: " \
           + "; ".join(lines) + "."


def discover_stages(backbone: nn.Module, probe_size: Tuple[int, int] = DEFAULT_PROBE_SIZE,
                    in_channels: Optional[int] = None) -> Tuple[StageSpec, List[StageInfo]]:
    """Find the encoder, bottleneck and decoder stages of ``backbone`` with one probe forward.

    The encoder stage at scale s (1/2**s) is the outermost module, run once, that takes a map at
    scale s-1 and returns one at scale s (measured against the largest resolution the probe saw);
    where downsampling is functional (``F.max_pool2d`` in ``forward``), the first module that runs
    at scale s stands in. The bottleneck is the last module at the coarsest scale before the
    resolution climbs back; decoder stages are the modules that climb (scale s -> s-1), preferring
    a chain where each climbing module is fed directly by the previous one. Maps may be
    ``B x C x H x W``, channels-last ``B x H x W x C`` or ``B x L x C`` tokens.
    """
    spec, infos, _ = discover(backbone, tuple(probe_size), in_channels)
    return spec, infos


def discover(backbone: nn.Module, probe_size: Tuple[int, int], in_channels: Optional[int],
              example: Optional[_Example] = None) -> Tuple[StageSpec, List[StageInfo], str]:
    in_channels = in_channels or _infer_in_channels(backbone)
    probe = _probe_with_fallback(backbone, probe_size, in_channels, example)
    layouts = _Layouts(probe)
    layouts.fill(probe)
    calls = probe.calls
    scale_of = layouts.scale
    once = [r for r in calls.values() if r.calls == 1 and r.in_hw is not None and r.end >= 0]

    def out_at(rec: _Call, s: int) -> Optional[Tuple[Optional[int], int, str]]:
        """(output index, channels, layout) if ``rec`` returns exactly one map at scale s and none coarser."""
        scales = [(i, scale_of(hw), c, lay) for i, hw, c, lay in rec.outs]
        hits = [(i, c, lay) for i, sc, c, lay in scales if sc == s]
        if len(hits) != 1 or any(sc is not None and sc > s for _, sc, _, _ in scales):
            return None
        return hits[0]

    def first(records: Iterable[_Call]) -> Optional[_Call]:
        records = _outermost(list(records))
        return min(records, key=lambda r: r.start) if records else None

    encoder: List[Tuple[_Call, int, Tuple[Optional[int], int, str]]] = []
    after = -1
    for s in range(1, 32):
        strict = first(r for r in once if r.start > after and scale_of(r.in_hw) == s - 1 and out_at(r, s))
        chosen = strict or first(r for r in once if r.start > after and scale_of(r.in_hw) == s and out_at(r, s))
        if chosen is None:
            break
        encoder.append((chosen, s, out_at(chosen, s)))
        after = chosen.end

    out_map = next((m for m in map(layouts.read, probe.output_shapes) if m is not None), None)
    seen = sorted({s for r in calls.values() for s in [scale_of(r.in_hw)] + [scale_of(o[1]) for o in r.outs]
                   if s is not None})
    if not encoder:
        reused = [r for r in calls.values() if r.calls > 1 and r.in_hw is not None
                  and any(scale_of(hw) == (scale_of(r.in_hw) or 0) + 1 for _, hw, _, _ in r.outs)]
        if reused:
            names = ", ".join(f"{r.name!r} halves the resolution but runs {r.calls} times per forward"
                              for r in _outermost(reused)[:3])
            raise UNetStructureError(
                f"no downsampling module usable as a hook point: {names} (one module reused at every level), and "
                f"a hook point must run once. Give each level its own module (e.g. one nn.MaxPool2d per level; "
                f"they hold no weights, so trained checkpoints still load), or name stages that run once in a "
                f"StageSpec; {_seen(probe, layouts)} " + _HOW_TO_SPEC)
        raise UNetStructureError(
            f"no downsampling found: the probe ({probe.describe()}) saw feature maps only at scale(s) {seen} "
            f"(1/2**s of the input) and no module that halves the resolution; {_seen(probe, layouts)} "
            + _HOW_TO_SPEC)
    if out_map is None or scale_of(out_map[0]) != 0:
        got = "no image-shaped output" if out_map is None else f"an output of {out_map[0]}"
        raise UNetStructureError(
            f"no way back up: the network goes down to 1/{2 ** encoder[-1][1]} of the input but returns {got}, "
            f"not a map at the input's resolution; {_seen(probe, layouts)} " + _HOW_TO_SPEC)

    deepest, depth, _ = encoder[-1]

    def climbs(rec: _Call) -> bool:
        scales = [scale_of(rec.in_hw)] + [scale_of(hw) for _, hw, _, _ in rec.outs]
        return rec.start > deepest.end and any(sc is not None and sc < depth for sc in scales)

    t_climb = min((r.start for r in calls.values() if r.in_hw is not None and climbs(r)), default=1 << 62)
    # The bottleneck: the last outermost module that stays at the coarsest scale before the climb.
    middles = _outermost([r for r in once if deepest.end < r.start and r.end < t_climb
                          and scale_of(r.in_hw) == depth and out_at(r, depth)])
    bottleneck = max(middles, key=lambda r: r.end) if middles else deepest

    def climbing(after: int, s: int) -> List[_Call]:
        found = _outermost([r for r in once if r.start > after and scale_of(r.in_hw) == s and out_at(r, s - 1)])
        return sorted(found, key=lambda r: r.start)

    def fed(rec: _Call, prev: str) -> bool:
        return rec.fed_by is not None and (rec.fed_by == prev or rec.fed_by.startswith(prev + "."))

    def fed_chain(prev: _Call, s: int) -> List[_Call]:
        """The longest run of climbing modules each fed directly by the previous one (latest on a tie:
        resampling side branches run before the main path's own up-step)."""
        best: List[_Call] = []
        if s == 0:
            return best
        for rec in climbing(prev.end, s):
            if fed(rec, prev.name):
                chain = [rec] + fed_chain(rec, s - 1)
                if len(chain) > len(best) or (len(chain) == len(best) and rec.start > best[0].start):
                    best = chain
        return best

    chain = fed_chain(bottleneck, depth)
    # where the climb goes through functional code (a concat before the up-step): the first climbing
    # module at each remaining scale
    after = chain[-1].end if chain else bottleneck.end
    for s in range(depth - len(chain), 0, -1):
        ups = climbing(after, s)
        if not ups:
            break
        chain.append(ups[0])
        after = ups[0].end
    decoder = [(rec, depth - k - 1, out_at(rec, depth - k - 1)) for k, rec in enumerate(chain)]

    infos = [StageInfo("encoder", rec.name, s, hit[1], hit[0], hit[2]) for rec, s, hit in encoder[:3]]
    hit = out_at(bottleneck, depth)
    infos.append(StageInfo("bottleneck", bottleneck.name, depth, hit[1], hit[0], hit[2]))
    infos += [StageInfo("decoder", rec.name, s, hit[1], hit[0], hit[2]) for rec, s, hit in decoder]
    spec = StageSpec(encoder=tuple(i.name for i in infos if i.role == "encoder"), bottleneck=bottleneck.name,
                     decoder=tuple(i.name for i in infos if i.role == "decoder"))
    return spec, infos, probe.note


_HOW_TO_SPEC = (
    "If this is a U-Net, name its stages explicitly: wrap_unet(net, stages=StageSpec(encoder=['down1', "
    "'down2', 'down3'], bottleneck='middle', decoder=['up3', 'up2', 'up1'])) with names from "
    "net.named_modules() (in an options file: stages: {encoder: [...], bottleneck: ..., decoder: [...]}).")


def resolve_spec(backbone: nn.Module, spec: StageSpec, probe_size: Tuple[int, int], in_channels: Optional[int],
                  example: Optional[_Example] = None) -> Tuple[List[StageInfo], str]:
    """Check that every name in ``spec`` is a module run once per forward, and read its channels."""
    check_stage_names(spec, backbone, error=UNetStructureError)
    in_channels = in_channels or _infer_in_channels(backbone)
    probe = _probe_with_fallback(backbone, tuple(probe_size), in_channels, example)
    layouts = _Layouts(probe)
    layouts.fill(probe)
    calls = probe.calls
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
            shapes = [s for _, s in rec.out_shapes]
            raise UNetStructureError(
                f"stages: module {name!r} returns no feature map (B x C x H x W, B x H x W x C or B x L x C "
                f"at a scale of the input); the probe saw output shape(s) {shapes or 'none'}")
        index, hw, channels, layout = rec.outs[0]
        if role == "encoder":  # for tuple outputs, take the element nearest the expected scale
            index, hw, channels, layout = min(rec.outs, key=lambda o: abs((layouts.scale(o[1]) or 0) - scale))
        found = layouts.scale(hw)
        infos.append(StageInfo(role, name, found if found is not None else scale, channels, index, layout))
    return infos, probe.note
