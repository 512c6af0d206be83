"""The ConStyle v2 prompter (the MoCo query encoder), its prompt, and its checkpoints.

Imports only torch (and safetensors, which torch users already have through timm), so that
``wrap_unet`` works in any code base.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConStyleError, ConStyleTypeError, MissingFileError
from ..files import atomic_write

__all__ = [
    "CheckpointError",
    "ConStyleV2",
    "Encoding",
    "Prompt",
    "default_prompter",
    "default_prompter_path",
    "read_state_dict",
]

PathLike = Union[str, os.PathLike]

LATENT_DIM = 128
NUM_CLASSES = 1000
FEATURE_CHANNELS = (32, 64, 128)
PACKAGED_WEIGHTS = Path(__file__).parents[1] / "weights" / "constyle_v2_prompter.safetensors"
EXPORT_FORMAT = "constyle_plugin.ConStyleV2/1"


class Prompt(NamedTuple):
    """What the prompter hands to a restoration network.

    latent: ``B x 128``, the latent prompt ``z2``.
    features: ``(f1, f2, f3)``: ``B x 32 x H/2 x W/2``, ``B x 64 x H/4 x W/4``,
        ``B x 128 x H/8 x W/8`` (stride-2 rounding: ``ceil(n / 2)`` per step).
    """

    latent: Tensor
    features: Tuple[Tensor, Tensor, Tensor]


class Encoding(NamedTuple):
    """Everything one pass of the query encoder computes (used by stage-1 pre-training)."""

    features: Tuple[Tensor, Tensor, Tensor]
    pooled: Tensor  # B x 256, the input of mlp1 and of the classifier
    z1: Tensor  # B x 128
    z2: Tensor  # B x 128, the latent prompt


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.LeakyReLU(0.1, inplace=True),
    )


def _mlp(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.GELU())


def prepare_image(x: Tensor, name: str = "x") -> Tensor:
    """Bring an image batch to the prompter's input: float ``B x 3 x H x W`` in [0, 1].

    Grayscale (1 channel) is replicated to RGB, an alpha channel (4 channels) is dropped,
    integer tensors are read as 8-bit and scaled by 1/255. Anything else is refused with an
    error that names the tensor.
    """
    if not isinstance(x, Tensor):
        raise ConStyleTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ConStyleError(f"{name}: expected a B x C x H x W image batch, got shape {tuple(x.shape)}")
    channels, height, width = x.shape[1:]
    if height < 2 or width < 2:
        raise ConStyleError(f"{name}: images must be at least 2 x 2 pixels, got {height} x {width}")
    if not x.is_floating_point():
        if x.dtype == torch.bool or x.is_complex():
            raise ConStyleTypeError(f"{name}: expected a float or uint8 image tensor, got {x.dtype}")
        x = x.float() / 255.0
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 4:
        x = x[:, :3]
    elif channels != 3:
        raise ConStyleError(f"{name}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {channels}")
    return x


class ConStyleV2(nn.Module):
    """The ConStyle v2 prompter: the query encoder of the authors' MoCo model.

    Submodule and parameter names are those of the released checkpoint (without the
    ``encoder_q.`` prefix), so the authors' weights load unchanged.

    Input: ``B x 3 x H x W`` in [0, 1], no normalisation (see :func:`prepare_image` for what else is
    accepted). Output of ``forward``: :class:`Prompt`.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv(3, 16), _conv(16, 16), _conv(16, 32, 2))
        self.stage2 = nn.Sequential(_conv(32, 32), _conv(32, 64, 2))
        self.stage3 = nn.Sequential(_conv(64, 128), _conv(128, 128, 2))
        self.stage4 = nn.Sequential(_conv(128, 256), _conv(256, 256, 2))
        self.mlp1 = _mlp(256, LATENT_DIM)
        self.mlp2 = _mlp(LATENT_DIM, LATENT_DIM)
        self.classifier = nn.Sequential(
            nn.Linear(256, 512), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(512, num_classes))
        self.frozen = False
        self.check_finite = True

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor) -> Encoding:
        """One pass of the encoder: multi-scale features, pooled vector and both latents."""
        x = prepare_image(x)
        if self.check_finite and not _is_compiling() and not torch.isfinite(x).all():
            raise ConStyleError("prompter input: the image batch contains NaN or Inf values")
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        pooled = self.stage4(f3).mean(dim=(2, 3))
        z1 = self.mlp1(pooled)
        z2 = self.mlp2(z1)
        return Encoding((f1, f2, f3), pooled, z1, z2)

    def forward(self, x: Tensor) -> Prompt:
        """``B x 3 x H x W`` -> ``Prompt(latent=B x 128, features=(f1, f2, f3))``."""
        enc = self.encode(x)
        return Prompt(enc.z2, enc.features)

    def classify(self, x: Tensor) -> Tensor:
        """The pretext head: ``B x 3 x H x W`` -> ``B x 1000`` logits."""
        return self.classifier(self.encode(x).pooled)

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> "ConStyleV2":
        """No gradients and eval mode for good: ``train()`` keeps a frozen prompter in eval mode."""
        self.frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "ConStyleV2":
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path: Optional[PathLike] = None, *, frozen: bool = True,
                        map_location: Union[str, torch.device] = "cpu") -> "ConStyleV2":
        """Load a prompter, frozen and in eval mode unless ``frozen=False``.

        ``path`` may be the authors' BasicSR checkpoint (``params`` / ``params_ema``, optional
        ``module.`` prefix, ``encoder_q.*`` beside ``encoder_k.*`` and the queue), a bare state
        dict, a state dict of a wrapped U-Net (``prompter.*``), or this project's export
        (``.safetensors`` or ``.pth``). ``None`` loads the pre-trained prompter packaged with the
        plugin. Files are read with safe loading only.
        """
        if path is None:
            path = default_prompter_path()
            if path is None:
                raise MissingFileError(
                    f"no packaged prompter at {PACKAGED_WEIGHTS}; pass the path of a checkpoint")
        state = extract_prompter_state(read_state_dict(path, map_location=map_location))
        head = state.get("classifier.3.weight")  # a pretext head of another size (not ImageNet's 1000)
        model = cls(num_classes=head.shape[0] if isinstance(head, Tensor) and head.dim() == 2 else NUM_CLASSES)
        model.load_prompter_state(state, source=str(path))
        model.source = str(path)  # recorded by a saved wrapped net (config.json) as the prompter's origin
        return model.freeze() if frozen else model

    def load_prompter_state(self, state: Dict[str, Tensor], source: str = "state dict") -> None:
        """Load query-encoder weights, reporting the first missing or mis-shaped keys of ``source``."""
        state = extract_prompter_state(state)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                     for k, v in own.items() if k in state and state[k].shape != v.shape]
        if missing or misshaped:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:5])}")
            if misshaped:
                parts.append(f"{len(misshaped)} mis-shaped key(s), first: {'; '.join(misshaped[:5])}")
            raise CheckpointError(f"{source}: not a ConStyle v2 prompter checkpoint: " + "; ".join(parts))
        self.load_state_dict({k: state[k] for k in own}, strict=True)

    def save_pretrained(self, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
        """Export the query encoder (classifier included), atomically.

        ``.safetensors`` (recommended) or ``.pth`` / ``.pt`` (a plain state dict). A crash during the
        write leaves any previous file at ``path`` intact.
        """
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"format": EXPORT_FORMAT, **(metadata or {})}
            atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
        elif path.suffix in (".pth", ".pt"):
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        else:
            raise ConStyleError(f"{path}: choose a .safetensors or .pth file name")
        return path


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def default_prompter_path() -> Optional[Path]:
    """The packaged pre-trained prompter, or ``None`` if this installation has none."""
    return PACKAGED_WEIGHTS if PACKAGED_WEIGHTS.is_file() else None


def default_prompter() -> "ConStyleV2":
    """The packaged pre-trained prompter, frozen; an untrained one (with a warning) when this
    installation packages none."""
    if default_prompter_path() is not None:
        return ConStyleV2.from_pretrained()
    warnings.warn("constyle_plugin: no pre-trained prompter is packaged with this installation; the prompter "
                  "is untrained. Pass prompter=ConStyleV2.from_pretrained(path) with the authors' "
                  "pretrained_ConStyle_v2.pth or your own export.", UserWarning, stacklevel=3)
    return ConStyleV2().freeze()


def read_state_dict(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Tensor]:
    """Read a flat ``name -> tensor`` dict from a checkpoint, with safe loading only.

    Handles ``.safetensors``, BasicSR checkpoints (``params_ema`` preferred over ``params``),
    MMEngine checkpoints (``state_dict``) and bare state dicts; strips a ``module.`` prefix.
    Raises :class:`CheckpointError` naming the file for anything unreadable, including pickles
    that would need arbitrary code to load (nothing in them is run).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file; pass the file in it")
    if not path.is_file():
        raise MissingFileError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    kind = "safetensors" if path.suffix == ".safetensors" else _checkpoint_format(path)
    if kind is None:
        with open(path, "rb") as fh:
            head = fh.read(8)
        raise CheckpointError(f"{path}: not a PyTorch or safetensors checkpoint (it starts with the bytes "
                              f"{head!r}, neither a torch.save archive, a pickle nor a safetensors header)")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            first = _unpickling_reason(str(exc))
            if "global" not in str(exc).lower():  # an unknown opcode: damaged bytes, not Python objects
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged: {first})") from None
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects that safe loading does not "
                f"allow ({first}). Nothing in it was run.") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                  f"(truncated or wrong format: {type(exc).__name__}: {exc})") from None
    return flatten_checkpoint(state, source=str(path))


def _checkpoint_format(path: Path) -> Optional[str]:
    """``'torch'`` (a ``torch.save`` zip archive or a legacy pickle), ``'safetensors'`` (by its
    header, whatever the file is named) or ``None`` (neither) from the first bytes of ``path``."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return None


def _unpickling_reason(message: str) -> str:
    """The line of a weights-only unpickling error that says what went wrong (PyTorch puts it after
    several lines of advice)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "GLOBAL" in line or "global" in line.split(":")[0]:
            return line
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else "unreadable pickle"


def flatten_checkpoint(state, source: str) -> Dict[str, Tensor]:
    """Unwrap trainer containers (``params_ema`` / ``params`` / ``state_dict``) and ``module.``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(state).__name__}")
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (keys: {', '.join(map(str, list(state)[:5]))})")
    return {_strip(k, "module."): v for k, v in tensors.items()}


def extract_prompter_state(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The query encoder's entries of a MoCo, wrapped-U-Net or bare prompter state dict."""
    for prefix in ("encoder_q.", "prompter."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def prompter_keys() -> List[str]:
    """The state-dict names of the query encoder, in order (as in the released checkpoint)."""
    return list(ConStyleV2().state_dict())


def count_parameters(module: nn.Module, params: Optional[Iterable[nn.Parameter]] = None) -> int:
    return sum(p.numel() for p in (params if params is not None else module.parameters()))
