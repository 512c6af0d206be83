"""A wrapped U-Net as a folder: ``config.json`` (how it was wrapped) and ``model.safetensors``.

``save_pretrained(net, "run/")`` writes

- ``model.safetensors``: the backbone and the injection modules (every child of the wrapper but
  the prompter; the prompter too with ``include_prompter=True``);
- ``model_ema.safetensors``: the same for the EMA copy, where the run kept one;
- ``config.json``: the backbone's class (and, for the reference archs and registered types, its
  constructor arguments), the StageSpec and each hook point as the probe measured it, the inject
  targets, the prompter's identity (SHA-256 of its weights, where it came from, whether it is
  stored), and the size and SHA-256 of each weights file.

The files are written into a folder beside ``directory`` and swapped in as a whole
(:func:`~constyle_plugin.files.replace_folder`), so a save that fails half-way leaves the previous one as it
was. ``load_pretrained(dir, backbone=...)`` checks ``config.json`` (each hand-edited mistake named in
one line), rebuilds the wrapper on the given (or a rebuilt) backbone without a probe, re-attaches the
prompter in the dtype it was saved in, checks its hash and loads with a strict key check whose error
names the mismatch in one line. The hook points are ``stage_info``; the StageSpec is derived from it.

Core module: torch, the standard library and safetensors only.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import (CheckpointError, ConStyleError, ConStyleTypeError, MissingFileError, OptionError, WrapError,
                      did_you_mean)
from ..files import interrupted_save, replace_folder
from .discovery import meta_tensor
from .init_args import init_args
from .prompter import ConStyleV2, default_prompter, default_prompter_path
from .stages import INJECT_TARGETS, LAYOUTS, StageInfo, StageSpec, check_inject, check_stage_names

__all__ = ["CARRIED_CONFIG", "CONFIG_NAME", "EMA_WEIGHTS_NAME", "FORMAT", "PrompterMismatchError", "WEIGHTS_NAME",
           "carried_config", "is_pretrained_dir", "load_carried", "load_pretrained", "packaged_prompter_sha256",
           "prompter_sha256", "read_config", "save_pretrained", "stage_infos"]

PathLike = Union[str, os.PathLike]
FORMAT = "constyle_plugin.ConStyleUNet/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "model_ema.safetensors"
REFERENCE_ARCHS = "constyle_plugin.archs"


class PrompterMismatchError(CheckpointError):
    """The prompter given to :func:`load_pretrained` is not the one the net was trained with."""


# ------------------------------------------------------------------------------------------ identity
def _state_sha256(state: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        if tensor.is_floating_point():
            tensor = tensor.float()  # the same identity for an fp32 and a .half()'d copy's fp32 origin
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def prompter_sha256(prompter: ConStyleV2) -> str:
    """SHA-256 of a prompter's weights and buffers (names, shapes and values; floats as fp32)."""
    return _state_sha256(prompter.state_dict())


_PACKAGED_SHA: Dict[str, str] = {}


def packaged_prompter_sha256(dtype: torch.dtype = torch.float32) -> Optional[str]:
    """:func:`prompter_sha256` of the packaged prompter converted to ``dtype`` (``None`` when this
    installation has none)."""
    path = default_prompter_path()
    if path is None:
        return None
    key = f"{path}:{path.stat().st_mtime_ns}:{dtype}"
    if key not in _PACKAGED_SHA:
        _PACKAGED_SHA[key] = prompter_sha256(ConStyleV2.from_pretrained(path).to(dtype))
    return _PACKAGED_SHA[key]


def _dtype_of(module: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the module's first floating-point parameter."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _dtype_from(name: Any, where: str) -> Optional[torch.dtype]:
    if name is None:
        return None
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{where}: dtype {name!r} is not a floating-point torch dtype (float32, float16, "
                              f"bfloat16)")
    return dtype


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ key groups
def _prompter_child(net: nn.Module) -> str:
    return next(name for name, child in net.named_children() if isinstance(child, ConStyleV2))


def _backbone_child(net: nn.Module) -> str:
    return next(name for name, child in net.named_children() if child is net.backbone)


def _weights(net: nn.Module, include_prompter: bool, prompter_group: str) -> Dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
            if include_prompter or k.split(".", 1)[0] != prompter_group}


# ------------------------------------------------------------------------------------------ the backbone
def _backbone_record(backbone: nn.Module, backbone_config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    cls = type(backbone)
    record: Dict[str, Any] = {"class": cls.__qualname__, "module": cls.__module__, "kwargs": init_args(backbone)}
    if backbone_config is not None:  # a registered type: {type: NAFNet, registry: basicsr, **kwargs}
        options = dict(backbone_config)
        record["registry"] = options.pop("registry", None)
        record["type"] = options.pop("type", cls.__name__)
        record["kwargs"] = json.loads(json.dumps(options))
    return record


def _build_backbone(record: Mapping[str, Any], source: str) -> nn.Module:
    module, name, kwargs = record.get("module", ""), record.get("class", "?"), record.get("kwargs")
    registry = record.get("registry")
    if registry in ("basicsr", "mmengine") and kwargs is not None:
        from ..runs import run_reader

        if registry == "basicsr":
            return run_reader("basicsr").build_arch(record.get("type", name), dict(kwargs), source)
        return run_reader("mmengine").build_model({"type": record.get("type", name), **kwargs})
    if module.startswith(REFERENCE_ARCHS) and kwargs is not None:
        return getattr(importlib.import_module(module), name)(**kwargs)
    raise CheckpointError(
        f"{source}: the backbone is {name} (module {module}), which is neither a reference arch of "
        f"constyle_plugin.archs nor a registered type built from recorded options; pass the network: "
        f"from_pretrained(dir, backbone={name}(...))")


# ------------------------------------------------------------------------------------------ save
def _describe_prompter(prompter: ConStyleV2) -> Tuple[str, str, bool]:
    """SHA-256, source and whether it is the packaged prompter (in the dtype it runs in)."""
    sha = prompter_sha256(prompter)
    source = getattr(prompter, "source", None)
    packaged = sha == packaged_prompter_sha256(_dtype_of(prompter) or torch.float32)
    return sha, "packaged" if packaged else str(source) if source else "unrecorded", packaged


def save_pretrained(net: nn.Module, directory: PathLike, *, include_prompter: Optional[bool] = None,
                    ema: Optional[Union[nn.Module, Mapping[str, Tensor]]] = None,
                    backbone_config: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``net`` into ``directory`` (created if needed): ``config.json`` + ``model.safetensors``.

    Args:
        net: a wrapped U-Net (:func:`~constyle_plugin.wrap_unet`), in any floating dtype.
        include_prompter: store the prompter's weights too. ``None`` (default): only when it is not the
            packaged prompter, so that the folder always loads on its own; ``False`` with another prompter
            records only its SHA-256 and source, and warns that loading will need it passed.
        ema: the run's EMA copy (a ConStyleUNet or its ``state_dict()``), written as
            ``model_ema.safetensors``.
        backbone_config: for a backbone built by a trainer's registry, its options
            (``{"type": "NAFNet", "registry": "basicsr", **kwargs}``), so that it can be rebuilt
            without the user's code.

    Returns the folder. The files are written into a folder beside it and swapped in as a whole, so a
    save that fails half-way (a full disk) leaves the previous save loadable; other files in the
    folder are kept (see :func:`~constyle_plugin.files.replace_folder`).
    """
    if not isinstance(getattr(net, "stages", None), StageSpec) or not hasattr(net, "stage_info"):
        raise ConStyleTypeError(f"save_pretrained: expected a ConStyleUNet (wrap_unet(...)), got {type(net).__name__}")
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConStyleError(f"{directory}: exists and is not a folder")
    prompter_group = _prompter_child(net)
    sha, source, packaged = _describe_prompter(net.prompter)
    if include_prompter is None:
        include_prompter = not packaged
    elif not include_prompter and not packaged:
        warnings.warn(f"save_pretrained: {directory}: include_prompter=False with a prompter that is not the "
                      f"packaged one (source: {source}): the folder records only its SHA-256, and loading it "
                      f"needs that prompter passed (from_pretrained(dir, prompter=...)); leave include_prompter "
                      f"unset (or True) to store it so that the folder loads on its own", UserWarning, stacklevel=2)
    model_state = _weights(net, include_prompter, prompter_group)
    variants: List[Tuple[str, str, Mapping[str, Tensor]]] = [("model", WEIGHTS_NAME, model_state)]
    if ema is not None:
        ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
        ema_state = {k: v.detach().cpu().contiguous() for k, v in ema_state.items()
                     if include_prompter or k.split(".", 1)[0] != prompter_group}
        if set(ema_state) != set(variants[0][2]):
            raise ConStyleError(f"save_pretrained: the EMA copy's keys differ from the net's "
                                f"({len(set(ema_state) ^ set(variants[0][2]))} keys in one but not the other)")
        variants.append(("ema", EMA_WEIGHTS_NAME, ema_state))
    config = {
        "format": FORMAT,
        "backbone": _backbone_record(net.backbone, backbone_config),
        "backbone_attribute": _backbone_child(net),
        "dtype": _dtype_name(_dtype_of(net.backbone)),
        "stage_info": [{"role": i.role, "name": i.name, "scale": i.scale, "channels": i.channels,
                        "output_index": i.output_index, "layout": i.layout} for i in net.stage_info],
        "inject": list(net.inject),
        "image_key": getattr(net, "image_key", None),
        "prompt_size": net.prompt_size,
        "probe_note": net.probe_note,
        "prompter": {"sha256": sha, "source": source, "stored": include_prompter, "key_prefix": prompter_group,
                     "num_classes": int(net.prompter.classifier[-1].out_features),
                     "dtype": _dtype_name(_dtype_of(net.prompter))},
        "weights": {},
        "torch": torch.__version__,
    }

    def write(folder: Path) -> None:
        for variant, name, state in variants:
            save_file(dict(state), str(folder / name), metadata={"format": FORMAT})
            config["weights"][variant] = {"file": name, "bytes": (folder / name).stat().st_size,
                                          "sha256": file_sha256(folder / name)}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    replace_folder(directory, write, owned=(WEIGHTS_NAME, EMA_WEIGHTS_NAME, CONFIG_NAME), last=CONFIG_NAME)
    return directory


# ------------------------------------------------------------------------------------------ load
def is_pretrained_dir(path: PathLike) -> bool:
    """True for a folder that :func:`save_pretrained` wrote (it holds ``config.json`` of this format)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        return False
    try:
        return json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")).get("format") == FORMAT
    except (ValueError, OSError):
        return False


CONFIG_KEYS = ("format", "backbone", "backbone_attribute", "dtype", "stages", "stage_info", "inject", "image_key",
               "prompt_size", "probe_note", "prompter", "weights", "torch")
REQUIRED_KEYS = ("backbone", "stage_info", "inject", "prompter", "weights")
STAGE_INFO_KEYS = ("role", "name", "scale", "channels", "output_index", "layout")


def read_config(directory: PathLike) -> Dict[str, Any]:
    """``config.json`` of a saved net, checked: every field known, the hook points (``stage_info``)
    well-formed, ``inject`` naming targets that have a hook point, a ``stages`` field (older saves)
    agreeing with ``stage_info``. Each mistake raises :class:`CheckpointError` naming it in one line."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if directory.is_file():
        raise CheckpointError(f"{directory}: is a file; pass the folder save_pretrained wrote")
    if not path.is_file():
        aside = interrupted_save(directory)
        if aside is not None:
            raise MissingFileError(f"{directory}: not found; a save into it was stopped between its two renames, "
                                    f"and the previous save is in {aside}: rename that folder to {directory.name} "
                                    f"to load it (or save again)")
        raise MissingFileError(f"{path}: not found; pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{path}: not a saved ConStyleUNet (format {found!r}, expected {FORMAT!r})")
    _check_config(config, str(path))
    return config


def _unknown_field(where: str, name: str, choices: Sequence[str]) -> CheckpointError:
    hint = did_you_mean(name, choices)
    return CheckpointError(f"{where}: unknown field {name!r}; {hint + ' ' if hint else ''}"
                           f"expected {', '.join(choices)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stage_infos(config: Mapping[str, Any], where: str) -> List[StageInfo]:
    """The hook points recorded in ``config["stage_info"]``, each field checked."""
    entries = config["stage_info"]
    if not isinstance(entries, list) or not entries:
        raise CheckpointError(f"{where}: stage_info: expected a list of hook points ({{role, name, scale, "
                              f"channels, output_index, layout}}), got {entries!r}")
    infos = []
    for i, entry in enumerate(entries):
        key = f"{where}: stage_info[{i}]"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{key}: expected {{role, name, scale, channels, ...}}, got {entry!r}")
        unknown = [k for k in entry if k not in STAGE_INFO_KEYS]
        if unknown:
            raise _unknown_field(key, unknown[0], STAGE_INFO_KEYS)
        missing = [k for k in STAGE_INFO_KEYS[:4] if k not in entry]
        if missing:
            raise CheckpointError(f"{key}: missing field(s) {missing}")
        role, name, layout = entry["role"], entry["name"], entry.get("layout", "BCHW")
        checks = [
            ("role", role in INJECT_TARGETS, f"one of {list(INJECT_TARGETS)}", did_you_mean(role, INJECT_TARGETS)),
            ("name", isinstance(name, str) and bool(name), "a module name", ""),
            ("scale", _is_int(entry["scale"]), "an integer (the stage is 1/2**scale of the input)", ""),
            ("channels", _is_int(entry["channels"]) and entry["channels"] > 0, "a positive integer", ""),
            ("output_index", entry.get("output_index") is None or (_is_int(entry["output_index"])
                                                                   and entry["output_index"] >= 0),
             "null or the index of the feature in a tuple output", ""),
            ("layout", layout in LAYOUTS, f"one of {list(LAYOUTS)}", did_you_mean(layout, LAYOUTS)),
        ]
        for field, ok, wanted, hint in checks:
            if not ok:
                raise CheckpointError(f"{key}.{field}: expected {wanted}, got {entry.get(field)!r}"
                                      f"{'; ' + hint if hint else ''}")
        infos.append(StageInfo(**entry))
    if sum(info.role == "bottleneck" for info in infos) > 1:
        raise CheckpointError(f"{where}: stage_info: more than one bottleneck hook point")
    return infos


def _check_config(config: Mapping[str, Any], where: str) -> None:
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise _unknown_field(where, unknown[0], CONFIG_KEYS)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{where}: missing field(s) {missing}")
    infos = stage_infos(config, where)
    try:
        inject = check_inject(config["inject"])
    except OptionError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    roles = {info.role for info in infos}
    absent = [target for target in inject if target not in roles]
    if absent:
        raise CheckpointError(f"{where}: inject: asks for {absent[0]!r}, but stage_info has no {absent[0]} hook point")
    if config.get("stages") is not None:  # written by older versions beside stage_info, which the hooks follow
        derived = StageSpec.from_stage_info(infos).to_dict()
        try:
            recorded = StageSpec.from_dict(config["stages"]).to_dict()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: stages: {exc}") from None
        for role in ("encoder", "bottleneck", "decoder"):
            if recorded[role] != derived[role]:
                raise CheckpointError(
                    f"{where}: stages.{role} is {recorded[role]!r} but stage_info says {derived[role]!r}; the hook "
                    f"points are stage_info (stages is derived from it): edit stage_info, and delete stages")
    _dtype_from(config.get("dtype"), f"{where}: dtype")
    if isinstance(config["prompter"], dict):
        _dtype_from(config["prompter"].get("dtype"), f"{where}: prompter.dtype")


def _read_weights(directory: Path, record: Mapping[str, Any]) -> Dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / record["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: not found, but {CONFIG_NAME} records it")
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise CheckpointError(f"{path}: {size} bytes, but {CONFIG_NAME} records {record.get('bytes')}: truncated, "
                              f"damaged or from another save; save the net again")
    if record.get("sha256") and file_sha256(path) != record["sha256"]:
        raise CheckpointError(f"{path}: its SHA-256 differs from the one {CONFIG_NAME} records: damaged or from "
                              f"another save; save the net again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _resolve_prompter(prompter: Any, stored: Optional[Dict[str, Tensor]], num_classes: int) -> Tuple[ConStyleV2, str]:
    if isinstance(prompter, ConStyleV2):
        return prompter, "the prompter passed"
    if prompter is None and stored is not None:
        model = ConStyleV2(num_classes=num_classes)
        model.load_prompter_state(stored, source=WEIGHTS_NAME)
        return model.freeze(), "the stored prompter"
    if prompter is None or prompter == "packaged":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*prompter is untrained.*")
            return default_prompter(), "the packaged prompter"
    if isinstance(prompter, (str, os.PathLike)):
        return ConStyleV2.from_pretrained(prompter), f"the prompter {prompter}"
    raise ConStyleTypeError(f"prompter: expected None, 'packaged', a path or a ConStyleV2, got {type(prompter).__name__}")


def _mismatch_line(where: str, net: nn.Module, state: Mapping[str, Tensor], expected: List[str],
                   backbone_group: str) -> Optional[str]:
    own = net.state_dict()
    expected_set = set(expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected_set]
    misshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or misshaped):
        return None
    name = type(net.backbone).__name__

    def group(k: str) -> str:
        return k.split(".", 1)[0]

    def modules(keys: List[str]) -> List[str]:
        return sorted({".".join(k.split(".")[:2]) for k in keys})

    if misshaped:
        k = misshaped[0]
        return (f"{where} does not fit this {name}: other width or channel counts: {k} is "
                f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the net"
                f"{f' (and {len(misshaped) - 1} more mis-shaped)' if len(misshaped) > 1 else ''}")
    injected_missing = [k for k in missing if group(k) != backbone_group]
    injected_extra = [k for k in unexpected if group(k) != backbone_group]
    if injected_missing or injected_extra:
        have = modules([k for k in state if group(k) != backbone_group])
        want = modules([k for k in expected if group(k) != backbone_group])
        return (f"{where} does not fit this {name}: other inject targets or StageSpec: the file has "
                f"{', '.join(have) or 'none'}; the net has {', '.join(want) or 'none'}")
    first = (missing or unexpected)[0]
    return (f"{where} does not fit this {name}: another backbone: {len(missing)} key(s) missing, "
            f"{len(unexpected)} unexpected, first: {first}")


def load_pretrained(net_class: Callable[..., nn.Module], directory: PathLike, backbone: Optional[nn.Module] = None,
                    prompter: Any = None, *, ema: Optional[bool] = None, check_prompter: bool = True,
                    map_location: Union[str, torch.device, None] = None) -> nn.Module:
    """Build the net :func:`save_pretrained` wrote into ``directory``, weights loaded, in eval mode.

    Args:
        net_class: the wrapper to build (:class:`~constyle_plugin.ConStyleUNet`; its ``from_pretrained``
            passes itself).
        directory: the saved folder.
        backbone: a fresh instance of the backbone's class (the user's own class), in the dtype wanted;
            ``None`` rebuilds a reference arch or a registered type from the recorded constructor
            arguments, in the saved dtype. Not on the meta device (refused).
        prompter: ``None`` (the stored one if the folder holds it, else the packaged one),
            ``"packaged"``, a checkpoint path, or a :class:`ConStyleV2`; converted (a copy of a given one) to the
            dtype the saved net's prompter had.
        ema: load ``model_ema.safetensors`` (``None``: when the folder has it).
        check_prompter: refuse a prompter whose SHA-256 differs from the recorded one.
        map_location: device for the net (default: the backbone's device, else the CPU).

    Returns a :class:`ConStyleUNet` whose output equals the saved net's exactly.

    Raises:
        PrompterMismatchError: the prompter is not the one the net was trained with.
        WrapError: a backbone on the meta device.
        CheckpointError: a hand-edited ``config.json`` mistake; a missing, truncated or mismatched file; the
            key check names the mismatch (other width, other inject targets or StageSpec, another backbone).
            Each in one line.
    """
    directory = Path(directory)
    config = read_config(directory)
    where = str(directory / CONFIG_NAME)
    if backbone is not None:
        meta = meta_tensor(backbone)
        if meta is not None:
            raise WrapError(
                f"from_pretrained: the backbone {type(backbone).__name__} has tensors on the meta device ({meta!r}, "
                f"...): the prompter would be moved there and lost at to_empty(), and tensors the folder does not "
                f"store would hold uninitialised memory. Pass a materialised instance ({type(backbone).__name__}(...) "
                f"on a real device); its weights are replaced by the folder's anyway.")
    files = config["weights"]
    use_ema = ("ema" in files) if ema is None else ema
    if use_ema and "ema" not in files:
        raise CheckpointError(f"{where}: no EMA weights were saved ({', '.join(files)} only)")
    variant = files["ema" if use_ema else "model"]
    state = _read_weights(directory, variant)

    record = config["prompter"]
    prefix = record.get("key_prefix", "prompter") + "."
    stored = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if record.get("stored") else None
    prompter_net, which = _resolve_prompter(prompter, stored, int(record.get("num_classes", 1000)))
    dtype = _dtype_from(record.get("dtype"), where)
    if dtype is not None and _dtype_of(prompter_net) not in (None, dtype):  # restored in the dtype it ran in
        if prompter_net is prompter:
            prompter_net = copy.deepcopy(prompter_net)  # the caller's prompter stays as it is
        prompter_net = prompter_net.to(dtype)
    sha = prompter_sha256(prompter_net)
    if check_prompter and record.get("sha256") and sha != record["sha256"]:
        raise PrompterMismatchError(
            f"{where}: the net was trained with the prompter of SHA-256 {record['sha256'][:16]}... "
            f"(source: {record.get('source')}), but {which} has {sha[:16]}...; pass that prompter "
            f"(prompter=PATH), save with include_prompter=True, or check_prompter=False to load anyway")

    if backbone is None:
        backbone = _build_backbone(config["backbone"], where)
        saved_dtype = _dtype_from(config.get("dtype"), where)
        if saved_dtype is not None:
            backbone.to(saved_dtype)
    infos = stage_infos(config, where)
    stages = StageSpec.from_stage_info(infos)
    check_stage_names(stages, backbone, key=f"{where}: stage_info", error=CheckpointError)
    param = next(iter(backbone.parameters()), None)
    device = torch.device(map_location) if map_location is not None else (
        param.device if param is not None else torch.device("cpu"))
    net = net_class(backbone, prompter_net, stages, infos, tuple(config["inject"]), config.get("probe_note", ""))
    if config.get("image_key") is not None:
        net.image_key = config["image_key"]
    try:
        net.prompt_size = config.get("prompt_size")
    except OptionError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if param is not None and param.is_floating_point():
        for child in net.children():  # the injection modules take the backbone's dtype, as in wrap_unet
            if child is not backbone and child is not prompter_net:
                child.to(param.dtype)

    own = net.state_dict()
    expected = [k for k in own if record.get("stored") or not k.startswith(prefix)]
    problem = _mismatch_line(str(directory / variant["file"]), net, state, expected, config.get(
        "backbone_attribute", "backbone"))
    if problem is not None:
        raise CheckpointError(problem)
    prompter_state = {k: v for k, v in own.items() if k.startswith(prefix)}
    net.load_state_dict({**prompter_state, **state}, strict=True)
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------ carried configs
# The key under which a trainer checkpoint written from a saved folder (constyle convert --to) carries that
# folder's config.json (BasicSR: top level; MMEngine: in ``meta``), so that it converts and restores again
# without the training config: both trainers ignore the extra entry.
CARRIED_CONFIG = "constyle_pretrained"


def carried_config(checkpoint: Any) -> Optional[Dict[str, Any]]:
    """The saved folder's config.json a trainer checkpoint (as loaded) carries, or None."""
    if not isinstance(checkpoint, Mapping):
        return None
    meta = checkpoint.get("meta")
    found = checkpoint.get(CARRIED_CONFIG, meta.get(CARRIED_CONFIG) if isinstance(meta, Mapping) else None)
    return dict(found) if isinstance(found, Mapping) and found.get("format") == FORMAT else None


def load_carried(net_class: Callable[..., nn.Module], config: Mapping[str, Any], state: Mapping[str, Tensor],
                 where: str) -> nn.Module:
    """The net (of ``net_class``) a carried ``config`` describes with ``state`` (a full ``state_dict``)
    loaded, through :func:`load_pretrained` on a temporary folder, so that it is checked as a saved
    folder is."""
    import tempfile

    from safetensors.torch import save_file

    config = dict(config)
    record = config.get("prompter") if isinstance(config.get("prompter"), Mapping) else {}
    prefix = str(record.get("key_prefix", "prompter")) + "."
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()
               if record.get("stored") or not k.startswith(prefix)}
    with tempfile.TemporaryDirectory(prefix="constyle-carried-") as tmp:
        path = Path(tmp) / WEIGHTS_NAME
        save_file(weights, str(path), metadata={"format": FORMAT})
        config["weights"] = {"model": {"file": WEIGHTS_NAME, "bytes": path.stat().st_size,
                                       "sha256": file_sha256(path)}}
        (Path(tmp) / CONFIG_NAME).write_text(json.dumps(config), encoding="utf-8")
        try:
            return load_pretrained(net_class, tmp, ema=False)
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: the config.json it carries: {exc}".replace(tmp, "<carried>")) from None
