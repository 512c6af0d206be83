"""Stage 1: pre-training the ConStyle v2 prompter with momentum contrast, trainer-independent.

- :class:`ConStyleMoCo`: the MoCo wrapper (query encoder, momentum key encoder, queue of negative
  latents). Its state dict has the layout of the authors' released checkpoint
  (``encoder_q.*``, ``encoder_k.*``, ``queue``, ``queue_ptr``).
- :class:`ConStylePretrainLoss` / :func:`pretrain_losses`: the five losses with their iteration
  switches.
- :func:`accuracy`: top-k accuracy of the pretext classifier.

The BasicSR and MMEngine integrations wrap these; nothing here knows about a trainer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.degradation_head import DegradationHead, save_degradation_head
from ..data.degradations import ALL_IN_ONE
from .losses import (ClassificationLoss, ContentLoss, DistillKLLoss, InfoNCELoss, StyleLoss,
                     check_labels)
from ..core.prompter import (LATENT_DIM, NUM_CLASSES, CheckpointError, ConStyleV2, Encoding,
                       extract_prompter_state, flatten_checkpoint, read_state_dict)
from ..errors import ConStyleError, ConStyleTypeError

__all__ = [
    "ConStyleMoCo",
    "ConStylePretrainLoss",
    "MoCoOutput",
    "accuracy",
    "collapse_message",
    "export_prompter_files",
    "latent_spread",
    "pretrain_losses",
]

PathLike = Union[str, os.PathLike]

AUTHORS_QUEUE_SIZE = 65760
# latent_spread below this: the latents barely depend on the image. Measured here: 0.03 for a
# prompter whose unnormalised InfoNCE collapsed, < 1e-4 for a random one, 0.7-0.9 for healthy ones.
COLLAPSE_SPREAD = 0.1
LOSS_NAMES = ("infonce", "content", "style", "class", "kl", "degradation")


class MoCoOutput(NamedTuple):
    """What one training forward of :class:`ConStyleMoCo` returns (``B`` = local batch size).

    q_enc: the query encoder's :class:`~constyle_plugin.core.prompter.Encoding` of the degraded view
        (``features``, ``pooled`` ``B x 256``, ``z1`` ``B x 128``, ``z2`` ``B x 128``), with gradients.
    q_logits: ``B x C`` pretext logits of the query (student), with gradients.
    k: ``B x 128``, the key encoder's ``z2`` of the clean view (no gradients, computed after the
        momentum update).
    k_logits: ``B x C``, the key encoder's pretext logits (teacher, no gradients).
    queue: ``128 x K``, the queue of negatives as it was before this batch was enqueued.
    neg1: ``B x 128``, queue columns ``ptr+B .. ptr+2B`` (the slot after the one about to be
        overwritten), one latent per row; the style loss pairs it with ``z1``.
    neg2: ``B x 128``, queue columns ``ptr .. ptr+B`` (the slot about to be overwritten); the style
        loss pairs it with ``z2``. Column indices wrap modulo K.
    q_degradation_logits: ``B x D`` logits of the degradation head on the query's ``z2`` (with
        gradients), or ``None`` when the model has no degradation head.
    """

    q_enc: Encoding
    q_logits: Tensor
    k: Tensor
    k_logits: Tensor
    queue: Tensor
    neg1: Tensor
    neg2: Tensor
    q_degradation_logits: Optional[Tensor] = None


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _check_image(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ConStyleTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ConStyleError(f"{name}: expected a B x 3 x H x W image batch, got shape {tuple(x.shape)}")


class ConStyleMoCo(nn.Module):
    """The ConStyle v2 MoCo model: a trained query encoder, a momentum key encoder and a queue.

    Submodules ``encoder_q`` and ``encoder_k`` (both :class:`~constyle_plugin.core.prompter.ConStyleV2`,
    ``encoder_k`` a copy without gradients) and buffers ``queue`` (``128 x K``, standard normal at
    initialisation) and ``queue_ptr`` (``long``, size 1): the names of the authors' checkpoint.

    Args:
        queue_size: K, the number of negatives (authors: 65 760). In training it must be a
            multiple of the (all-ranks) batch size.
        momentum: m of the key encoder update ``k <- m k + (1 - m) q`` (0.999).
        temperature: InfoNCE temperature (0.07); used by :meth:`pretrain_loss`.
        normalize: MoCo's L2 normalisation of latents, keys and queue (authors: ``False``). When
            ``True`` the initial queue and every enqueued latent are normalised.
        enqueue: ``'query'`` (authors: the query latents ``z2_q`` join the queue) or ``'key'`` (MoCo).
        num_classes: size of the pretext classifier (ImageNet: 1000).
        encoder_q: start from this (non-frozen) prompter instead of a fresh one; the key encoder
            starts as its copy.
        degradation_classes: 0 (the authors' model) or D > 0: a linear head ``degradation_head``
            (``128 -> D``) on the query's latent prompt ``z2``, trained by the ``degradation`` loss
            to predict the query's degradation type. Supervising ``z2`` itself, not only the
            pooled features, is what makes the latent prompt carry the degradation.
            :meth:`export_prompter` leaves it out, so the exported prompter has the released
            layout; :meth:`save_prompter` writes it beside the prompter file, for
            ``constyle inspect``.

    In training mode, :meth:`forward` also updates the key encoder and the queue; in eval mode it
    changes no state. The key encoder follows the module's train/eval mode, as in MoCo (its
    BatchNorm uses batch statistics while training).
    """

    def __init__(self, queue_size: int = AUTHORS_QUEUE_SIZE, momentum: float = 0.999,
                 temperature: float = 0.07, normalize: bool = False, enqueue: str = "query",
                 num_classes: int = NUM_CLASSES, encoder_q: Optional[ConStyleV2] = None,
                 degradation_classes: int = 0) -> None:
        super().__init__()
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ConStyleError(f"queue_size: expected a positive integer, got {queue_size!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ConStyleError(f"momentum: must be in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ConStyleError(f"temperature: must be > 0, got {temperature}")
        if (not isinstance(degradation_classes, int) or isinstance(degradation_classes, bool)
                or degradation_classes < 0):
            raise ConStyleError(f"degradation_classes: expected an integer >= 0, got {degradation_classes!r}")
        if enqueue not in ("query", "key"):
            raise ConStyleError(f"enqueue: expected 'query' (authors) or 'key' (MoCo), got {enqueue!r}")
        if encoder_q is None:
            encoder_q = ConStyleV2(num_classes=num_classes)
        elif not isinstance(encoder_q, ConStyleV2):
            raise ConStyleTypeError(f"encoder_q: expected a ConStyleV2, got {type(encoder_q).__name__}")
        elif encoder_q.frozen:
            raise ConStyleError("encoder_q: this prompter is frozen; load it with "
                             "ConStyleV2.from_pretrained(path, frozen=False) to pre-train it further")
        self.queue_size = queue_size
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.enqueue = enqueue

        self.encoder_q = encoder_q
        self.encoder_k = ConStyleV2(num_classes=encoder_q.classifier[-1].out_features)
        self.encoder_k.load_state_dict(encoder_q.state_dict())
        ref = next(encoder_q.parameters())
        self.encoder_k.to(device=ref.device, dtype=ref.dtype)
        self.encoder_k.requires_grad_(False)

        queue = torch.randn(LATENT_DIM, queue_size, device=ref.device)
        if self.normalize:
            queue = F.normalize(queue, dim=0)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.degradation_classes = degradation_classes
        self.degradation_head = (nn.Linear(LATENT_DIM, degradation_classes).to(device=ref.device, dtype=ref.dtype)
                                 if degradation_classes else None)

    # ------------------------------------------------------------------ MoCo steps
    @torch.no_grad()
    def momentum_update(self) -> None:
        """``param_k <- m * param_k + (1 - m) * param_q`` for every parameter (buffers untouched).

        The arithmetic of ``p_k.mul_(m).add_(p_q, alpha=1 - m)``, issued as two multi-tensor kernels
        rather than two per parameter."""
        m = self.momentum
        keys = [p.data for p in self.encoder_k.parameters()]
        queries = [p_q.detach().to(p_k.dtype) for p_q, p_k in zip(self.encoder_q.parameters(), keys)]
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, queries, alpha=1.0 - m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, latents: Tensor) -> None:
        """Write ``latents`` (``B x 128``) into the queue at ``queue_ptr`` and advance the pointer.

        Under ``torch.distributed`` the latents of all ranks are gathered first (every rank must
        pass the same batch size) so the queues stay identical; the pointer advances by the
        gathered batch and wraps modulo K, and so do the written columns. The pointer stays on the
        queue's device: nothing is read back to the host.
        """
        if not isinstance(latents, Tensor) or latents.dim() != 2 or latents.shape[1] != self.queue.shape[0]:
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ConStyleError(f"latents: expected B x {self.queue.shape[0]} (the queue's latent "
                             f"dimension), got {shape}")
        latents = latents.detach()
        world = _world_size()
        if world > 1:
            gathered = [torch.empty_like(latents) for _ in range(world)]
            dist.all_gather(gathered, latents.contiguous())
            latents = torch.cat(gathered, dim=0)
        n, size = latents.shape[0], self.queue.shape[1]
        if n > size:
            raise ConStyleError(f"latents: {n} latents (all ranks) do not fit a queue of {size}")
        if self.normalize:
            latents = F.normalize(latents, dim=1)
        cols = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
        self.queue.index_copy_(1, cols, latents.t().to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(size)

    def forward(self, query_img: Tensor, key_img: Tensor) -> MoCoOutput:
        """One MoCo step: encode both views; in training also update the key encoder and the queue.

        ``query_img``: ``B x 3 x H x W`` (degraded view), ``key_img``: ``B x 3 x H' x W'`` (clean
        view of the same pictures), values in [0, 1]. Returns :class:`MoCoOutput`.
        """
        _check_image(query_img, "query_img")
        _check_image(key_img, "key_img")
        b = query_img.shape[0]
        if key_img.shape[0] != b:
            raise ConStyleError(f"key_img: batch size {key_img.shape[0]} does not match query_img's {b}")
        if self.training:
            if b < 2:
                raise ConStyleError(f"query_img: training needs a batch of at least 2 images "
                                 f"(BatchNorm1d in mlp1/mlp2), got {b}")
            total = b * _world_size()
            if self.queue_size % total:
                raise ConStyleError(f"queue_size {self.queue_size} is not a multiple of the batch size "
                                 f"{total} (batch {b} x {total // b} rank(s)); choose a queue size "
                                 f"divisible by it")

        q_enc = self.encoder_q.encode(query_img)
        q_logits = self.encoder_q.classifier(q_enc.pooled)

        with torch.no_grad():
            if self.training:
                self.momentum_update()
            k_enc = self.encoder_k.encode(key_img)
            k = k_enc.z2
            k_logits = self.encoder_k.classifier(k_enc.pooled)

            # A copy: the enqueue below writes into the buffer in place.
            queue = self.queue.clone()
            size = queue.shape[1]
            # column indices computed on the device from the pointer buffer (no host read-back)
            steps = self.queue_ptr + torch.arange(b, device=queue.device)
            neg2 = queue.index_select(1, steps % size).t()
            neg1 = queue.index_select(1, (steps + b) % size).t()

            if self.training:
                self.dequeue_and_enqueue(q_enc.z2 if self.enqueue == "query" else k)

        q_deg = self.degradation_head(q_enc.z2) if self.degradation_head is not None else None
        return MoCoOutput(q_enc, q_logits, k, k_logits, queue, neg1, neg2, q_deg)

    # ------------------------------------------------------------------ losses
    def pretrain_loss(self, **kwargs) -> "ConStylePretrainLoss":
        """A :class:`ConStylePretrainLoss` with this model's temperature and normalisation."""
        kwargs.setdefault("temperature", self.temperature)
        kwargs.setdefault("normalize", self.normalize)
        return ConStylePretrainLoss(**kwargs)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path: PathLike, *, param_key: Optional[str] = None,
                        strict: bool = True, queue_size: Optional[int] = None,
                        map_location: Union[str, torch.device] = "cpu", **kwargs) -> "ConStyleMoCo":
        """Load a MoCo checkpoint (the authors' layout) to continue pre-training.

        ``path``: a BasicSR checkpoint (``params`` / ``params_ema``, optional ``module.`` prefix), a
        bare state dict or a ``.safetensors`` file holding ``encoder_q.*``, ``encoder_k.*``,
        ``queue`` (``128 x K``) and ``queue_ptr``. K is read from the file.

        ``param_key``: ``None`` takes ``params_ema`` when present, else ``params`` (as
        :func:`~constyle_plugin.core.prompter.read_state_dict`). Note that BasicSR's EMA averages
        parameters only, so in a ``params_ema`` the queue, its pointer and the BatchNorm statistics
        are those of the EMA copy's initialisation; pass ``param_key='params'`` to resume the exact
        training state.

        ``strict=False`` also accepts a prompter-only checkpoint (any file
        :meth:`ConStyleV2.from_pretrained` reads): the key encoder starts as a copy of the query
        encoder and the queue is fresh (``queue_size``, default 65 760).

        Other keyword arguments (``momentum``, ``temperature``, ``normalize``, ``enqueue``) go to the
        constructor. Raises :class:`~constyle_plugin.core.prompter.CheckpointError` naming the file and
        the missing, unexpected or mis-shaped keys.
        """
        source = str(path)
        state = _read_state(path, param_key, map_location)
        has_moco = any(k.startswith("encoder_k.") for k in state) or "queue" in state
        if not has_moco:
            if strict:
                raise CheckpointError(
                    f"{source}: not a ConStyle v2 MoCo checkpoint: no encoder_k.* or queue entries "
                    f"(first keys: {', '.join(list(state)[:5])}); pass strict=False to start "
                    f"pre-training from a prompter-only file")
            encoder_q = ConStyleV2(num_classes=_num_classes(extract_prompter_state(state)))
            encoder_q.load_prompter_state(state, source=source)
            return cls(queue_size=queue_size or AUTHORS_QUEUE_SIZE, encoder_q=encoder_q, **kwargs)

        queue = state.get("queue")
        if not isinstance(queue, Tensor) or queue.dim() != 2 or queue.shape[0] != LATENT_DIM:
            found = "missing" if queue is None else f"shape {tuple(queue.shape)}"
            raise CheckpointError(f"{source}: key 'queue' should be {LATENT_DIM} x K, got {found}")
        size = queue.shape[1]
        if queue_size is not None and queue_size != size:
            raise CheckpointError(f"{source}: key 'queue' holds {size} negatives but "
                                  f"queue_size={queue_size} was asked for")
        q_state = {k[len("encoder_q."):]: v for k, v in state.items() if k.startswith("encoder_q.")}
        head = state.get("degradation_head.weight")
        if isinstance(head, Tensor) and head.dim() == 2:
            kwargs.setdefault("degradation_classes", int(head.shape[0]))
        model = cls(queue_size=size, num_classes=_num_classes(q_state), **kwargs)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                     for k, v in own.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or misshaped:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
                if keys:
                    parts.append(f"{len(keys)} {label} key(s), first: {', '.join(keys[:5])}")
            raise CheckpointError(f"{source}: does not match ConStyleMoCo: " + "; ".join(parts))
        ptr = int(state["queue_ptr"].reshape(-1)[0])
        if not 0 <= ptr < size:
            raise CheckpointError(f"{source}: key 'queue_ptr' = {ptr} lies outside the queue [0, {size})")
        model.load_state_dict({k: state[k] for k in own}, strict=True)
        return model

    def export_prompter(self) -> ConStyleV2:
        """A standalone, frozen copy of the query encoder (``save_pretrained`` it to ship it)."""
        ref = next(self.encoder_q.parameters())
        prompter = ConStyleV2(num_classes=self.encoder_q.classifier[-1].out_features)
        prompter.load_state_dict(self.encoder_q.state_dict())
        return prompter.to(device=ref.device, dtype=ref.dtype).freeze()

    def export_degradation_head(self) -> Optional[DegradationHead]:
        """A standalone copy of the degradation head (on the CPU, float32), or ``None`` without one.

        Its classes are the names of :data:`~constyle_plugin.degradations.ALL_IN_ONE`, in that order: the
        pre-training data labels each query with its type's index there. Logits beyond them (a head
        built larger than the eight types) are called ``class_<i>``.
        """
        if self.degradation_head is None:
            return None
        count = self.degradation_head.out_features
        names = list(ALL_IN_ONE)[:count] + [f"class_{i}" for i in range(len(ALL_IN_ONE), count)]
        head = DegradationHead(names)
        head.load_state_dict({k: v.detach().float().cpu() for k, v in self.degradation_head.state_dict().items()})
        return head.eval().requires_grad_(False)

    def save_prompter(self, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Tuple[Path, Optional[Path]]:
        """Write :meth:`export_prompter` to ``path`` (``.safetensors`` or ``.pth``, the released layout)
        and, when the model has a degradation head, the head as its sidecar
        (:func:`~constyle_plugin.degradation_head.head_path`: ``<stem>.head.safetensors``).

        Returns ``(prompter file, sidecar or None)``.
        """
        prompter = self.export_prompter()
        written = prompter.save_pretrained(path, metadata=metadata)
        head = self.export_degradation_head()
        return written, (save_degradation_head(head, written, prompter) if head is not None else None)

    def extra_repr(self) -> str:
        return (f"queue_size={self.queue_size}, momentum={self.momentum}, temperature={self.temperature}, "
                f"normalize={self.normalize}, enqueue={self.enqueue!r}, "
                f"degradation_classes={self.degradation_classes}")


def export_prompter_files(checkpoint: PathLike, output: PathLike,
                          param_key: Optional[str] = None) -> Tuple[Path, Optional[Path]]:
    """A stage-1 checkpoint (``experiments/<name>/models/net_g_<iter>.pth``) to the files that ship:
    the prompter at ``output`` and, when the run trained a degradation head, its sidecar
    ``<stem>.head.safetensors`` beside it (see :meth:`ConStyleMoCo.save_prompter`).

    ``param_key``: ``None`` takes ``params_ema`` when the checkpoint has it (what the authors release),
    else ``params``. Returns ``(prompter file, sidecar or None)``.
    """
    return ConStyleMoCo.from_pretrained(checkpoint, param_key=param_key).save_prompter(output)


def _num_classes(prompter_state: Mapping[str, Tensor]) -> int:
    weight = prompter_state.get("classifier.3.weight")
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.dim() == 2 else NUM_CLASSES


def _read_state(path: PathLike, param_key: Optional[str],
                map_location: Union[str, torch.device]) -> Dict[str, Tensor]:
    if param_key is None:
        return read_state_dict(path, map_location=map_location)
    if str(path).endswith(".safetensors"):
        raise ConStyleError(f"param_key: {path} is a flat .safetensors file; leave param_key=None")
    # read_state_dict first: it raises the informative error for missing, unsafe or broken files.
    read_state_dict(path, map_location=map_location)
    raw = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(raw, dict) or not isinstance(raw.get(param_key), dict):
        keys = ", ".join(map(str, list(raw)[:5])) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: has no '{param_key}' entry (top-level keys: {keys})")
    return flatten_checkpoint(raw[param_key], source=f"{path}[{param_key}]")


# ---------------------------------------------------------------------- losses
class ConStylePretrainLoss(nn.Module):
    """The five stage-1 losses of ConStyle v2 with their iteration switches.

    Args:
        temperature, normalize: of the InfoNCE loss (authors: 0.07, ``False``); use
            :meth:`ConStyleMoCo.pretrain_loss` to take them from the model.
        class_iter: the pretext cross-entropy is on while ``iteration < class_iter``
            (authors: 50 000; ``None``: always).
        kl_iter: the distillation loss is on while ``iteration < kl_iter`` (``None``, the
            authors' setting: always).
        kl_temperature: temperature of the distillation (authors: 1).
        label_smoothing: of the pretext cross-entropy (authors: 0).
        weights: per-loss weights by name (``infonce``, ``content``, ``style``, ``class``, ``kl``,
            ``degradation``), default 1 each; a weight of 0 skips that loss.

    Forward: ``(out: MoCoOutput, labels: B class indices or None, iteration: int,
    degradation_labels: B degradation indices or None)`` -> ``{name: scalar}`` with the active
    losses (already weighted) and ``'total'``, their sum. ``labels=None`` skips the pretext loss
    (unlabelled data). The ``degradation`` loss (cross-entropy of the degradation head's logits,
    see ``ConStyleMoCo(degradation_classes=...)``) runs when the model has the head and
    ``degradation_labels`` are given.
    """

    def __init__(self, temperature: float = 0.07, normalize: bool = False,
                 class_iter: Optional[int] = 50000, kl_iter: Optional[int] = None,
                 kl_temperature: float = 1.0, label_smoothing: float = 0.0,
                 weights: Optional[Mapping[str, float]] = None) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ConStyleError(f"weights: unknown loss name(s) {unknown}; expected some of {list(LOSS_NAMES)}")
        w = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}
        self.class_iter = class_iter
        self.kl_iter = kl_iter
        self.infonce = InfoNCELoss(temperature, normalize, loss_weight=w["infonce"])
        self.content = ContentLoss(loss_weight=w["content"])
        self.style = StyleLoss(loss_weight=w["style"])
        self.classification = ClassificationLoss(label_smoothing, loss_weight=w["class"])
        self.kl = DistillKLLoss(kl_temperature, loss_weight=w["kl"])
        self.degradation = ClassificationLoss(label_smoothing, loss_weight=w["degradation"])

    def active(self, iteration: int, has_labels: bool = True,
               has_degradation_labels: bool = False) -> Tuple[str, ...]:
        """The names of the losses computed at ``iteration``."""
        on = []
        for name, module in (("infonce", self.infonce), ("content", self.content), ("style", self.style),
                             ("class", self.classification), ("kl", self.kl),
                             ("degradation", self.degradation)):
            if module.loss_weight == 0:
                continue
            if name == "degradation" and not has_degradation_labels:
                continue
            if name == "class" and (not has_labels or (self.class_iter is not None and iteration >= self.class_iter)):
                continue
            if name == "kl" and self.kl_iter is not None and iteration >= self.kl_iter:
                continue
            on.append(name)
        return tuple(on)

    def forward(self, out: MoCoOutput, labels: Optional[Tensor], iteration: int,
                degradation_labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        if not isinstance(out, MoCoOutput):
            raise ConStyleTypeError(f"out: expected the MoCoOutput of ConStyleMoCo.forward, got {type(out).__name__}")
        if degradation_labels is not None and out.q_degradation_logits is None:
            raise ConStyleError("degradation_labels: given, but the model has no degradation head; build "
                             "ConStyleMoCo with degradation_classes > 0 (network_g.degradation_classes)")
        losses: Dict[str, Tensor] = {}
        for name in self.active(iteration, labels is not None, degradation_labels is not None):
            if name == "infonce":
                losses[name] = self.infonce(out.q_enc.z2, out.k, out.queue)
            elif name == "content":
                losses[name] = self.content(out.q_enc.z2, out.k)
            elif name == "style":
                losses[name] = self.style(out.q_enc.z1, out.q_enc.z2, out.neg1, out.neg2)
            elif name == "class":
                losses[name] = self.classification(out.q_logits, labels)
            elif name == "degradation":
                losses[name] = self.degradation(out.q_degradation_logits, degradation_labels)
            else:
                losses[name] = self.kl(out.q_logits, out.k_logits)
        if not losses:
            raise ConStyleError("no loss is active: every weight is 0 or switched off at this iteration")
        losses["total"] = sum(losses.values())
        return losses


def pretrain_losses(out: MoCoOutput, labels: Optional[Tensor], iteration: int, *,
                    temperature: float = 0.07, normalize: bool = False,
                    class_iter: Optional[int] = 50000, kl_iter: Optional[int] = None,
                    kl_temperature: float = 1.0, label_smoothing: float = 0.0,
                    weights: Optional[Mapping[str, float]] = None) -> Dict[str, Tensor]:
    """Functional form of :class:`ConStylePretrainLoss` (same arguments, same result)."""
    return ConStylePretrainLoss(temperature, normalize, class_iter, kl_iter, kl_temperature,
                                label_smoothing, weights)(out, labels, iteration)


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5)) -> Tuple[float, ...]:
    """Top-k accuracies in percent: ``logits`` ``B x C``, ``labels`` ``B`` -> one float per k."""
    check_labels(logits, labels)
    if logits.shape[0] == 0:
        raise ConStyleError("logits: empty batch")
    ks = tuple(int(k) for k in topk)
    if not ks or min(ks) < 1 or max(ks) > logits.shape[1]:
        raise ConStyleError(f"topk: values must lie in [1, {logits.shape[1]}] (the number of classes), got {ks}")
    top = logits.topk(max(ks), dim=1).indices
    hit = top.eq(labels[:, None])
    return tuple(100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks)


@torch.no_grad()
def latent_spread(latents: Tensor) -> float:
    """How much the latent prompts differ between images: ``B x D`` (B >= 2) -> a float >= 0.

    The per-dimension standard deviation over the batch, averaged over dimensions, divided by the
    root mean square of all latents: 0 when every image gets the same prompt (a collapsed
    prompter), about 1 when the latents vary as much as they are large.
    """
    if latents.ndim != 2 or latents.shape[0] < 2:
        raise ConStyleError(f"latents: expected B x D with B >= 2, got {tuple(latents.shape)}")
    z = latents.detach().float()
    rms = z.pow(2).mean().sqrt()
    if rms == 0:
        return 0.0
    return float(z.std(dim=0).mean() / rms)


def collapse_message(spread: float) -> Optional[str]:
    """A warning for a :func:`latent_spread` below ``COLLAPSE_SPREAD``, else ``None``."""
    if spread >= COLLAPSE_SPREAD:
        return None
    return (f"latent_spread {spread:.3g} < {COLLAPSE_SPREAD}: the query encoder gives (nearly) the same "
            "latent prompt to every image, so it cannot tell degradations apart. With the authors' "
            "unnormalised InfoNCE (normalize: false) a short run or a small data set can collapse this "
            "way; try normalize: true (MoCo's L2-normalised InfoNCE).")
