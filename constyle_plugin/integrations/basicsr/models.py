"""BasicSR model types of the plugin (registered by :func:`constyle_plugin.integrations.basicsr.register`).

- :class:`ConStyleV2PretrainModel`: stage 1, pre-training the prompter (``network_g: {type:
  ConStyleMoCo}``): Real-ESRGAN degradation of the non-weather query views on the device, the five
  losses with their ``class_iter`` / ``kl_iter`` switches, EMA, top-1 / top-5 validation of the
  pretext head, checkpoints in the authors' layout (``params`` / ``params_ema`` of the MoCo wrapper,
  which ``ConStyleV2.from_pretrained`` reads).
- :class:`ConStyleSRModel`: stage 2. BasicSR's ``SRModel`` trains a ``ConStyleUNet`` as it is
  (``model_type: SRModel`` works), but basicsr 1.4.2's falls short of the authors' recipe in ways a
  subclass fixes without touching anything else:

  * ``BaseModel.get_optimizer`` knows only ``Adam``; the recipe is AdamW. Any ``torch.optim`` class
    is accepted here.
  * ``model_ema`` averages every parameter, the frozen prompter's included; ``x * d + x * (1 - d)``
    is not always ``x`` in floating point, so the EMA copy's prompter would drift by rounding. Here
    parameters that do not train are copied exactly, and buffers (BatchNorm statistics) are copied
    too (BasicSR leaves the EMA copy's buffers at their initial values).
  * the frozen prompter's parameters are left out of the optimiser with one log line instead of
    one warning per tensor;
  * validation can pad inputs to a multiple (``val.pad_multiple``, the authors evaluate at
    multiples of 32), saves side-by-side images ``lq | output | gt`` beside BasicSR's output
    images (``val.save_comparison``, default true) and logs the metrics of the degraded input
    itself for comparison (``val.input_metrics``, default true).
  * mixed precision (``train.amp: bf16 | fp16``, BasicSR has none): the forward and the loss run
    under ``torch.autocast``; fp16 scales the loss with a ``GradScaler`` whose state is saved in the
    training state and restored on resume; the frozen prompter computes the prompt outside autocast,
    in its own float32, so training sees the prompt that validation and inference see
    (docs/basicsr.md, Mixed precision).
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict
from os import path as osp
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.archs import build_network  # noqa: E402
from basicsr.metrics import calculate_metric  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import get_root_logger, imwrite, tensor2img  # noqa: E402
from basicsr.utils.dist_util import master_only  # noqa: E402

from ...core.builder import OptionError  # noqa: E402
from ...errors import did_you_mean  # noqa: E402

__all__ = ["AMP_DTYPES", "ConStyleSRModel", "ConStyleV2PretrainModel", "amp_setting"]

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


def _prompters(net: nn.Module) -> List[nn.Module]:
    """The frozen ConStyle v2 prompters of the ``ConStyleUNet`` wrappers inside ``net``."""
    from ...core.unet import ConStyleUNet

    return [m.prompter for m in net.modules() if isinstance(m, ConStyleUNet)]


def _grad_scaler(device_type: str) -> Any:
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


class _DtypeProbe:
    """Counts the output dtypes of the convolution / linear layers of one training step, the prompters'
    apart from the rest of the network: the run's log shows what autocast really ran."""

    LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)

    def __init__(self, net: nn.Module) -> None:
        in_prompter = {id(m) for p in _prompters(net) for m in p.modules()}
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


class _TorchOptimMixin:
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


class _RunMixin:
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
                    changed.append(f"{key} {_plain(saved.get(key))} -> {_plain(value)}")
                    merged[key] = value
            if merged != saved:
                scheduler.load_state_dict(merged)
        if changed:
            get_root_logger().info("Resume: the learning-rate schedule follows the options file (train.scheduler), "
                                   "not the state: " + ", ".join(changed) + ".")


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


@torch.no_grad()
def _copy_buffers(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    buffers = dict(src.named_buffers())
    for name, buf in dst.named_buffers():
        buf.copy_(buffers[name])


def _side_by_side(tensors: List[torch.Tensor]) -> torch.Tensor:
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


try:
    from basicsr.models.sr_model import SRModel
except ImportError:  # a fork without SRModel: only the stage-1 model is offered
    SRModel = None

if SRModel is not None:

    class ConStyleSRModel(_RunMixin, _TorchOptimMixin, SRModel):
        """BasicSR's ``SRModel`` with AdamW (any ``torch.optim``), an EMA that keeps the frozen prompter
        bit-identical, optional padding and side-by-side validation images (see the module docstring).

        Options beyond SRModel's: ``val.pad_multiple`` (int or ~), ``val.save_comparison`` (bool),
        ``val.input_metrics`` (bool), ``train.amp`` (``bf16`` | ``fp16`` | ``false``, the default):
        the training step's forward and loss under ``torch.autocast`` on the model's device (fp16 with
        a ``GradScaler``, saved as ``amp_scaler`` in the training state); the prompt is computed in
        float32; validation and testing run in float32. The first step of a run logs the dtypes
        autocast gave the network's and the prompter's layers and the loss.

        :attr:`TRAIN_OPTIONS` / :attr:`VAL_OPTIONS`: every key of the ``train`` / ``val`` sections
        that a run of this model reads (BasicSR's train loop and ``SRModel``, and this class); the
        ``basicsr`` command refuses others with a did-you-mean before anything is created on disk.
        """

        TRAIN_OPTIONS = frozenset({"total_iter", "warmup_iter",  # basicsr.train
                                   "ema_decay", "optim_g", "scheduler", "pixel_opt", "perceptual_opt",  # SRModel
                                   "amp"})
        VAL_OPTIONS = frozenset({"val_freq", "save_img",  # basicsr.train / basicsr.test
                                 "metrics", "pbar", "suffix",  # SRModel
                                 "pad_multiple", "save_comparison", "input_metrics"})

        _comparison: Optional[tuple] = None
        _input_metrics: Optional[Dict[str, List[float]]] = None
        _lq_path: Optional[str] = None
        amp: Optional[str] = None  # train.amp of a training run
        scaler: Any = None  # the GradScaler of fp16
        _probe_dtypes = False

        @classmethod
        def check_train_options(cls, opt: Dict[str, Any]) -> None:
            """Check the values of a training run's ``train`` options that the key check cannot
            (``train.amp``); the ``basicsr`` command calls it before anything is created."""
            amp_setting(opt)

        # ---------------------------------------------------------------------- mixed precision
        def init_training_settings(self) -> None:
            super().init_training_settings()
            self.amp = amp_setting(self.opt)
            if self.amp is None:
                return
            self.scaler = _grad_scaler(self.device.type) if self.amp == "fp16" else None
            prompters = len(_prompters(self.get_bare_model(self.net_g)))  # ConStyleUNet runs them outside autocast
            self._probe_dtypes = True
            get_root_logger().info(
                f"Mixed precision (train.amp: {self.amp}): forward and loss under torch.autocast"
                f"({self.device.type}, {AMP_DTYPES[self.amp]})"
                + (", loss scaled by a GradScaler" if self.scaler is not None else ", no loss scaling")
                + (f"; the prompter{'s' if prompters > 1 else ''} in float32" if prompters else "")
                + "; validation in float32.")

        def optimize_parameters(self, current_iter: int) -> None:
            if self.amp is None:
                return super().optimize_parameters(current_iter)
            probe = _DtypeProbe(self.get_bare_model(self.net_g)) if self._probe_dtypes else None
            self.optimizer_g.zero_grad()
            try:
                with torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.amp]):
                    self.output = self.net_g(self.lq)
                    l_total, loss_dict = self._losses()
            finally:
                if probe is not None:
                    probe.close()
            if self.scaler is not None:
                self.scaler.scale(l_total).backward()
                self.scaler.step(self.optimizer_g)
                self.scaler.update()
            else:
                l_total.backward()
                self.optimizer_g.step()
            if probe is not None:
                self._probe_dtypes = False
                get_root_logger().info(f"Mixed precision, iteration {current_iter}: {probe.report()}; "
                                       f"loss {str(l_total.dtype).replace('torch.', '')}.")
            self.log_dict = self.reduce_loss_dict(loss_dict)
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)

        def _losses(self) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
            """SRModel's losses of ``self.output`` against ``self.gt``: (total, ``{l_pix, l_percep, l_style}``)."""
            l_total: Any = 0
            loss_dict: Dict[str, torch.Tensor] = OrderedDict()
            if self.cri_pix:
                loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
            if self.cri_perceptual:
                l_percep, l_style = self.cri_perceptual(self.output, self.gt)
                if l_percep is not None:
                    loss_dict["l_percep"] = l_percep
                if l_style is not None:
                    loss_dict["l_style"] = l_style
            for value in loss_dict.values():
                l_total = l_total + value
            return l_total, loss_dict

        @master_only
        def save_training_state(self, epoch: int, current_iter: int) -> None:
            """BasicSR's training state, plus ``amp_scaler`` (the GradScaler's state) with fp16."""
            if self.scaler is None or current_iter == -1:
                return super().save_training_state(epoch, current_iter)
            state = {"epoch": epoch, "iter": current_iter,
                     "optimizers": [o.state_dict() for o in self.optimizers],
                     "schedulers": [s.state_dict() for s in self.schedulers],
                     "amp_scaler": self.scaler.state_dict()}
            torch.save(state, osp.join(self.opt["path"]["training_states"], f"{current_iter}.state"))

        def resume_training(self, resume_state: Dict[str, Any]) -> None:
            super().resume_training(resume_state)
            saved = resume_state.get("amp_scaler")
            if self.scaler is not None and saved:
                self.scaler.load_state_dict(saved)
                get_root_logger().info(f"Resume: fp16 loss scale {self.scaler.get_scale():g} (from the state).")
            elif self.scaler is not None:
                get_root_logger().info("Resume: the state has no fp16 loss scale (saved without train.amp: fp16); "
                                       "the GradScaler starts afresh.")
            elif saved:
                get_root_logger().info(f"Resume: the state's fp16 loss scale is not used (train.amp: "
                                       f"{self.amp or 'false'}).")

        @torch.no_grad()
        def model_ema(self, decay: float = 0.999) -> None:
            net_g = self.get_bare_model(self.net_g)
            params = dict(net_g.named_parameters())
            for name, ema in self.net_g_ema.named_parameters():
                src = params[name]
                if decay > 0 and src.requires_grad:
                    ema.mul_(decay).add_(src, alpha=1 - decay)
                else:
                    ema.copy_(src)
            _copy_buffers(net_g, self.net_g_ema)

        def feed_data(self, data: Dict[str, Any]) -> None:
            super().feed_data(data)
            paths = data.get("lq_path")
            self._lq_path = paths[0] if isinstance(paths, (list, tuple)) and paths else paths

        def test(self) -> None:
            multiple = (self.opt.get("val") or {}).get("pad_multiple")
            lq = self.lq
            h, w = lq.shape[-2:]
            if multiple:
                ph, pw = (-h) % int(multiple), (-w) % int(multiple)
                mode = "reflect" if ph < h and pw < w else "replicate"
                self.lq = F.pad(lq, (0, pw, 0, ph), mode=mode) if ph or pw else lq
            try:
                super().test()
            finally:
                self.lq = lq
            if multiple:
                scale = self.opt.get("scale", 1)
                self.output = self.output[..., :h * scale, :w * scale]
            if self._comparison is not None:
                self._save_comparison()
            if self._input_metrics is not None and hasattr(self, "gt") and self.lq.shape == self.gt.shape:
                data = {"img": tensor2img([self.lq.detach().cpu()]), "img2": tensor2img([self.gt.detach().cpu()])}
                for name, metric_opt in self.opt["val"]["metrics"].items():
                    self._input_metrics[name].append(calculate_metric(data, metric_opt))

        def _save_comparison(self) -> None:
            dataset_name, current_iter = self._comparison
            name = osp.splitext(osp.basename(str(self._lq_path or "image")))[0]
            tensors = [self.lq, self.output] + ([self.gt] if hasattr(self, "gt") else [])
            img = tensor2img([_side_by_side(tensors)])
            if self.opt["is_train"]:
                path = osp.join(self.opt["path"]["visualization"], name, f"{name}_{current_iter}_lq_out_gt.png")
            else:
                suffix = (self.opt.get("val") or {}).get("suffix") or self.opt["name"]
                path = osp.join(self.opt["path"]["visualization"], dataset_name, f"{name}_{suffix}_lq_out_gt.png")
            imwrite(img, path)

        def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
            val_opt = self.opt.get("val") or {}
            if save_img and val_opt.get("save_comparison", True):
                self._comparison = (dataloader.dataset.opt["name"], current_iter)
            if val_opt.get("metrics") and val_opt.get("input_metrics", True):
                self._input_metrics = {name: [] for name in val_opt["metrics"]}
            try:
                super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
                scores = self._input_metrics
                if scores and all(scores.values()):
                    get_root_logger().info(
                        f"Input (lq vs gt) {dataloader.dataset.opt['name']}, for comparison\n"
                        + "".join(f"\t # {name}: {sum(v) / len(v):.4f}\n" for name, v in scores.items()))
            finally:
                self._comparison = None
                self._input_metrics = None


class ConStyleV2PretrainModel(_RunMixin, _TorchOptimMixin, BaseModel):
    """Stage 1: pre-train the ConStyle v2 prompter (``network_g: {type: ConStyleMoCo, ...}``).

    Data (``ConStylePretrainDataset``): ``query`` and ``key`` ``B x 3 x S x S`` in [0, 1], ``label``
    ``B``, ``weather`` ``B`` (bool). Queries without the CPU weather degradation get the Real-ESRGAN
    pipeline here, on the device, as the authors do. With the dataset option ``degradation`` the
    batch also carries their Real-ESRGAN parameters, drawn in the data workers
    (``RealESRGANDegradation.sample_params``); they must come from the same options as
    ``train.degradation`` (checked when training starts). Without it they are drawn here, on the
    host. Either way the device work reads nothing back to the host.

    ``train`` options beyond BasicSR's: ``class_iter`` [50000] (pretext cross-entropy while
    ``iter < class_iter``; ``~``: always), ``kl_iter`` [~] (distillation while ``iter < kl_iter``;
    ``~``: always), ``kl_temperature`` [1], ``label_smoothing`` [0], ``loss_weights``
    (``{infonce, content, style, class, kl}``, default 1 each), ``degradation`` (the
    :class:`~constyle_plugin.data.degradations.RealESRGANDegradation` options; the authors' values by
    default), ``ema_decay``, ``save_prompter`` [true] (also export the EMA query encoder as
    ``models/prompter_<iter>.safetensors``), ``pretext_target`` ['class']: what the pretext head
    predicts, ``class`` (the authors: the picture's class) or ``degradation`` (the query's
    degradation type; needs the dataset's ``query_degradations``).

    With the dataset's ``query_degradations`` the batch carries ``degradation_label``; a
    ``ConStyleMoCo`` built with ``degradation_classes`` then also trains its degradation head
    (loss ``degradation``), and validation reports the head's top-1 (``degradation_top1``).

    Validation: top-1 / top-5 accuracy (percent) of the pretext head of the EMA query encoder on
    the degraded query views (Real-ESRGAN with a fixed seed, so every validation sees the same
    images); ``val.seed`` [0].

    :attr:`TRAIN_OPTIONS` / :attr:`VAL_OPTIONS`: every key of the ``train`` / ``val`` sections a
    run of this model reads (as for :class:`ConStyleSRModel`).
    """

    TRAIN_OPTIONS = frozenset({"total_iter", "warmup_iter",  # basicsr.train
                               "scheduler",  # BaseModel.setup_schedulers
                               "ema_decay", "optim_g", "class_iter", "kl_iter", "kl_temperature", "label_smoothing",
                               "loss_weights", "degradation", "save_prompter", "pretext_target"})
    VAL_OPTIONS = frozenset({"val_freq", "save_img",  # basicsr.train / basicsr.test
                             "seed"})

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__(opt)
        from ...training.pretrain import ConStyleMoCo

        net = build_network(opt["network_g"])
        if not isinstance(net, ConStyleMoCo):
            raise OptionError("network_g.type", f"ConStyleV2PretrainModel trains a ConStyleMoCo, got "
                                                f"{type(net).__name__}")
        self.net_g = self.model_to_device(net)
        self.print_network(self.net_g)
        load_path = self.opt["path"].get("pretrain_network_g")
        if load_path is not None:
            self.load_network(self.net_g, load_path, self.opt["path"].get("strict_load_g", True),
                              self.opt["path"].get("param_key_g", "params"))
        if self.is_train:
            self.init_training_settings()

    # -------------------------------------------------------------------------------- training
    def init_training_settings(self) -> None:
        from ...data.degradations import RealESRGANDegradation

        train_opt = self.opt["train"]
        self.net_g.train()
        self.ema_decay = train_opt.get("ema_decay", 0)
        if self.ema_decay > 0:
            get_root_logger().info(f"Use Exponential Moving Average with decay: {self.ema_decay}")
            self.net_g_ema = build_network(self.opt["network_g"]).to(self.device)
            load_path = self.opt["path"].get("pretrain_network_g")
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt["path"].get("strict_load_g", True),
                                  "params_ema")
            else:
                self.model_ema(0)
            self.net_g_ema.eval()
        bare = self.get_bare_model(self.net_g)
        try:
            self.criterion = bare.pretrain_loss(
                class_iter=train_opt.get("class_iter", 50000), kl_iter=train_opt.get("kl_iter"),
                kl_temperature=train_opt.get("kl_temperature", 1.0),
                label_smoothing=train_opt.get("label_smoothing", 0.0), weights=train_opt.get("loss_weights"))
        except (TypeError, ValueError) as exc:
            raise OptionError("train.loss_weights", str(exc)) from exc
        try:
            self.degradation = RealESRGANDegradation.from_opt(train_opt.get("degradation")).to(self.device)
        except (TypeError, ValueError) as exc:
            raise OptionError("train.degradation", str(exc)) from exc
        self._check_dataset_degradation()
        self.pretext_target = str(train_opt.get("pretext_target", "class"))
        if self.pretext_target not in ("class", "degradation"):
            raise OptionError("train.pretext_target", f"expected 'class' (the authors) or 'degradation', "
                                                      f"got {self.pretext_target!r}")
        self.setup_optimizers()
        self.setup_schedulers()

    def _check_dataset_degradation(self) -> None:
        """Parameters drawn by the training set (its ``degradation`` option) must follow
        ``train.degradation``: the same ranges and probabilities, or the model would silently train
        on other degradations than its options say."""
        from ...data.datasets import ConStylePretrainDataset

        for phase, dataset_opt in (self.opt.get("datasets") or {}).items():
            if not str(phase).startswith("train") or not isinstance(dataset_opt, dict):
                continue
            if dataset_opt.get("type") != "ConStylePretrainDataset":
                continue
            try:
                drawn = ConStylePretrainDataset.degradation_from_opt(dataset_opt.get("degradation", False))
            except ValueError as exc:
                raise OptionError(f"datasets.{phase}.degradation", str(exc)) from None
            if drawn is None:
                continue
            ours, theirs = self.degradation.sampling_options(), drawn.sampling_options()
            differ = []
            for k, v in ours.items():
                if isinstance(v, dict):
                    differ += [f"{k}.{kk}" for kk in v if v[kk] != theirs[k].get(kk)]
                elif v != theirs[k]:
                    differ.append(k)
            if differ:
                raise OptionError(f"datasets.{phase}.degradation",
                                  f"the data workers would draw Real-ESRGAN parameters from other values than "
                                  f"train.degradation (differing: {', '.join(differ)}); give both the same "
                                  f"options (a YAML anchor: `degradation: &deg {{...}}` and `degradation: *deg`)")

    @torch.no_grad()
    def model_ema(self, decay: float = 0.999) -> None:
        """BasicSR's parameter EMA, then the buffers (queue, pointer, BatchNorm statistics) copied.

        Copying the buffers departs from the authors' release on purpose: there the EMA copy's
        BatchNorm statistics stay at their initial 0 / 1 (SPEC section 2). The same arithmetic as
        BasicSR's loop (``ema.mul_(decay).add_(param, alpha=1 - decay)``, every parameter, the key
        encoder's too), issued as a few multi-tensor kernels instead of two per parameter.
        """
        params = dict(self.get_bare_model(self.net_g).named_parameters())
        names, ema = zip(*((name, p.data) for name, p in self.net_g_ema.named_parameters()))
        current = [params[name].data for name in names]
        torch._foreach_mul_(list(ema), decay)
        torch._foreach_add_(list(ema), current, alpha=1 - decay)
        buffers = dict(self.get_bare_model(self.net_g).named_buffers())
        names, ema_buffers = zip(*self.net_g_ema.named_buffers())
        if hasattr(torch, "_foreach_copy_"):  # torch >= 2.1
            torch._foreach_copy_(list(ema_buffers), [buffers[name] for name in names])
        else:
            for name, buf in zip(names, ema_buffers):
                buf.copy_(buffers[name])

    def feed_data(self, data: Dict[str, Any]) -> None:
        # non_blocking: copies from the host that do not wait for the previous step's device work
        self.query = data["query"].to(self.device, non_blocking=True)
        self.key = data["key"].to(self.device, non_blocking=True)
        label = data.get("label")
        self.label = torch.as_tensor(label).to(self.device, non_blocking=True).long() if label is not None else None
        weather = data.get("weather")
        n = self.query.shape[0]
        # kept on the host (as collated): which samples to degrade is decided without a device read
        self.weather = (torch.as_tensor(weather).cpu().bool().reshape(n) if weather is not None
                        else torch.zeros(n, dtype=torch.bool))
        params = data.get("degradation")
        self.degradation_params = dict(params) if isinstance(params, dict) else None
        deg_label = data.get("degradation_label")
        self.degradation_label = (torch.as_tensor(deg_label).to(self.device, non_blocking=True).long()
                                  if deg_label is not None else None)

    def _degraded_query(self, degradation) -> torch.Tensor:
        """The query views: weather-degraded ones as they came, the others through ``degradation``
        (with the batch's Real-ESRGAN parameters when the dataset drew them)."""
        todo = (~self.weather).nonzero().flatten()  # host indices
        params = self.degradation_params
        if todo.numel() == 0:
            return self.query
        if todo.numel() == self.query.shape[0]:
            return degradation(self.query, params)
        if params is not None:
            params = {k: v.index_select(0, todo.to(v.device)) for k, v in params.items()}
        index = todo.to(self.query.device, non_blocking=True)
        degraded = degradation(self.query.index_select(0, index), params)
        return self.query.index_copy(0, index, degraded)

    def optimize_parameters(self, current_iter: int) -> None:
        query = self._degraded_query(self.degradation)
        self.optimizer_g.zero_grad()
        out = self.net_g(query, self.key)
        labels = self.label
        if getattr(self, "pretext_target", "class") == "degradation":
            if self.degradation_label is None:
                raise OptionError("train.pretext_target", "'degradation' needs batches with degradation "
                                                          "labels: set the training set's query_degradations")
            labels = self.degradation_label
        head = self.get_bare_model(self.net_g).degradation_head
        losses = self.criterion(out, labels, current_iter,
                                self.degradation_label if head is not None else None)
        losses["total"].backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(OrderedDict((f"l_{k}", v) for k, v in losses.items()))
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # -------------------------------------------------------------------------------- validation
    def _eval_encoder(self):
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.get_bare_model(self.net_g)
        return net.encoder_q

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img) -> None:
        if self.opt["rank"] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    @torch.no_grad()
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img) -> None:
        from ...data.degradations import RealESRGANDegradation
        from ...training.pretrain import accuracy, collapse_message, latent_spread

        train_opt = self.opt.get("train") or {}
        deg_opt = dict(train_opt.get("degradation") or {})
        deg_opt["seed"] = int((self.opt.get("val") or {}).get("seed", 0))
        degradation = RealESRGANDegradation.from_opt(deg_opt).to(self.device)
        encoder = self._eval_encoder()
        was_training = encoder.training
        encoder.eval()
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.get_bare_model(self.net_g)
        head = net.degradation_head
        by_degradation = getattr(self, "pretext_target", "class") == "degradation"
        logits, labels, latents, head_hits = [], [], [], []
        try:
            for data in dataloader:
                self.feed_data(data)
                query = self._degraded_query(degradation)
                encoded = encoder.encode(query)
                logits.append(encoder.classifier(encoded.pooled).float().cpu())
                latents.append(encoded.z2.float().cpu())
                target = self.degradation_label if by_degradation else self.label
                if target is None:
                    raise OptionError("train.pretext_target", "'degradation' needs validation batches with "
                                                              "degradation labels: set query_degradations")
                labels.append(target.cpu())
                if head is not None and self.degradation_label is not None:
                    head_hits.append((head(encoded.z2).argmax(1) == self.degradation_label).float().cpu())
        finally:
            encoder.train(was_training)
            for name in ("query", "key", "label", "weather", "degradation_params", "degradation_label"):
                self.__dict__.pop(name, None)
        if not logits:
            return
        logits_t, labels_t = torch.cat(logits), torch.cat(labels)
        k5 = min(5, logits_t.shape[1])
        top1, top5 = accuracy(logits_t, labels_t, topk=(1, k5))
        dataset_name = dataloader.dataset.opt["name"]
        self.metric_results = {"top1": top1, "top5": top5}
        if head_hits:
            self.metric_results["degradation_top1"] = 100.0 * float(torch.cat(head_hits).mean())
        if not hasattr(self, "_best"):
            self._best: Dict[str, Dict[str, tuple]] = {}
        best = self._best.setdefault(dataset_name, {})
        log = f"Validation {dataset_name} ({len(labels_t)} images, pretext head of the query encoder)\n"
        for metric, value in self.metric_results.items():
            if value >= best.get(metric, (-math.inf, -1))[0]:
                best[metric] = (value, current_iter)
            log += f"\t # {metric}: {value:.4f}\tBest: {best[metric][0]:.4f} @ {best[metric][1]} iter\n"
            if tb_logger:
                tb_logger.add_scalar(f"metrics/{dataset_name}/{metric}", value, current_iter)
        latents_t, warning = torch.cat(latents), None
        if latents_t.shape[0] >= 2:
            spread = latent_spread(latents_t)
            log += f"\t # latent_spread: {spread:.4f} (0: every image gets the same prompt)\n"
            if tb_logger:
                tb_logger.add_scalar(f"metrics/{dataset_name}/latent_spread", spread, current_iter)
            warning = collapse_message(spread)
        get_root_logger().info(log)
        if warning:
            get_root_logger().warning(warning)

    # -------------------------------------------------------------------------------- saving
    def save(self, epoch: int, current_iter: int) -> None:
        if hasattr(self, "net_g_ema"):
            self.save_network([self.net_g, self.net_g_ema], "net_g", current_iter, param_key=["params", "params_ema"])
        else:
            self.save_network(self.net_g, "net_g", current_iter)
        if self.opt["train"].get("save_prompter", True) and self.opt.get("rank", 0) == 0:
            net = self.net_g_ema if hasattr(self, "net_g_ema") else self.get_bare_model(self.net_g)
            label = "latest" if current_iter == -1 else current_iter
            net.export_prompter().save_pretrained(
                osp.join(self.opt["path"]["models"], f"prompter_{label}.safetensors"))
        self.save_training_state(epoch, current_iter)
