"""The stage-1 (pre-training) losses of ConStyle v2, each usable on its own.

Every loss is an ``nn.Module`` with a ``loss_weight`` (the returned value is already multiplied by
it) and validates its inputs, naming the tensor at fault. Defaults are the authors' settings.

- :class:`InfoNCELoss`: MoCo's contrastive loss against a queue of negatives.
- :class:`ContentLoss`: mean squared error between query and key latents.
- :class:`StyleLoss`: minus the distance between similarity ("Gram") matrices of the query latents
  and of negatives taken from the queue.
- :class:`DistillKLLoss`: KL divergence from the key encoder's class distribution (teacher) to the
  query encoder's (student).
- :class:`ClassificationLoss`: the pretext cross-entropy (``F.cross_entropy``, with optional label
  smoothing).

Only torch is imported here.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConStyleError, ConStyleTypeError

__all__ = [
    "ClassificationLoss",
    "ContentLoss",
    "DistillKLLoss",
    "InfoNCELoss",
    "StyleLoss",
    "gram_matrix",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ConStyleError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_2d(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise ConStyleTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ConStyleError(f"{name}: expected a 2-D tensor, got shape {tuple(t.shape)}")


def _check_same_shape(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ConStyleError(f"{b_name}: shape {tuple(b.shape)} does not match {a_name} {tuple(a.shape)}")


def gram_matrix(z: Tensor) -> Tensor:
    """The authors' similarity matrix of a batch of latents: ``z z^T / (B * D)``.

    ``z``: ``B x D`` -> ``B x B``.
    """
    _check_2d(z, "z")
    return z @ z.t() / z.numel()


class InfoNCELoss(nn.Module):
    """MoCo's InfoNCE loss with a queue of negatives.

    ``logits = [<q_i, k_i>, q_i . queue] / T`` (``B x (1 + K)``), cross-entropy against index 0.

    Args:
        temperature: T (authors and MoCo: 0.07).
        normalize: L2-normalise ``q``, ``k`` and the queue's columns first, as MoCo does. The
            ConStyle v2 authors do not (default ``False``).
        loss_weight: multiplies the result.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (one value per sample, ``B``).

    Forward: ``q``: ``B x D`` (query latents, with gradients), ``k``: ``B x D`` (positive keys),
    ``queue``: ``D x K`` (negatives). Neither ``k`` nor ``queue`` receives gradients.
    """

    def __init__(self, temperature: float = 0.07, normalize: bool = False, loss_weight: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not temperature > 0:
            raise ConStyleError(f"temperature: must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction(reduction)

    def logits(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        """The contrastive logits ``B x (1 + K)``, divided by the temperature; column 0 is positive."""
        _check_2d(q, "q")
        _check_2d(k, "k")
        _check_2d(queue, "queue")
        _check_same_shape(q, "q", k, "k")
        if queue.shape[0] != q.shape[1]:
            raise ConStyleError(f"queue: its {queue.shape[0]} rows do not match the latent dimension "
                             f"{q.shape[1]} of q (expected a D x K queue, got {tuple(queue.shape)})")
        k = k.detach()
        queue = queue.detach()
        if self.normalize:
            q = F.normalize(q, dim=1)
            k = F.normalize(k, dim=1)
            queue = F.normalize(queue, dim=0)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue.to(q.dtype)
        return torch.cat([l_pos, l_neg], dim=1) / self.temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        logits = self.logits(q, k, queue)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return self.loss_weight * F.cross_entropy(logits, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize}, loss_weight={self.loss_weight}"


class ContentLoss(nn.Module):
    """Mean squared error between the query latents and the keys: ``B x D``, ``B x D``."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction(reduction)

    def forward(self, z_q: Tensor, z_k: Tensor) -> Tensor:
        _check_2d(z_q, "z_q")
        _check_same_shape(z_q, "z_q", z_k, "z_k")
        return self.loss_weight * F.mse_loss(z_q, z_k, reduction=self.reduction)


class StyleLoss(nn.Module):
    """Push the similarity statistics of the query latents away from those of negatives.

    ``loss = -(MSE(G(z1_q), G(neg1)) + MSE(G(z2_q), G(neg2)))`` with ``G(z) = z z^T / (B * D)``
    (:func:`gram_matrix`, ``B x B``); minimising it increases both distances.

    Forward: ``z1_q``: ``B x 128`` (the query's ``z1``), ``z2_q``: ``B x 128`` (its ``z2``), ``neg1``
    and ``neg2``: ``B x 128`` batch-sized slices of the queue, transposed to one latent per row.
    ``neg1`` pairs with ``z1_q`` and ``neg2`` with ``z2_q``; the negatives get no gradients.

    Which slice is which: the SPEC names "the slot about to be overwritten and the next one"
    without fixing the pairing. The authors' released code pairs ``z1`` with the *next* slot
    (``queue[:, ptr+B : ptr+2B]``) and ``z2`` with the slot *about to be overwritten*
    (``queue[:, ptr : ptr+B]``), and this project follows it: :class:`~constyle_plugin.training.pretrain.ConStyleMoCo`
    returns them as ``neg1`` (next) and ``neg2`` (current). The loss itself only pairs its
    arguments in order.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)

    def forward(self, z1_q: Tensor, z2_q: Tensor, neg1: Tensor, neg2: Tensor) -> Tensor:
        for t, name in ((z1_q, "z1_q"), (z2_q, "z2_q"), (neg1, "neg1"), (neg2, "neg2")):
            _check_2d(t, name)
        _check_same_shape(z1_q, "z1_q", neg1, "neg1")
        _check_same_shape(z2_q, "z2_q", neg2, "neg2")
        d1 = F.mse_loss(gram_matrix(z1_q), gram_matrix(neg1.detach().to(z1_q.dtype)))
        d2 = F.mse_loss(gram_matrix(z2_q), gram_matrix(neg2.detach().to(z2_q.dtype)))
        return -self.loss_weight * (d1 + d2)


class DistillKLLoss(nn.Module):
    """Knowledge distillation: ``KL(softmax(teacher / T) || softmax(student / T)) * T^2``.

    ``batchmean`` reduction: the sum over classes and samples divided by ``B``. With the default
    ``T = 1`` it is the authors' loss. The teacher (the key encoder's logits) is detached.

    Forward: ``student_logits``: ``B x C`` (query encoder), ``teacher_logits``: ``B x C``.
    """

    def __init__(self, temperature: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConStyleError(f"temperature: must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        _check_2d(student_logits, "student_logits")
        _check_same_shape(student_logits, "student_logits", teacher_logits, "teacher_logits")
        t = self.temperature
        log_p_student = F.log_softmax(student_logits / t, dim=1)
        p_teacher = F.softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)
        kl = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
        return self.loss_weight * kl * (t * t)


class ClassificationLoss(nn.Module):
    """The pretext classification loss: ``F.cross_entropy`` with optional label smoothing.

    Forward: ``logits``: ``B x C``, ``labels``: ``B`` class indices in ``[0, C)``.
    """

    def __init__(self, label_smoothing: float = 0.0, loss_weight: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConStyleError(f"label_smoothing: must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_labels(logits, labels)
        return self.loss_weight * F.cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing, reduction=self.reduction)


def check_labels(logits: Tensor, labels: Optional[Tensor]) -> None:
    """Refuse ``labels`` that are not class indices (``B``, integer, in range) for ``B x K`` ``logits``."""
    _check_2d(logits, "logits")
    if not isinstance(labels, Tensor):
        raise ConStyleTypeError(f"labels: expected a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ConStyleError(f"labels: expected shape ({logits.shape[0]},) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
    if labels.dtype != torch.long:
        raise ConStyleTypeError(f"labels: expected int64 class indices, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ConStyleError(f"labels: class indices must lie in [0, {logits.shape[1]}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
