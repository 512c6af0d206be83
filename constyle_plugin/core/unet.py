"""wrap_unet / unwrap_unet: the ConStyle v2 prompter inside any U-Net, through forward hooks.

The user's network is not edited: forward hooks on a few of its modules (the encoder stages at
1/2, 1/4, 1/8, the bottleneck and optionally the decoder stages) add the prompt to their outputs
through small injection modules that start as the identity. The stages are found by one probe forward
pass (:mod:`.discovery`), or named explicitly with a :class:`StageSpec`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..adapters import stage_spec_for
from ..errors import ConStyleTypeError, PromptError, UNetStructureError, WrapError
from .discovery import (DEFAULT_PROBE_SIZE, IMAGE_KEYWORDS, discover, discover_stages, input_conv, meta_tensor,
                        read_example_inputs, resolve_spec)
from .hooks import HookSet, PromptLedger, capturing, mark_wrapped, wrapper_of
from .injection import FeatureInjector, LatentFiLM, LatentModulator
from .pretrained import load_pretrained, save_pretrained
from .prompter import FEATURE_CHANNELS, LATENT_DIM, ConStyleV2, Prompt, default_prompter, prepare_image
from .promptmaps import check_prompt_size, crop_prompt, resize_for_prompter
from .stages import DEFAULT_INJECT, INJECT_TARGETS, StageInfo, StageSpec, check_inject

__all__ = ["INJECT_TARGETS", "ConStyleUNet", "StageInfo", "StageSpec", "UNetStructureError", "wrap_unet",
           "unwrap_unet", "discover_stages"]

LEGACY_INJECTIONS_KEY = "adapters"  # the state_dict prefix of the injection modules in older checkpoints


# --------------------------------------------------------------------------------------------
# The wrapper (the hooks themselves: hooks.py)
# --------------------------------------------------------------------------------------------
def _autocast_off(device_type: str) -> Any:
    """Autocast turned off for the prompter's forward when it is on: the prompt is computed in the
    prompter's own dtype (float32 as loaded) inside a mixed-precision training step too, so training
    sees the prompt that validation and inference compute."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (meta): nothing to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False) if enabled else contextlib.nullcontext()


class ConStyleUNet(nn.Module):
    """A U-Net with the frozen ConStyle v2 prompter hooked into its stages (build with :func:`wrap_unet`).

    ``forward`` takes exactly what the backbone takes and returns what it returns; the first
    positional argument (or ``x`` / ``inp`` / ``img`` keyword) is the ``B x C x H x W`` image in
    [0, 1] that the prompter sees (grey inputs are replicated to RGB for the prompter).

    Precision: the prompter keeps its own dtype (``wrap_unet`` leaves the loaded fp32 weights as they
    are, also for a half-precision backbone); the image is cast to the prompter's dtype, and each
    injection module casts the prompt to its stage's dtype. ``net.half()`` afterwards converts everything.

    Prompt resolution: ``prompt_size`` (settable; ``None``: full resolution) is the longer side of the
    copy of the image the prompter sees (antialiased downscale, never an upscale); the injectors resize
    the prompt's maps to each stage. :meth:`compute_prompt` and :meth:`use_prompt` let a caller compute
    one prompt and apply it to several calls (tiled inference: one prompt per image).
    """

    def __init__(self, backbone: nn.Module, prompter: ConStyleV2, stages: StageSpec,
                 infos: Sequence[StageInfo], inject: Sequence[str], probe_note: str = "",
                 image_key: Optional[str] = None, prompt_size: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_key = image_key
        self.prompt_size = prompt_size
        self._given: Optional[Tuple[Prompt, Optional[Tuple[int, int]], Tuple[int, int]]] = None
        # the range check reads two numbers back from the device: done on the first forwards only
        self._range_checks_left = RANGE_CHECKS
        self.prompter = prompter.freeze()
        self.stages = stages
        self.stage_info = tuple(infos)
        self.inject = tuple(inject)
        self.probe_note = probe_note
        self.injections = nn.ModuleDict()
        self._ledger = PromptLedger()
        self._hooks = HookSet()
        for key, info, feature in self._plan():
            if info.role == "encoder":
                self.injections[key] = FeatureInjector(FEATURE_CHANNELS[feature], info.channels)
            elif info.role == "bottleneck":
                self.injections[key] = LatentModulator(LATENT_DIM, info.channels)
            else:
                self.injections[key] = LatentFiLM(LATENT_DIM, info.channels)
        self._attach()

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the injection modules were named ``injections`` hold them as ``adapters.*``.
        old = prefix + LEGACY_INJECTIONS_KEY + "."
        for key in [k for k in state_dict if k.startswith(old)]:
            new = prefix + "injections." + key[len(old):]
            if new not in state_dict:
                state_dict[new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _plan(self) -> Iterator[Tuple[str, StageInfo, Optional[int]]]:
        encoders = [i for i in self.stage_info if i.role == "encoder"]
        decoders = [i for i in self.stage_info if i.role == "decoder"]
        if "encoder" in self.inject:
            for k, info in enumerate(encoders[:len(FEATURE_CHANNELS)]):
                yield f"encoder{k + 1}", info, k
        if "bottleneck" in self.inject:
            for info in self.stage_info:
                if info.role == "bottleneck":
                    yield "bottleneck", info, None
        if "decoder" in self.inject:
            for k, info in enumerate(decoders):
                yield f"decoder{k + 1}", info, None

    def _attach(self) -> None:
        self._hooks.attach(self.backbone, self._ledger, list(self._plan()))
        mark_wrapped(self.backbone, self, self._hooks)

    def _detach(self) -> None:
        self._hooks.remove()
        mark_wrapped(self.backbone, None)

    def __setstate__(self, state: Dict[str, Any]) -> None:  # deepcopy / unpickle: the copy owns its hooks
        super().__setstate__(state)
        if len(self.__dict__.get("_hooks", ())):
            mark_wrapped(self.backbone, self, self._hooks)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        keys = ((self.image_key,) if getattr(self, "image_key", None) else ()) + IMAGE_KEYWORDS
        image = args[0] if args else next((kwargs[k] for k in keys if k in kwargs), None)
        if image is None:
            raise ConStyleTypeError("ConStyleUNet: pass the image batch as the first positional argument (or x=...)")
        image = prepare_image(image, "x")
        if (getattr(self, "_range_checks_left", 0) > 0 and image.is_floating_point() and not image.is_meta
                and not capturing()):
            self._range_checks_left -= 1
            note = _range_note(image)
            if note is not None:
                self._range_checks_left = 0
                warnings.warn(note, UserWarning, stacklevel=2)
        given = getattr(self, "_given", None)
        prompt = self.compute_prompt(image) if given is None else _window_of(given, image)
        self._ledger.begin(prompt, tuple(image.shape[-2:]), self.injections)
        try:
            output = self.backbone(*args, **kwargs)
        except BaseException:
            self._ledger.abort()
            raise
        self._ledger.end(output)
        return output

    def train(self, mode: bool = True) -> "ConStyleUNet":
        super().train(mode)
        self.prompter.eval()
        return self

    @property
    def prompt_size(self) -> Optional[int]:
        """The longer side (pixels) of the image copy the prompter sees; ``None``: full resolution."""
        return self.__dict__.get("_prompt_size")

    @prompt_size.setter
    def prompt_size(self, value: Optional[int]) -> None:
        self.__dict__["_prompt_size"] = check_prompt_size(value)

    def compute_prompt(self, image: Tensor) -> Prompt:
        """The prompt of ``image`` (``B x C x H x W`` in [0, 1]) as ``forward`` computes it: the frozen
        prompter on the image resized to ``prompt_size``, without gradients, in the prompter's dtype.

        Returns a :class:`~constyle_plugin.core.prompter.Prompt`: ``latent`` ``B x 128``, ``features`` at
        1/2, 1/4 and 1/8 of the prompter's input.
        """
        image = prepare_image(image, "x")
        weight = next(iter(self.prompter.parameters()), None)
        if weight is not None and image.dtype != weight.dtype and weight.is_floating_point():
            image = image.to(weight.dtype)
        with torch.no_grad(), _autocast_off(image.device.type):
            return self.prompter(resize_for_prompter(image, self.prompt_size))

    @contextlib.contextmanager
    def use_prompt(self, prompt: Prompt, image_size: Optional[Sequence[int]] = None,
                   offset: Sequence[int] = (0, 0)) -> Iterator["ConStyleUNet"]:
        """Within the block, forwards apply ``prompt`` instead of running the prompter.

        Args:
            prompt: a :class:`~constyle_plugin.core.prompter.Prompt` of the same batch size as the inputs,
                e.g. ``net.compute_prompt(image)``.
            image_size: ``(H, W)`` of the image ``prompt`` was computed from, when the inputs are
                windows of it (tiles): each input then gets the image's ``latent`` and the part of the
                feature maps under it (:func:`~constyle_plugin.core.promptmaps.crop_prompt`). ``None``: the
                prompt belongs to the inputs themselves (its maps are resized to each stage).
            offset: ``(top, left)`` of the inputs in the image (with ``image_size``); an input may
                reach past the image's bottom and right edges (padding).

        Example, one prompt for all tiles of an image::

            prompt = net.compute_prompt(image)
            with net.use_prompt(prompt, image.shape[-2:], offset=(top, left)):
                out = net(image[..., top:top + 256, left:left + 256])
        """
        if not isinstance(prompt, Prompt):
            raise ConStyleTypeError(f"use_prompt: prompt: expected a Prompt (net.compute_prompt(image)), got "
                                    f"{type(prompt).__name__}")
        size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        previous = getattr(self, "_given", None)
        self._given = (prompt, size, (int(offset[0]), int(offset[1])))
        try:
            yield self
        finally:
            self._given = previous

    def prompt_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the plugin added (the injection modules); the prompter's are frozen."""
        return self.injections.parameters()

    def describe(self) -> str:
        """A table of the hook points: role, module, scale, channels, and whether a prompt goes there."""
        hooked = {info.name + info.role for _, info, _ in self._plan()}
        rows = [f"  {i.role:<10} {i.name:<32} 1/{2 ** i.scale if i.scale >= 0 else '?':<5} {i.channels:>5} ch"
                f"{'' if i.layout == 'BCHW' else ' ' + i.layout}"
                f"{'  <- prompt' if i.name + i.role in hooked else ''}" for i in self.stage_info]
        note = f"\n  ({self.probe_note})" if self.probe_note else ""
        return (f"{type(self.backbone).__name__} with ConStyle v2 at:\n" + "\n".join(rows) + note
                + f"\n{self.stages!r}")

    def extra_repr(self) -> str:
        size = f", prompt_size={self.prompt_size}" if self.prompt_size is not None else ""
        return f"stages={self.stages!r}, inject={self.inject}{size}"

    def save_pretrained(self, directory: Any, *, include_prompter: Optional[bool] = None, ema: Any = None,
                        backbone_config: Optional[Mapping[str, Any]] = None) -> Any:
        """Write ``config.json`` (how it was wrapped) and ``model.safetensors`` (backbone and injection
        modules; the prompter too when it is not the packaged one, or with ``include_prompter=True``) into
        ``directory``, swapped in as a whole; ``ema``: the run's EMA copy. See
        :func:`constyle_plugin.core.pretrained.save_pretrained`."""
        return save_pretrained(self, directory, include_prompter=include_prompter, ema=ema,
                               backbone_config=backbone_config)

    @classmethod
    def from_pretrained(cls, directory: Any, backbone: Optional[nn.Module] = None, prompter: Any = None,
                        **kwargs: Any) -> "ConStyleUNet":
        """The net ``save_pretrained`` wrote, on ``backbone`` (a fresh instance of the user's class) or on a
        reference / registered arch rebuilt from the config; ``prompter``: the stored, packaged or a given one,
        checked against the recorded SHA-256. See :func:`constyle_plugin.core.pretrained.load_pretrained`."""
        return load_pretrained(cls, directory, backbone=backbone, prompter=prompter, **kwargs)


def _window_of(given: Tuple[Prompt, Optional[Tuple[int, int]], Tuple[int, int]], image: Tensor) -> Prompt:
    """The prompt :meth:`ConStyleUNet.use_prompt` fixed, for this input (its window of the image)."""
    prompt, size, (top, left) = given
    if prompt.latent.shape[0] != image.shape[0]:
        raise PromptError(f"use_prompt: the prompt is for a batch of {prompt.latent.shape[0]} but the input "
                          f"x has {image.shape[0]} image(s)")
    if size is None:
        return prompt
    return crop_prompt(prompt, size, (top, left, image.shape[-2], image.shape[-1]))


RANGE_CHECKS = 16  # forwards of a wrapped net whose input range is checked (each reads back from the device)


def _range_note(image: Tensor) -> Optional[str]:
    """A warning if a float image batch is clearly not in [0, 1] (0..255, [-1, 1], mean/std normalised).

    Noise and overshoot just outside [0, 1] (an unclipped sigma-50 denoising input reaches about
    -0.8 and 1.8 in its tails) pass: 0..255 shows as a maximum above 3, a signed range as a minimum
    below -0.5 with more than a fifth of the values below -0.1.
    """
    with torch.no_grad():
        low, high = (float(v) for v in torch.aminmax(image.detach().float()))
        if not math.isfinite(low) or not math.isfinite(high):
            return None  # refused as non-finite by the prompter, with its own message
        if high > 3:
            looks = "0..255: divide by 255"
        elif low < -0.5 and float((image.detach() < -0.1).float().mean()) > 0.2:
            looks = "[-1, 1] or mean/std normalised: map it back, e.g. (x + 1) / 2"
        else:
            return None
    return (f"ConStyleUNet: the image batch holds values in [{low:.3g}, {high:.3g}], which looks like {looks}. "
            f"The prompter was trained on images in [0, 1] and reads anything else as a different degradation "
            f"(warned once per wrapped net).")


def _check_backbone(unet: nn.Module, in_channels: Optional[int]) -> None:
    """Refuse, before any probe, what the wrapper could not run: meta tensors, non-image inputs."""
    meta = meta_tensor(unet)
    if meta is not None:
        raise WrapError(
            f"wrap_unet: {type(unet).__name__} has tensors on the meta device ({meta!r}, ...): a meta model has no "
            f"values to probe, and after to_empty() the prompter would hold uninitialised memory instead of its "
            f"loaded weights and the injections would no longer start as the identity. Materialise the network "
            f"first (unet.to_empty(device=...) and load its weights), then wrap it.")
    if in_channels is not None:
        channels, where = in_channels, f"in_channels={in_channels}"
    else:
        name, channels = input_conv(unet)
        where = f"its first Conv2d {name!r} has in_channels={channels}"
    if channels not in (1, 3, 4):
        raise WrapError(
            f"wrap_unet: {type(unet).__name__} takes {channels}-channel inputs ({where}), but the prompter reads "
            f"images: 1 (grey), 3 (RGB) or 4 (RGBA) channels in [0, 1]. A network that stacks several images "
            f"or extra maps on the channels cannot be prompted by the image it receives; if the first Conv2d "
            f"is not the input layer, pass in_channels=.")


def _check_forward_arguments(unet: nn.Module) -> None:
    """A forward that needs more than the image (``forward(x, mask)``) cannot be probed with an image
    alone: say so, pointing to ``example_inputs``, before a probe fails for it."""
    try:
        params = list(inspect.signature(unet.forward).parameters.values())
    except (TypeError, ValueError):
        return
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    required = [p.name for p in params[1:] if p.kind in named and p.default is inspect.Parameter.empty]
    if params and params[0].kind in named[:2] and required:
        image = params[0].name
        raise UNetStructureError(
            f"wrap_unet: {type(unet).__name__}.forward({', '.join(p.name for p in params)}) needs "
            f"{', '.join(map(repr, required))} besides the image, so the probe cannot run it on an image alone: pass "
            f"example_inputs=({image}, {', '.join(required)}) with tensors like those it is called with (a tuple of "
            f"its positional arguments, the image first, or a dict of its keyword arguments)")


def _uncompiled(unet: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile``'d one (with a warning), else ``unet`` itself.

    Probing a compiled module would compile it for the probe and again for every hook change.
    """
    inner = getattr(unet, "_orig_mod", None)
    if type(unet).__name__ != "OptimizedModule" or not isinstance(inner, nn.Module):
        return unet
    warnings.warn(
        f"wrap_unet: got a torch.compile'd module; wrapping the module inside it (`_orig_mod`, a "
        f"{type(inner).__name__}) instead. The returned net is not compiled: wrap first, then compile, as in "
        f"net = torch.compile(wrap_unet(unet)).", UserWarning, stacklevel=3)
    return inner


def wrap_unet(unet: nn.Module, prompter: Optional[ConStyleV2] = None,
              stages: Optional[Union[StageSpec, Mapping[str, Any]]] = None,
              inject: Union[str, Sequence[str]] = DEFAULT_INJECT,
              probe_size: Union[int, Tuple[int, int]] = DEFAULT_PROBE_SIZE,
              in_channels: Optional[int] = None,
              example_inputs: Optional[Union[Sequence[Any], Mapping[str, Any]]] = None,
              prompt_size: Optional[int] = None) -> ConStyleUNet:
    """Put the frozen ConStyle v2 prompter into a U-Net, without editing its code.

    Args:
        unet: any restoration U-Net taking ``B x C x H x W`` images in [0, 1] (C = 1, 3 or 4), on any
            device and in any floating dtype, but not on the meta device (refused: materialise first).
        prompter: a :class:`ConStyleV2`; default: the packaged pre-trained prompter. It is moved to
            ``unet``'s device and keeps its dtype (fp32 weights stay exact under a half backbone).
        stages: a :class:`StageSpec` (or a dict) naming the hook points; default: a ready spec for a
            known family (``constyle_plugin.adapters``), else discovery by one probe forward.
        inject: any of ``"encoder"`` (f1, f2, f3 at 1/2, 1/4, 1/8), ``"bottleneck"`` (latent
            modulation of the coarsest stage), ``"decoder"`` (latent FiLM on each upsampling stage).
        probe_size: ``H x W`` of the probe input (multiples of the network's size multiple). A
            network that raises on it is probed again with a square input (``describe()`` says so).
        in_channels: the network's input channels (default: the first Conv2d's).
        example_inputs: what the network's forward takes, for a forward that takes more than the
            image (``forward(x, mask)``) or for a probe of a given size: a tuple of positional
            arguments, the image first, or a dict of keyword arguments (the image under ``x``, ``inp``,
            ``img``, ``input`` or ``image``, else the first 4-d tensor). Used for the probe only; the
            wrapped net is then called as ``unet`` is. Outputs may be tensors, tuples or dicts.
        prompt_size: the longer side, in pixels, of the copy of the image the prompter sees (an
            antialiased downscale; smaller images are not upscaled); ``None`` (default): the full
            resolution. The prompt is mostly global, so 256 costs little quality for a fraction of
            the prompter's cost on large images (see docs/prompt-size.md). Settable later:
            ``net.prompt_size = 256``.

    A ``torch.compile``'d module is unwrapped first: the module inside (``_orig_mod``) is wrapped,
    with a warning; compile after wrapping instead (``torch.compile(wrap_unet(unet))``).

    Float images clearly outside [0, 1] (0..255, [-1, 1]) give one warning per wrapped net at the
    first forward that shows them.

    Returns:
        A :class:`ConStyleUNet` whose output equals ``unet``'s right after wrapping (every injection
        module ends in a zero-initialised projection). ``net.backbone is unet``; its modes, buffers and
        weights are as before wrapping (the probe restores them).

    Raises:
        UNetStructureError: no U-Net found, or the probe failed inside the network (with what the
            probe saw and how to pass a StageSpec).
        ValueError: the network is already wrapped, on the meta device, or takes other than 1, 3 or
            4 input channels.
        OptionError: ``prompt_size`` is neither ``None`` nor an int >= 16.
    """
    prompt_size = check_prompt_size(prompt_size)
    unet = _uncompiled(unet)
    if isinstance(unet, ConStyleUNet) or wrapper_of(unet) is not None:
        raise WrapError("wrap_unet: this network is already wrapped; unwrap_unet it first")
    inject = check_inject(inject)
    example = read_example_inputs(example_inputs) if example_inputs is not None else None
    _check_backbone(unet, in_channels if example is None else in_channels or example.image.shape[1])
    if example is None:
        _check_forward_arguments(unet)
    size = (probe_size, probe_size) if isinstance(probe_size, int) else tuple(probe_size)
    if stages is None:
        stages = stage_spec_for(unet)
    if stages is None:
        stages, infos, note = discover(unet, size, in_channels, example)
    else:
        stages = StageSpec.from_dict(stages)
        infos, note = resolve_spec(unet, stages, size, in_channels, example)
    roles = {i.role for i in infos}
    missing = [t for t in inject if t not in roles]
    if missing:
        hint = ""
        if "decoder" in missing:
            hint = (". The probe finds a decoder stage where a module's output is larger than its input; a decoder "
                    "that upsamples in forward (F.interpolate, pixel_shuffle) has no such module: name the modules "
                    "that run at each decoder scale yourself, stages=StageSpec(encoder=[...], bottleneck=..., "
                    "decoder=['up3', 'up2', 'up1']) with names from net.named_modules()")
        raise UNetStructureError(f"inject: asks for {missing} but the network has no such stage "
                                 f"(found {stages!r}){hint}")
    if prompter is None:
        prompter = default_prompter()
    if not isinstance(prompter, ConStyleV2):
        raise ConStyleTypeError(f"prompter: expected a ConStyleV2, got {type(prompter).__name__}")
    param = next(iter(unet.parameters()), None)
    if param is not None:
        prompter = prompter.to(param.device)
    net = ConStyleUNet(unet, prompter, stages, infos, inject, note,
                       image_key=example.image_key if example is not None else None, prompt_size=prompt_size)
    if param is not None:
        net.injections.to(param.device)
        if param.is_floating_point():
            net.injections.to(param.dtype)
    return net


def unwrap_unet(net: ConStyleUNet) -> nn.Module:
    """Remove the hooks and return the original module (``net.backbone``).

    The backbone keeps its own weights as trained, but the prompt and the injection modules go with the
    hooks: after training with the prompt, the output changes (the backbone learned to expect the
    prompt). To keep what was trained, keep the wrapper (or save it with ``save_pretrained``); unwrap
    to get the bare network back, e.g. to compare with and without ConStyle.
    """
    if not isinstance(net, ConStyleUNet):
        raise ConStyleTypeError(f"unwrap_unet: expected a ConStyleUNet, got {type(net).__name__}")
    net._detach()
    return net.backbone
