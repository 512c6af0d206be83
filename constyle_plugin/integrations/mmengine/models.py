"""MMEngine models: the stage-2 restorer, the stage-1 pre-trainer, their data preprocessor and
the optimiser-wrapper constructor that keeps frozen parameters out of the optimiser.

Data layout between the pieces (what the datasets of :mod:`.data` produce):

- restoration: ``{'inputs': 3 x H x W image, 'data_samples': BaseDataElement(gt_img=3 x H x W)}``;
- pre-training: ``{'inputs': {'query': 3 x S x S, 'key': 3 x S x S},
  'data_samples': BaseDataElement(gt_label=int64 scalar, metainfo={'weather': bool})}``.

Images are uint8 (0..255) or float in [0, 1], RGB. :class:`ConStyleDataPreprocessor` stacks them to
``B x 3 x H x W`` floats in [0, 1] on the model's device and pads restoration inputs to the
backbone's size multiple; the models crop their predictions back to each input's size.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmengine.structures import BaseDataElement
from torch import Tensor, nn

from ...core.padding import pad_bottom_right
from ...core.builder import OptionError, wrap_from_options
from ...core.stages import check_inject, check_stages_option
from ...core.prompter import ConStyleV2
from ...core.promptmaps import check_prompt_size
from .scope import MODELS, OPTIM_WRAPPERS, OPTIMIZERS
from ...errors import ConStyleError, ConStyleKeyError, ConStyleTypeError, MissingFileError

__all__ = ["ConStyleDataPreprocessor", "ConStyleOptimWrapperConstructor", "ConStylePretrainer",
           "ConStyleRestorer"]

ConfigType = Union[Mapping[str, Any], nn.Module]


def _build(cfg: ConfigType, what: str) -> nn.Module:
    """Build a module from a config dict through MMEngine's MODELS (or take a ready module)."""
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConStyleTypeError(f"{what}: expected a config dict with a 'type' key (or an nn.Module), got {cfg!r}")
    try:
        return MODELS.build(dict(cfg))
    except OptionError as exc:
        raise exc.under(what) from None
    except (ValueError, TypeError) as exc:  # the class refused its arguments: named under the config key
        raise OptionError(what, str(exc)) from exc


def _preprocessor(cfg: Optional[ConfigType]) -> nn.Module:
    """The data preprocessor, built here from the ``constyle`` scope (MMEngine's BaseModel would look
    the type up in the root registry only); default :class:`ConStyleDataPreprocessor`."""
    if isinstance(cfg, nn.Module):
        return cfg
    return MODELS.build(dict(cfg) if cfg is not None else dict(type="ConStyleDataPreprocessor"))


def _to_float01(img: Tensor, what: str) -> Tensor:
    """uint8 (0..255) -> float in [0, 1]; floating images are taken as already in [0, 1]."""
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    if img.is_floating_point():
        return img.float() if img.dtype == torch.float64 else img
    raise ConStyleTypeError(f"{what}: expected uint8 (0..255) or float ([0, 1]) images, got {img.dtype}")


def _as_list(images: Union[Tensor, Sequence[Tensor]], what: str) -> List[Tensor]:
    if isinstance(images, Tensor):
        if images.dim() == 3:
            return [images]
        if images.dim() == 4:
            return list(images.unbind(0))
        raise ConStyleError(f"{what}: expected C x H x W images or a B x C x H x W batch, got {tuple(images.shape)}")
    if isinstance(images, (list, tuple)) and images and all(isinstance(t, Tensor) for t in images):
        for t in images:
            if t.dim() != 3:
                raise ConStyleError(f"{what}: expected C x H x W images, got one of shape {tuple(t.shape)}")
        return list(images)
    raise ConStyleTypeError(f"{what}: expected a tensor or a non-empty list of tensors, got {type(images).__name__}")


class ConStyleDataPreprocessor(BaseDataPreprocessor):
    """Stacks, scales to [0, 1], moves to the device and pads to the backbone's size multiple.

    Args:
        size_multiple: pad restoration inputs (bottom/right) so H and W are multiples of this;
            combined (least common multiple) with the backbone's ``size_multiple`` attribute, which
            :class:`ConStyleRestorer` reads. ``None``: the backbone's alone (1 if it has none).
        pad_mode: ``'reflect'`` (default, as the NAFNet/Restormer test scripts), ``'replicate'``
            or ``'zeros'``.
        non_blocking: passed to the host-to-device copies.

    ``forward(data, training)``: ``data['inputs']`` is a list of ``3 x H x W`` images (MMEngine's
    ``pseudo_collate``), a ``B x 3 x H x W`` tensor, or a dict of those (pre-training views, only
    stacked and scaled). Returns ``{'inputs': B x 3 x Hp x Wp float in [0, 1], 'data_samples':
    [...]}``; each data sample gets ``ori_shape`` (H, W) and ``pad_shape`` (Hp, Wp) metainfo and
    its ``gt_img`` scaled the same way. :meth:`crop` undoes the padding on predictions.
    """

    def __init__(self, size_multiple: Optional[int] = None, pad_mode: str = "reflect",
                 non_blocking: bool = False) -> None:
        super().__init__(non_blocking=non_blocking)
        if size_multiple is not None and (int(size_multiple) != size_multiple or size_multiple < 1):
            raise ConStyleError(f"data_preprocessor.size_multiple: expected a positive integer, got {size_multiple!r}")
        if pad_mode not in ("reflect", "replicate", "zeros"):
            raise ConStyleError(f"data_preprocessor.pad_mode: expected 'reflect', 'replicate' or 'zeros', "
                             f"got {pad_mode!r}")
        self.size_multiple = None if size_multiple is None else int(size_multiple)
        self.pad_mode = pad_mode
        self.backbone_multiple = 1  # set by the model from its backbone's ``size_multiple``

    @property
    def multiple(self) -> int:
        """The multiple inputs are padded to: lcm of the configured and the backbone's."""
        m = self.size_multiple or 1
        b = int(self.backbone_multiple or 1)
        return m * b // math.gcd(m, b)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        if not isinstance(data, Mapping) or "inputs" not in data:
            raise ConStyleTypeError(f"data: expected a dict with an 'inputs' key (and 'data_samples'), got "
                            f"{type(data).__name__}{'' if not isinstance(data, Mapping) else ' keys ' + str(list(data))}")
        inputs = data["inputs"]
        samples = data.get("data_samples")
        if isinstance(inputs, Mapping):  # pre-training views: equal sizes, no padding
            stacked = {}
            for key, value in inputs.items():
                imgs = [_to_float01(t, f"inputs.{key}") for t in _as_list(value, f"inputs.{key}")]
                shapes = {tuple(t.shape) for t in imgs}
                if len(shapes) != 1:
                    raise ConStyleError(f"inputs.{key}: images of different sizes {sorted(shapes)} in one batch")
                stacked[key] = torch.stack(imgs)
            return {"inputs": stacked, "data_samples": samples}

        imgs = [_to_float01(t, "inputs") for t in _as_list(inputs, "inputs")]
        if samples is None:
            samples = [BaseDataElement() for _ in imgs]
        elif isinstance(samples, BaseDataElement):
            samples = [samples]
        if len(samples) != len(imgs):
            raise ConStyleError(f"data_samples: {len(samples)} samples for {len(imgs)} input images")
        m = self.multiple
        hp = max(t.shape[-2] for t in imgs)
        wp = max(t.shape[-1] for t in imgs)
        hp, wp = -(-hp // m) * m, -(-wp // m) * m
        batch = torch.stack([pad_bottom_right(t, hp, wp, self.pad_mode) for t in imgs])
        for t, ds in zip(imgs, samples):
            ds.set_metainfo({"ori_shape": tuple(t.shape[-2:]), "pad_shape": (hp, wp)})
            if "gt_img" in ds:
                ds.gt_img = _to_float01(ds.gt_img, "data_samples.gt_img")
        return {"inputs": batch, "data_samples": samples}

    @staticmethod
    def crop(outputs: Tensor, data_samples: Optional[Sequence[BaseDataElement]]) -> List[Tensor]:
        """``B x C x Hp x Wp`` -> list of ``C x H x W``, each cropped to its sample's ``ori_shape``."""
        if data_samples is None:
            return list(outputs.unbind(0))
        out = []
        for o, ds in zip(outputs.unbind(0), data_samples):
            h, w = ds.metainfo.get("ori_shape", o.shape[-2:])
            out.append(o[..., :h, :w])
        return out


class ConStyleRestorer(BaseModel):
    """Stage 2: a restoration U-Net with the frozen ConStyle v2 prompter (or without: the origin twin).

    Args:
        backbone: config of the U-Net, built from MMEngine's MODELS (e.g. ``dict(type='NAFNet',
            width=32)``), or a module. It takes and returns ``B x 3 x H x W`` images in [0, 1].
        prompter: ``dict(pretrained=None | path)`` (default): wrap the backbone with :func:`wrap_unet`
            and the prompter loaded from ``path`` (``None``: the packaged pre-trained one).
            ``None``: no prompter, the bare backbone (the "origin" baseline trained on the same data).
        inject, stages, probe_size, prompt_size: passed to :func:`wrap_unet` (``stages=None``: the ready
            spec of a known family, else discovery; ``prompt_size=None``: the prompter sees the full
            resolution). Ignored without a prompter.
        pixel_loss: config of the pixel loss, built from MODELS (``L1Loss``, ``CharbonnierLoss``,
            ``MSELoss``: BasicSR's classes); called as ``loss(pred, gt)``.
        data_preprocessor: default :class:`ConStyleDataPreprocessor`.

    ``forward(inputs, data_samples=None, mode)``, ``inputs``: ``B x 3 x Hp x Wp`` (padded by the
    preprocessor):

    - ``'loss'``: ``{'loss_pix': scalar}``, predictions cropped to each ``ori_shape`` against
      ``data_samples[i].gt_img``;
    - ``'predict'``: one ``BaseDataElement`` per sample with ``pred_img`` (``3 x H x W`` in [0, 1],
      cropped back) and its ``gt_img`` when the sample had one;
    - ``'tensor'``: the network's raw ``B x 3 x Hp x Wp`` output.
    """

    @staticmethod
    def check_options(node: Mapping[str, Any]) -> None:
        """Check ``prompter``, ``inject`` and ``stages`` of a config of this model without building
        anything; :class:`OptionError` with the key relative to the model."""
        prompter = node.get("prompter")
        if not (prompter is None or isinstance(prompter, (bool, Mapping))):
            raise OptionError("prompter", f"expected dict(pretrained=None | path) or None, got {prompter!r}")
        if "inject" in node:
            check_inject(node["inject"])
        check_stages_option(node.get("stages"))
        check_prompt_size(node.get("prompt_size"))

    def __init__(self, backbone: ConfigType, prompter: Optional[Mapping[str, Any]] = {"pretrained": None},
                 inject: Union[str, Sequence[str]] = ("encoder", "bottleneck"),
                 stages: Optional[Mapping[str, Any]] = None, probe_size: Optional[Any] = None,
                 prompt_size: Optional[int] = None, pixel_loss: ConfigType = dict(type="L1Loss", loss_weight=1.0),
                 data_preprocessor: Optional[ConfigType] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=_preprocessor(data_preprocessor), init_cfg=init_cfg)
        net = _build(backbone, "backbone")
        self.use_prompter = prompter is not None and prompter is not False
        if self.use_prompter:
            if prompter is True:
                prompter = {}
            if not isinstance(prompter, Mapping):
                raise OptionError("prompter", f"expected dict(pretrained=None | path) or None, got {prompter!r}")
            try:
                net = wrap_from_options(net, prompter=prompter, inject=inject, stages=stages, probe_size=probe_size,
                                        prompt_size=prompt_size)
            except OptionError as exc:
                if exc.key == "prompter.pretrained" and "not found" in exc.message:
                    raise MissingFileError(str(exc)) from None
                raise
        self.net = net
        self.pixel_loss = _build(pixel_loss, "pixel_loss")
        base = self.net.backbone if self.use_prompter else self.net
        if isinstance(self.data_preprocessor, ConStyleDataPreprocessor):
            self.data_preprocessor.backbone_multiple = int(getattr(base, "size_multiple", 1) or 1)

    @property
    def prompter(self) -> Optional[ConStyleV2]:
        """The frozen prompter (``None`` for the origin twin)."""
        return self.net.prompter if self.use_prompter else None

    def forward(self, inputs: Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = "tensor") -> Union[Dict[str, Tensor], List[BaseDataElement], Tensor]:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise ConStyleError(f"inputs: expected a B x 3 x H x W tensor (run the data preprocessor first), "
                             f"got {type(inputs).__name__}{tuple(inputs.shape) if isinstance(inputs, Tensor) else ''}")
        if mode not in ("loss", "predict", "tensor"):
            raise ConStyleError(f"mode: expected 'loss', 'predict' or 'tensor', got {mode!r}")
        out = self.net(inputs)
        if mode == "tensor":
            return out
        preds = ConStyleDataPreprocessor.crop(out, data_samples)
        if mode == "loss":
            if not data_samples or any("gt_img" not in ds for ds in data_samples):
                raise ConStyleError("data_samples: mode='loss' needs a gt_img in every data sample")
            gts = [ds.gt_img for ds in data_samples]
            for i, (p, g) in enumerate(zip(preds, gts)):
                if p.shape != g.shape:
                    raise ConStyleError(f"data_samples[{i}].gt_img: shape {tuple(g.shape)} does not match the "
                                     f"input's {tuple(p.shape)}")
            if len({tuple(p.shape) for p in preds}) == 1:
                loss = self.pixel_loss(torch.stack(preds), torch.stack(gts))
            else:
                loss = torch.stack([self.pixel_loss(p[None], g[None]) for p, g in zip(preds, gts)]).mean()
            return {"loss_pix": loss}
        results = []
        for i, p in enumerate(preds):
            ds = data_samples[i] if data_samples is not None else None
            res = BaseDataElement(metainfo=dict(ds.metainfo) if ds is not None else {})
            res.pred_img = p.detach().clamp(0, 1)
            if ds is not None and "gt_img" in ds:
                res.gt_img = ds.gt_img
            results.append(res)
        return results


class ConStylePretrainer(BaseModel):
    """Stage 1: pre-train the ConStyle v2 prompter with momentum contrast (ConStyleMoCo).

    Args:
        queue_size, momentum, temperature, normalize, enqueue, num_classes: of
            :class:`~constyle_plugin.training.pretrain.ConStyleMoCo` (authors: 65 760, 0.999, 0.07, False,
            'query', 1000). ``queue_size`` must be a multiple of the (all-ranks) batch size.
        pretrained: ``None`` (fresh), or a checkpoint to start from: a MoCo checkpoint (the
            authors' layout) or a prompter-only file (the key encoder starts as its copy).
        class_iter, kl_iter, kl_temperature, label_smoothing, loss_weights: of
            :class:`~constyle_plugin.training.pretrain.ConStylePretrainLoss`; the switches compare with the
            Runner's iteration, read from MMEngine's message hub.
        degradation: keyword arguments of
            :class:`~constyle_plugin.data.degradations.RealESRGANDegradation` (the authors' values by
            default), applied on the device to the query views that did not get the CPU weather
            degradation; ``None`` skips it.

    Inputs (after the preprocessor): ``{'query': B x 3 x S x S, 'key': B x 3 x S x S}`` in [0, 1];
    data samples carry ``gt_label`` (class index) and ``weather`` metainfo.

    ``forward`` modes: ``'loss'``: ``{'loss_infonce', 'loss_content', 'loss_style', 'loss_class',
    'loss_kl'}`` (the active ones); ``'predict'``: one ``BaseDataElement`` per sample with
    ``pred_logits`` (the query encoder's pretext logits, ``C``), ``pred_latent`` (its latent prompt,
    ``128``) and ``gt_label``; ``'tensor'``: the
    latent prompt ``B x 128`` of the query view.
    """

    def __init__(self, queue_size: int = 65760, momentum: float = 0.999, temperature: float = 0.07,
                 normalize: bool = False, enqueue: str = "query", num_classes: int = 1000,
                 pretrained: Optional[str] = None, class_iter: Optional[int] = 50000,
                 kl_iter: Optional[int] = None, kl_temperature: float = 1.0, label_smoothing: float = 0.0,
                 loss_weights: Optional[Mapping[str, float]] = None,
                 degradation: Optional[Mapping[str, Any]] = {},
                 data_preprocessor: Optional[ConfigType] = None, init_cfg: Optional[dict] = None) -> None:
        from ...training.pretrain import ConStyleMoCo

        super().__init__(data_preprocessor=_preprocessor(data_preprocessor), init_cfg=init_cfg)
        moco_kwargs = dict(momentum=momentum, temperature=temperature, normalize=normalize, enqueue=enqueue)
        if pretrained is not None:
            try:
                self.moco = ConStyleMoCo.from_pretrained(pretrained, strict=False, **moco_kwargs)
            except FileNotFoundError as exc:
                raise MissingFileError(f"pretrained: {exc}") from None
        else:
            self.moco = ConStyleMoCo(queue_size=queue_size, num_classes=num_classes, **moco_kwargs)
        self.losses = self.moco.pretrain_loss(class_iter=class_iter, kl_iter=kl_iter,
                                              kl_temperature=kl_temperature, label_smoothing=label_smoothing,
                                              weights=loss_weights)
        # Kept out of the module tree: it holds only constants (DiffJPEG tables, USM kernel) that do
        # not belong in checkpoints; it moves itself to the input's device.
        self._degrader: List[nn.Module] = []
        if degradation is not None:
            from ...data.degradations import RealESRGANDegradation

            self._degrader.append(RealESRGANDegradation.from_opt(degradation))

    @staticmethod
    def current_iter() -> int:
        """The Runner's iteration (0 outside a Runner), from MMEngine's message hub."""
        return int(MessageHub.get_current_instance().get_info("iter", 0) or 0)

    @staticmethod
    def _labels(data_samples: Optional[Sequence[BaseDataElement]], device) -> Optional[Tensor]:
        if not data_samples or any("gt_label" not in ds for ds in data_samples):
            return None
        return torch.stack([torch.as_tensor(ds.gt_label).reshape(()) for ds in data_samples]).long().to(device)

    def degrade_queries(self, query: Tensor, data_samples: Optional[Sequence[BaseDataElement]]) -> Tensor:
        """Real-ESRGAN degradation (on the query's device) of the samples without weather."""
        if not self._degrader:
            return query
        weather = ([bool(ds.metainfo.get("weather", False)) for ds in data_samples] if data_samples
                   else [False] * query.shape[0])
        todo = [i for i, w in enumerate(weather) if not w]  # on the host: no read from the device
        if not todo:
            return query
        if len(todo) == query.shape[0]:
            return self._degrader[0](query)
        index = torch.tensor(todo).to(query.device, non_blocking=True)
        return query.index_copy(0, index, self._degrader[0](query.index_select(0, index)))

    def forward(self, inputs: Union[Mapping[str, Tensor], Tensor],
                data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = "tensor") -> Union[Dict[str, Tensor], List[BaseDataElement], Tensor]:
        if mode not in ("loss", "predict", "tensor"):
            raise ConStyleError(f"mode: expected 'loss', 'predict' or 'tensor', got {mode!r}")
        if isinstance(inputs, Mapping):
            if "query" not in inputs:
                raise ConStyleKeyError(f"inputs: expected a 'query' view (and 'key' for training), got keys {list(inputs)}")
            query, key = inputs["query"], inputs.get("key")
        else:
            query, key = inputs, None
        if mode == "tensor":
            return self.moco.encoder_q(query).latent
        if mode == "predict":
            encoder = self.moco.encoder_q
            encoded = encoder.encode(query)
            logits = encoder.classifier(encoded.pooled)
            results = []
            for i in range(query.shape[0]):
                ds = data_samples[i] if data_samples is not None else None
                res = BaseDataElement(metainfo=dict(ds.metainfo) if ds is not None else {})
                res.pred_logits = logits[i].detach()
                res.pred_latent = encoded.z2[i].detach()
                if ds is not None and "gt_label" in ds:
                    res.gt_label = torch.as_tensor(ds.gt_label).reshape(()).long()
                results.append(res)
            return results
        if key is None:
            raise ConStyleKeyError("inputs: mode='loss' needs both the 'query' and the 'key' views")
        query = self.degrade_queries(query, data_samples)
        out = self.moco(query, key)
        losses = self.losses(out, self._labels(data_samples, query.device), self.current_iter())
        return {f"loss_{name}": value for name, value in losses.items() if name != "total"}


class ConStyleOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor, but only parameters that require grad reach the optimiser.

    The default gives ``model.parameters()`` (frozen ones included) to the optimiser when there is
    no ``paramwise_cfg``; here the frozen prompter (and anything else with ``requires_grad=False``)
    is left out in both cases, so the optimiser's state and checkpoints hold trainable parameters only.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if hasattr(model, "module"):
            model = model.module
        if self.paramwise_cfg:
            return super().__call__(model)  # add_params already skips requires_grad=False
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg["type"]
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cfg["type"])
        import inspect

        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ConStyleError("optim_wrapper: the model has no trainable parameter")
        optimizer_cfg[first_arg] = trainable
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(optim_wrapper_cfg, default_args=dict(optimizer=optimizer))
