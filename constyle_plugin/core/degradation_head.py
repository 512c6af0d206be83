"""The stage-1 degradation head, shipped beside a prompter file and kept out of its state dict.

Pre-training with ``degradation_classes`` (see :class:`~constyle_plugin.training.pretrain.ConStyleMoCo`) trains a
linear head ``128 -> D`` on the latent prompt ``z2`` to name the query's degradation. The prompter file
keeps the authors' layout (``ConStyleV2.from_pretrained`` and ``pretrained: PATH`` read it as before);
the head goes into a sidecar file next to it, ``<stem>.head.safetensors``:

- tensors ``weight`` (``D x 128``) and ``bias`` (``D``);
- metadata ``format`` (:data:`HEAD_FORMAT`), ``classes`` (a JSON list of the D type names, in the order
  of the logits) and ``prompter`` (the SHA-256 of the prompter weights it was trained with, as
  :func:`~constyle_plugin.core.pretrained.prompter_sha256` computes it), so a head is never read against
  another prompter.

Core module: torch, safetensors and the standard library only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConStyleTypeError
from .pretrained import prompter_sha256
from ..files import atomic_write
from .prompter import LATENT_DIM, ConStyleV2, default_prompter_path, read_state_dict

__all__ = ["HEAD_FORMAT", "DegradationHead", "head_path", "load_degradation_head", "save_degradation_head"]

PathLike = Union[str, os.PathLike]
HEAD_FORMAT = "constyle_plugin.DegradationHead/1"
HEAD_SUFFIX = ".head.safetensors"
MOCO_HEAD = "degradation_head."  # the head's key prefix in a ConStyleMoCo checkpoint


class DegradationHead(nn.Linear):
    """A linear classifier of the latent prompt: ``B x 128`` -> ``B x D`` logits, with the D type names.

    ``classes``: the names of the logits, in order. :meth:`probabilities` gives the softmax.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        classes = tuple(str(c) for c in classes)
        if not classes or len(set(classes)) != len(classes):
            raise CheckpointError(f"degradation head: expected distinct class names, got {list(classes)}")
        super().__init__(LATENT_DIM, len(classes))
        self.classes = classes

    @torch.no_grad()
    def probabilities(self, z2: Tensor) -> Tensor:
        """``B x 128`` latent prompts -> ``B x D`` probabilities (rows sum to 1)."""
        return self(z2.to(self.weight.dtype)).softmax(dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, classes={list(self.classes)}"


def head_path(prompter_path: PathLike) -> Path:
    """The sidecar of a prompter file: ``dir/name.safetensors`` -> ``dir/name.head.safetensors``
    (any extension: ``net_g_500.pth`` -> ``net_g_500.head.safetensors``)."""
    path = Path(prompter_path)
    return path.with_name(path.stem + HEAD_SUFFIX)


def _from_tensors(weight: Tensor, bias: Tensor, classes: Sequence[str], source: str) -> DegradationHead:
    if (not isinstance(weight, Tensor) or not isinstance(bias, Tensor) or weight.dim() != 2
            or weight.shape[1] != LATENT_DIM or bias.shape != (weight.shape[0],)):
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else None for t in (weight, bias)]
        raise CheckpointError(f"{source}: expected a degradation head of weight D x {LATENT_DIM} and bias D, "
                              f"got weight {shapes[0]} and bias {shapes[1]}")
    if len(classes) != weight.shape[0]:
        raise CheckpointError(f"{source}: {weight.shape[0]} logits but {len(classes)} class names ({list(classes)})")
    head = DegradationHead(classes)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head.eval().requires_grad_(False)


def save_degradation_head(head: DegradationHead, prompter_path: PathLike, prompter: ConStyleV2) -> Path:
    """Write ``head`` as the sidecar of ``prompter_path`` (atomically), recording ``prompter``'s identity.

    ``prompter`` is the prompter the head was trained with (the one saved at ``prompter_path``).
    Returns the sidecar's path, :func:`head_path` of ``prompter_path``.
    """
    from safetensors.torch import save_file

    if not isinstance(head, DegradationHead):
        raise ConStyleTypeError(f"head: expected a DegradationHead, got {type(head).__name__}")
    path = head_path(prompter_path)
    state = {"weight": head.weight.detach().float().cpu().contiguous(),
             "bias": head.bias.detach().float().cpu().contiguous()}
    meta = {"format": HEAD_FORMAT, "classes": json.dumps(list(head.classes)), "prompter": prompter_sha256(prompter)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return path


def _read_sidecar(path: Path) -> tuple:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta: Dict[str, str] = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != HEAD_FORMAT:
        raise CheckpointError(f"{path}: not a degradation head file (metadata format {meta.get('format')!r}, "
                              f"expected {HEAD_FORMAT!r})")
    try:
        classes = json.loads(meta.get("classes", ""))
    except json.JSONDecodeError:
        classes = None
    if not isinstance(classes, list):
        raise CheckpointError(f"{path}: its metadata 'classes' is not a JSON list of names")
    return tensors, classes, meta.get("prompter")


def load_degradation_head(prompter_path: Optional[PathLike] = None, prompter: Optional[ConStyleV2] = None,
                          classes: Optional[Sequence[str]] = None) -> Optional[DegradationHead]:
    """The degradation head that belongs to a prompter file, or ``None`` when it has none.

    ``prompter_path``: the prompter file (default: the packaged one). The head is read from its sidecar
    (:func:`head_path`); a stage-1 MoCo checkpoint (``net_g_<iter>.pth`` with ``degradation_head.*``)
    carries its head inside and needs none. The authors' file, and any prompter file without a sidecar,
    give ``None``.

    ``prompter``: the prompter already loaded from that file (read from it when not given): a sidecar
    written for other prompter weights raises :class:`~constyle_plugin.errors.CheckpointError`.
    ``classes``: the names of the logits of a head read from a MoCo checkpoint, in order (logits beyond
    them are called ``class_<i>``); a sidecar names its own.
    """
    if prompter_path is None:
        prompter_path = default_prompter_path()
        if prompter_path is None:
            return None
    prompter_path = Path(prompter_path)
    sidecar = head_path(prompter_path)
    if sidecar.is_file():
        tensors, names, recorded = _read_sidecar(sidecar)
        head = _from_tensors(tensors.get("weight"), tensors.get("bias"), names, str(sidecar))
        if prompter is None:
            prompter = ConStyleV2.from_pretrained(prompter_path)
        if recorded != prompter_sha256(prompter):
            raise CheckpointError(f"{sidecar}: this head was trained with other prompter weights than "
                                  f"{prompter_path} (prompter SHA-256 {str(recorded)[:16]}..., the file's "
                                  f"{prompter_sha256(prompter)[:16]}...); write it again from the same run, or "
                                  f"remove it")
        return head
    if prompter_path.suffix == ".safetensors":
        return None  # an exported prompter: the head, if any, is only ever in the sidecar
    state = read_state_dict(prompter_path)
    weight, bias = state.get(MOCO_HEAD + "weight"), state.get(MOCO_HEAD + "bias")
    if weight is None:
        return None
    count = weight.shape[0] if isinstance(weight, Tensor) and weight.dim() == 2 else 0
    names = list(classes or [])[:count]
    names += [f"class_{i}" for i in range(len(names), count)]
    return _from_tensors(weight, bias, names, f"{prompter_path} ({MOCO_HEAD}*)")
