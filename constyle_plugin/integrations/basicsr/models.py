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

from collections import OrderedDict
from os import path as osp
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ...compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.metrics import calculate_metric  # noqa: E402
from basicsr.utils import get_root_logger, imwrite, tensor2img  # noqa: E402
from basicsr.utils.dist_util import master_only  # noqa: E402


from .mixins import (AMP_DTYPES, DtypeProbe, RunMixin, TorchOptimMixin, amp_setting, copy_buffers, grad_scaler,
                     prompters_of, side_by_side)
from .pretrain_model import ConStyleV2PretrainModel
__all__ = ["AMP_DTYPES", "ConStyleSRModel", "ConStyleV2PretrainModel", "amp_setting"]

try:
    from basicsr.models.sr_model import SRModel
except ImportError:  # a fork without SRModel: only the stage-1 model is offered
    SRModel = None

if SRModel is not None:

    class ConStyleSRModel(RunMixin, TorchOptimMixin, SRModel):
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
            self.scaler = grad_scaler(self.device.type) if self.amp == "fp16" else None
            prompters = len(prompters_of(self.get_bare_model(self.net_g)))  # ConStyleUNet runs them outside autocast
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
            probe = DtypeProbe(self.get_bare_model(self.net_g)) if self._probe_dtypes else None
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
            copy_buffers(net_g, self.net_g_ema)

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
            img = tensor2img([side_by_side(tensors)])
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
