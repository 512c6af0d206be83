"""What the plugin's BasicSR model classes share (:mod:`.models`, :mod:`.pretrain_model`): any
``torch.optim`` optimiser (:class:`TorchOptimMixin`), DistributedDataParallel on the CPU and a resume that
restores the AMP scaler (:class:`RunMixin`), the ``train.amp`` setting, and small helpers for EMA copies
and validation images.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.utils import get_root_logger  # noqa: E402

from ...core.builder import OptionError  # noqa: E402
from ...errors import did_you_mean  # noqa: E402

__all__ = ['AMP_DTYPES', 'DtypeProbe', 'RunMixin', 'TorchOptimMixin', 'amp_setting', 'copy_buffers', 'grad_scaler', 'plain', 'prompters_of', 'side_by_side']

# ``train.amp`` values and the autocast dtype of each; false / ~ (the default) trains in float32.
AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_setting(opt: Dict[str, Any]) -> Optional[str]:
    """The checked ``train.amp`` of a run's options: ``'bf16'``, ``'fp16'`` or ``None`` (off).

    The device is BasicSR's (``cuda`` unless ``num_gpu`` is 0). Raises :class:`OptionError`
    (``train.amp``) for a value other than ``bf16`` / ``fp16`` / ``false``, for fp16 on the CPU
    (torch's float16 kernels there train many times slower than float32; bf16 is the CPU's mixed
    precision) and for bf16 on a GPU without bfloat16 support.
    """
    value = (opt.get("train") or {}).get("amp")
    if value is None or value is False:
        return None
    if not isinstance(value, str) or value not in AMP_DTYPES:
        hint = did_you_mean(value, AMP_DTYPES) if isinstance(value, str) else ""
        raise OptionError("train.amp", f"{value!r} is not a mixed-precision setting; expected bf16, fp16 or false "
                                       f"(off, the default){'; ' + hint if hint else ''}")
    on_gpu = opt.get("num_gpu", 0) != 0  # BaseModel's device choice
    if value == "fp16" and not on_gpu:
        raise OptionError("train.amp", "fp16 is refused on the CPU: torch's float16 kernels there train many times "
                                       "slower than float32 (docs/basicsr.md, Mixed precision); use bf16 on the CPU, "
                                       "fp16 on a GPU")
    if value == "bf16" and on_gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise OptionError("train.amp", "bf16: this GPU has no bfloat16 support; use fp16 (with gradient scaling)")
    return value


def prompters_of(net: nn.Module) -> List[nn.Module]:
    """The frozen ConStyle v2 prompters of the ``ConStyleUNet`` wrappers inside ``net``."""
    from ...core.unet import ConStyleUNet

    return [m.prompter for m in net.modules() if isinstance(m, ConStyleUNet)]


def grad_scaler(device_type: str) -> Any:
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


class DtypeProbe:
    """Counts the output dtypes of the convolution / linear layers of one training step, the prompters'
    apart from the rest of the network: the run's log shows what autocast really ran."""

    LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)

    def __init__(self, net: nn.Module) -> None:
        in_prompter = {id(m) for p in prompters_of(net) for m in p.modules()}
        self.counts: Dict[str, Counter] = {"network": Counter(), "prompter": Counter()}
        self._handles = [m.register_forward_hook(self._hook("prompter" if id(m) in in_prompter else "network"))
                         for m in net.modules() if isinstance(m, self.LAYERS)]

    def _hook(self, part: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if torch.is_tensor(output):
                self.counts[part][str(output.dtype).replace("torch.", "")] += 1
        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def report(self) -> str:
        parts = []
        for part, counts in self.counts.items():
            if counts:
                parts.append(f"{part} layer outputs " + ", ".join(f"{n} {d}" for d, n in sorted(counts.items())))
        return "; ".join(parts)


class TorchOptimMixin:
    """Optimisers from ``torch.optim`` by name; only parameters that train reach the optimiser."""

    opt: Dict[str, Any]

    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        cls = getattr(torch.optim, str(optim_type), None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise OptionError("train.optim_g.type", f"{optim_type!r} is not an optimiser of torch.optim")
        return cls(params, lr, **kwargs)

    def setup_optimizers(self) -> None:
        train_opt = self.opt["train"]
        trained = [p for p in self.net_g.parameters() if p.requires_grad]
        frozen = sum(p.numel() for p in self.net_g.parameters() if not p.requires_grad)
        if frozen:
            get_root_logger().info(f"{frozen:,d} frozen parameters (not optimised); "
                                   f"{sum(p.numel() for p in trained):,d} trained.")
        optim_opt = dict(train_opt["optim_g"])
        optim_type = optim_opt.pop("type")
        self.optimizer_g = self.get_optimizer(optim_type, trained, **optim_opt)
        self.optimizers.append(self.optimizer_g)


class RunMixin:
    """What a run of the plugin's models needs beyond BasicSR 1.4.2's ``BaseModel``:

    * DistributedDataParallel on the CPU (``--launcher pytorch`` without CUDA): ``model_to_device``
      passes ``device_ids=[torch.cuda.current_device()]``, which fails there; on the CPU the module is
      wrapped without device ids.
    * Resuming, the learning-rate schedule's settings (``periods``, ``milestones``, ...) come from the
      options file, not the state: ``resume_training`` restores them from the state, so a finished run
      extended with a longer schedule would keep the old one (and ``CosineAnnealingRestartLR`` fails
      past its last period). Only the position in it (``last_epoch``, ...) and the base rates come
      from the state; the log names what changed.
    """

    opt: Dict[str, Any]
    device: torch.device
    schedulers: List[Any]

    _PROGRESS = frozenset({"last_epoch", "_step_count", "base_lrs", "_last_lr", "_get_lr_called_within_step",
                           "verbose", "_is_initial"})

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        if not (self.opt.get("dist") and self.device.type == "cpu"):
            return super().model_to_device(net)  # type: ignore[misc]
        return torch.nn.parallel.DistributedDataParallel(
            net.to(self.device), find_unused_parameters=self.opt.get("find_unused_parameters", False))

    def resume_training(self, resume_state: Dict[str, Any]) -> None:
        fresh = [s.state_dict() for s in self.schedulers]
        super().resume_training(resume_state)  # type: ignore[misc]
        changed = []
        for scheduler, options in zip(self.schedulers, fresh):
            saved = scheduler.state_dict()
            merged = dict(saved)
            for key, value in options.items():
                if key not in self._PROGRESS and saved.get(key) != value:
                    changed.append(f"{key} {plain(saved.get(key))} -> {plain(value)}")
                    merged[key] = value
            if merged != saved:
                scheduler.load_state_dict(merged)
        if changed:
            get_root_logger().info("Resume: the learning-rate schedule follows the options file (train.scheduler), "
                                   "not the state: " + ", ".join(changed) + ".")


def plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


@torch.no_grad()
def copy_buffers(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    buffers = dict(src.named_buffers())
    for name, buf in dst.named_buffers():
        buf.copy_(buffers[name])


def side_by_side(tensors: List[torch.Tensor]) -> torch.Tensor:
    """``[1 x C x H_i x W_i, ...]`` -> one ``C x H x sum(W)`` image (all resized to the first's height)."""
    h, w = tensors[0].shape[-2:]
    row = []
    for t in tensors:
        t = t[:1].detach().float().cpu().clamp(0, 1)
        if t.shape[-2:] != (h, w):
            t = F.interpolate(t, size=(h, w), mode="nearest")
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        row.append(t)
    return torch.cat(row, dim=3)[0]
