"""Where the prompt enters the user's network: the forward hooks that :func:`wrap_unet` attaches.

One :class:`StageHook` per hook point sends the stage's output through its injection module. The hooks are
registered with ``register_forward_hook`` and the returned ``RemovableHandle``s are kept
(:class:`HookSet`), so unwrapping removes exactly those hooks; nothing here reads the private
``_forward_hooks`` dicts.

Activation checkpointing: ``torch.utils.checkpoint`` re-runs a hooked stage during backward, after
the wrapper's ``forward`` has returned. The hook must then apply the same prompt as in the forward
pass, or the recomputed graph differs from the original one (``use_reentrant=False`` raises a
``CheckpointError``; ``use_reentrant=True`` silently gives other gradients). Each forward that
builds an autograd graph therefore records the autograd sequence numbers it spanned and its prompt;
the prompt is held by that graph's output node (``grad_fn.metadata``), so it lives exactly as long
as the graph. A hook that runs during backward looks up the node the autograd engine is executing
(created during one forward, so its sequence number falls in that forward's range) and applies
that forward's prompt. Several forwards before one backward, and ``retain_graph=True``, work too.

Imports only torch.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .prompter import Prompt
from .stages import StageInfo
from ..errors import ConStyleRuntimeError


__all__ = ["HookSet", "capturing", "StageHook", "PromptLedger", "to_channels_first", "from_channels_first"]


# --------------------------------------------------------------------------------------------
# Layouts: the injection modules work on B x C x H x W; stages may return B x H x W x C or B x L x C tokens
# --------------------------------------------------------------------------------------------
def _token_grid(length: int, image_hw: Tuple[int, int], name: str) -> Tuple[int, int]:
    """(h, w) with h * w == length and h / w as close as possible to the image's aspect ratio."""
    height, width = image_hw
    estimate = (length * height / max(width, 1)) ** 0.5
    best = None
    for h in range(max(1, int(estimate) - 3), int(estimate) + 5):
        if length % h == 0:
            w = length // h
            err = abs(h / w - height / width)
            if best is None or err < best[0]:
                best = (err, h, w)
    if best is None:
        raise ConStyleRuntimeError(f"ConStyle hook on {name!r}: cannot lay {length} tokens out as an h x w grid "
                           f"for a {height} x {width} input")
    return best[1], best[2]


def to_channels_first(x: Tensor, layout: str, image_hw: Tuple[int, int], name: str) -> Tensor:
    """A stage output in ``layout`` ("BCHW", "BHWC" or "BLC") as a ``B x C x h x w`` map."""
    if layout == "BCHW":
        return x
    if layout == "BHWC":
        return x.permute(0, 3, 1, 2)
    h, w = _token_grid(x.shape[1], image_hw, name)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def from_channels_first(y: Tensor, layout: str, like: Tensor) -> Tensor:
    """Back from ``B x C x h x w`` to ``layout``, with the strides of ``like`` (the stage's own output).

    Same strides as the network produced, so that what follows runs exactly as without the hook (a
    ``view`` that worked still works; matmul kernels see the same memory layout).
    """
    if layout == "BCHW":
        return y
    out = y.permute(0, 2, 3, 1) if layout == "BHWC" else y.flatten(2).transpose(1, 2)
    if out.stride() != like.stride():
        out = torch.empty_like(like).copy_(out)
    return out


# --------------------------------------------------------------------------------------------
# Which prompt a hook applies
# --------------------------------------------------------------------------------------------
def _sequence_now() -> int:
    """The autograd sequence number the next node created on this thread will get (about)."""
    with torch.enable_grad():
        return torch.empty(0, requires_grad=True).view(0).grad_fn._sequence_nr()


def capturing() -> bool:
    """True while torch.compile, torch.jit.trace or scripting captures the code being run."""
    compiler = getattr(torch, "compiler", None)
    compiling = compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()
    return bool(compiling or torch.jit.is_tracing() or torch.jit.is_scripting())


class _Holder:
    """What a graph keeps alive: the prompt of the forward that built it, and the injection modules it used."""

    __slots__ = ("found", "__weakref__")

    def __init__(self, found: "Found") -> None:
        self.found = found


# (prompt, image H x W, the injection modules of the wrapper replica that runs the forward)
Found = Tuple["Prompt", Tuple[int, int], nn.ModuleDict]


class PromptLedger:
    """The prompt of the forward in progress, and those of earlier forwards whose graphs still live.

    ``begin`` / ``end`` bracket one call of the backbone; ``lookup`` gives a hook its prompt and
    injection modules: the active ones inside ``forward``, the recorded ones when autograd re-runs the stage
    during backward (activation checkpointing), ``None`` when the backbone is called on its own
    (also when such a bare call is re-run during backward: it is recomputed bare, as it ran).

    The forward in progress is per thread: ``nn.DataParallel`` runs one replica of the wrapper per
    device in its own thread (replicas share this ledger and the hooks), and each replica's hooks
    must apply that replica's prompt with that replica's injection modules.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._graphs: List[Tuple[int, int, "weakref.ref[_Holder]"]] = []

    @property
    def active(self) -> Optional[Found]:
        return getattr(self._local, "active", None)

    def begin(self, prompt: "Prompt", image_hw: Tuple[int, int], injections: nn.ModuleDict) -> None:
        self._local.active = (prompt, image_hw, injections)
        self._graphs = [g for g in self._graphs if g[2]() is not None]
        self._local.start = _sequence_now() if torch.is_grad_enabled() and not capturing() else None

    def end(self, output: Any) -> None:
        found, start = self.active, getattr(self._local, "start", None)
        self.abort()
        if start is None or found is None:
            return
        nodes = {id(t.grad_fn): t.grad_fn for t in _tensors(output) if t.grad_fn is not None}
        if not nodes:
            return
        holder = _Holder(found)
        for node in nodes.values():  # the graph's output nodes hold the prompt as long as they live
            node.metadata.setdefault("constyle_prompts", []).append(holder)
        self._graphs.append((start, _sequence_now(), weakref.ref(holder)))

    def abort(self) -> None:
        self._local.active = None
        self._local.start = None

    def lookup(self) -> Optional[Found]:
        found = self.active
        if found is not None:
            return found
        if not _in_backward():
            return None  # the backbone was called on its own, not through the wrapper
        node = torch._C._current_autograd_node() if hasattr(torch._C, "_current_autograd_node") else None
        if node is not None:
            seq = node._sequence_nr()
            for start, stop, ref in reversed(self._graphs):
                holder = ref()
                if holder is not None and start <= seq <= stop:
                    return holder.found
        # Not a graph a wrapper forward built: net.backbone(x) called on its own, re-run as it ran (bare).
        return None

    def __getstate__(self):  # weak references do not pickle; recorded graphs never outlive a process
        return {"version": 1}

    def __setstate__(self, state) -> None:
        self.__init__()

    def __deepcopy__(self, memo) -> "PromptLedger":
        return PromptLedger()


def _in_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


# --------------------------------------------------------------------------------------------
# The hooks
# --------------------------------------------------------------------------------------------
class StageHook:
    """A forward hook that sends a stage's output through its injection module.

    A plain object (not a closure) so that ``copy.deepcopy`` of the wrapper gives hooks bound to the
    copy's ledger and injection modules, and so that pickling works.
    """

    def __init__(self, ledger: "PromptLedger", info: "StageInfo", key: str, feature: Optional[int]) -> None:
        self.ledger = ledger
        self.info = info
        self.key = key
        self.feature = feature

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        found = self.ledger.lookup()
        if found is None:
            return None
        prompt, image_hw, injections = found
        index = self.info.output_index
        x = output if index is None else output[index]
        layout = getattr(self.info, "layout", "BCHW")
        expected = 3 if layout == "BLC" else 4
        if not isinstance(x, Tensor) or x.dim() != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConStyleRuntimeError(f"ConStyle hook on {self.info.name!r}: expected a {layout} output "
                               f"(as the probe saw), got {got}")
        injection = injections[self.key]
        stage = x
        x = to_channels_first(x, layout, image_hw, self.info.name)
        if x.shape[1] != self.info.channels:
            raise ConStyleRuntimeError(
                f"ConStyle hook on {self.info.name!r} ({self.info.role}) gives {x.shape[1]} channels, but the hook "
                f"point was recorded with {self.info.channels}: a StageSpec or a config.json stage_info that names "
                f"another module than the one wrapped")
        if self.feature is not None:
            y = injection(x, prompt.features[self.feature])
        else:
            y = injection(x, prompt.latent)
        y = from_channels_first(y, layout, stage)
        if index is None:
            return y
        items = list(output)
        items[index] = y
        if hasattr(output, "_make"):  # a namedtuple
            return output._make(items)
        return type(output)(items) if isinstance(output, tuple) else items


class HookSet:
    """The hooks of one wrapper and their ``RemovableHandle``s (``remove`` takes them all off)."""

    def __init__(self) -> None:
        self.handles: list = []

    def attach(self, backbone: nn.Module, ledger: PromptLedger,
               plan: Sequence[Tuple[str, "StageInfo", Optional[int]]]) -> None:
        """Hook each planned stage (``(injection key, stage, prompt feature index or None)``) of ``backbone``."""
        modules = dict(backbone.named_modules())
        for key, info, feature in plan:
            self.handles.append(modules[info.name].register_forward_hook(StageHook(ledger, info, key, feature)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __len__(self) -> int:
        return len(self.handles)


# Backbones that carry a wrapper's hooks (the wrapper weakly: a dropped wrapper drops its entry).
_WRAPPED: "weakref.WeakKeyDictionary[nn.Module, Tuple[weakref.ref, HookSet]]" = weakref.WeakKeyDictionary()


def mark_wrapped(backbone: nn.Module, owner: Optional[nn.Module], hooks: Optional[HookSet] = None) -> None:
    """Record that ``owner``'s ``hooks`` are on ``backbone`` (``owner=None``: that they are gone)."""
    if owner is None:
        _WRAPPED.pop(backbone, None)
    else:
        _WRAPPED[backbone] = (weakref.ref(owner), hooks if hooks is not None else HookSet())


def wrapper_of(backbone: nn.Module) -> Optional[nn.Module]:
    """The live wrapper whose hooks are on ``backbone``, if any."""
    owner, hooks = _WRAPPED.get(backbone, (lambda: None, HookSet()))
    wrapper = owner()
    return wrapper if wrapper is not None and len(hooks) else None
