"""Stage 1 in BasicSR: :class:`ConStyleV2PretrainModel`, pre-training the prompter (``network_g: {type:
ConStyleMoCo}``): Real-ESRGAN degradation of the non-weather query views on the device, the five losses
with their ``class_iter`` / ``kl_iter`` switches, EMA, top-1 / top-5 validation of the pretext head,
checkpoints in the authors' layout (``params`` / ``params_ema`` of the MoCo wrapper, which
``ConStyleV2.from_pretrained`` reads).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from os import path as osp
from typing import Any, Dict

import torch

from ...compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.archs import build_network  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402

from ...core.builder import OptionError  # noqa: E402

from .mixins import RunMixin, TorchOptimMixin

__all__ = ["ConStyleV2PretrainModel"]


class ConStyleV2PretrainModel(RunMixin, TorchOptimMixin, BaseModel):
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
    ``models/prompter_<iter>.safetensors``, and a degradation head beside it as
    ``prompter_<iter>.head.safetensors``), ``pretext_target`` ['class']: what the pretext head
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
            net.save_prompter(osp.join(self.opt["path"]["models"], f"prompter_{label}.safetensors"))
        self.save_training_state(epoch, current_iter)
