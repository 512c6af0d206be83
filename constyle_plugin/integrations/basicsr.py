"""BasicSR integration: registry entries, option checks and the ``basicsr`` command.

``register()`` (run by ``import constyle_plugin`` when basicsr is importable) adds to BasicSR's
registries, skipping every name the host code base already has (a BasicSR fork with its own
``NAFNet`` keeps it, and ``ConStyleUNet`` then wraps the fork's class):

- ARCH: ``ConStyleUNet`` (:func:`build_constyle_unet`), ``ConStyleV2`` (the prompter,
  :func:`build_prompter`), ``ConStyleMoCo`` (its pre-training wrapper, :func:`build_moco`), and the
  reference ``NAFNet``, ``Restormer``, ``ConvUNet``.
- MODEL: ``ConStyleV2PretrainModel`` (stage 1) and ``ConStyleSRModel`` (stage 2; BasicSR's
  ``SRModel`` plus what basicsr 1.4.2's cannot do, see :mod:`.basicsr_models`).
- LOSS: ``InfoNCELoss``, ``ContentLoss``, ``StyleLoss``, ``DistillKLLoss``.
- DATASET: ``MixDegradationDataset``, ``ConStylePretrainDataset``.

The command line (``basicsr train|test -opt X.yml ...``) lives in :mod:`.basicsr_cli`; ``main`` is
re-exported here for the console script.
"""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..compat import ensure_basicsr_importable

__all__ = [
    "OptionError",
    "available",
    "build_constyle_unet",
    "build_moco",
    "build_prompter",
    "check_network_options",
    "check_options",
    "main",
    "register",
]

ARCH, MODEL, LOSS, DATASET = "ARCH", "MODEL", "LOSS", "DATASET"


class OptionError(ValueError):
    """A bad entry in a BasicSR options file; ``key`` is its path, e.g. ``network_g.backbone.type``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "OptionError":
        """The same error for an option nested under ``prefix``."""
        return OptionError(_join(prefix, self.key), self.message)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------
# Availability and the registries
# ------------------------------------------------------------------------------------------------
def available() -> bool:
    """True when basicsr imports here and has registries (old forks instantiate by module lookup)."""
    try:
        _registries()
    except ImportError:
        return False
    return True


def _registries() -> Dict[str, Any]:
    ensure_basicsr_importable()
    from basicsr.utils import registry

    return {ARCH: registry.ARCH_REGISTRY, MODEL: registry.MODEL_REGISTRY,
            LOSS: registry.LOSS_REGISTRY, DATASET: registry.DATASET_REGISTRY}


def _lookup(registry: Any, name: str) -> Any:
    """The object registered as ``name``, or None (without BasicSR's 'not found' print)."""
    obj_map = getattr(registry, "_obj_map", None)
    if isinstance(obj_map, Mapping):
        return obj_map.get(name)
    try:
        return registry.get(name) if name in registry else None
    except (KeyError, TypeError):
        return None


def _registered_names(registry: Any) -> List[str]:
    obj_map = getattr(registry, "_obj_map", None)
    return sorted(obj_map) if isinstance(obj_map, Mapping) else []


def _named(name: str) -> Callable[[Callable], Callable]:
    """Give a builder function the name it is registered under (BasicSR registers by ``__name__``)."""
    def deco(fn: Callable) -> Callable:
        fn.__name__ = name
        fn.__qualname__ = name
        return fn
    return deco


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------
def _arch(name: str) -> Any:
    return _lookup(_registries()[ARCH], name)


def _unknown_name(kind: str, name: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{name!r} is not a registered {kind}{hint} (registered: {', '.join(known)})"


def _check_file(key: str, path: Any, what: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(key, f"expected the path of {what}, got {path!r}")
    if not Path(os.path.expanduser(str(path))).is_file():
        raise OptionError(key, f"{what} not found: {str(path)!r}")


def _prompter_path(prompter: Any, key: str) -> Optional[str]:
    """The ``pretrained`` path of a ``prompter:`` option (None: the packaged default)."""
    if prompter is None:
        return None
    if isinstance(prompter, (str, os.PathLike)):
        prompter = {"pretrained": prompter}
    if not isinstance(prompter, Mapping):
        raise OptionError(key, f"expected {{pretrained: PATH}} or {{pretrained: ~}}, got {prompter!r}")
    unknown = sorted(set(prompter) - {"pretrained"})
    if unknown:
        raise OptionError(_join(key, unknown[0]), "unknown option; a prompter takes only `pretrained`")
    path = prompter.get("pretrained")
    if path is not None:
        _check_file(_join(key, "pretrained"), path, "prompter checkpoint")
        path = os.path.expanduser(str(path))
    return path


def _check_inject(inject: Any, key: str) -> Tuple[str, ...]:
    from ..unet import INJECT_TARGETS

    values = (inject,) if isinstance(inject, str) else inject
    if not isinstance(values, (list, tuple)) or not values:
        raise OptionError(key, f"expected a list of {list(INJECT_TARGETS)}, got {inject!r}")
    bad = [v for v in values if v not in INJECT_TARGETS]
    if bad:
        raise OptionError(key, f"{bad[0]!r} is not an injection target; choose from {list(INJECT_TARGETS)}")
    return tuple(values)


def _check_stage_names(stages: Any, backbone: Any, key: str) -> None:
    """Every name in ``stages`` must be a submodule of ``backbone``."""
    from torch import nn

    if not isinstance(stages, Mapping):
        raise OptionError(key, f"expected {{encoder: [...], bottleneck: ..., decoder: [...]}}, got {stages!r}")
    unknown = sorted(set(stages) - {"encoder", "bottleneck", "decoder"})
    if unknown:
        raise OptionError(_join(key, unknown[0]), "unknown key; expected encoder, bottleneck, decoder")
    modules = dict(backbone.named_modules())
    for role in ("encoder", "bottleneck", "decoder"):
        value = stages.get(role)
        if value is None:
            continue
        names = [value] if isinstance(value, str) else list(value)
        for i, name in enumerate(names):
            where = _join(key, role) + ("" if isinstance(value, str) else f"[{i}]")
            if not isinstance(name, str) or not name or not isinstance(modules.get(name), nn.Module):
                close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise OptionError(where, f"{name!r} is not a module of {type(backbone).__name__}{hint}")


def _build_backbone(backbone: Any, key: str) -> Any:
    if not isinstance(backbone, Mapping) or "type" not in backbone:
        raise OptionError(key, f"expected a network dict with a `type`, e.g. {{type: NAFNet, width: 32}}, "
                               f"got {backbone!r}")
    opts = dict(backbone)
    arch_type = opts.pop("type")
    if arch_type in ("ConStyleUNet", "ConStyleV2", "ConStyleMoCo"):
        raise OptionError(_join(key, "type"), f"{arch_type!r} cannot be the backbone of a ConStyleUNet")
    cls = _arch(arch_type)
    if cls is None:
        raise OptionError(_join(key, "type"),
                          _unknown_name("architecture (ARCH_REGISTRY)", arch_type, _registered_names(_registries()[ARCH])))
    try:
        return cls(**opts)
    except (TypeError, ValueError) as exc:
        raise OptionError(key, f"{arch_type}(...) could not be built: {exc}") from exc


def check_network_options(opt: Mapping[str, Any], key: str = "", build: bool = True) -> None:
    """Check a ``{type: ConStyleUNet, backbone: ..., ...}`` dict; errors name ``key.<option>``.

    With ``build=True`` the backbone is constructed (no forward pass) to check its options and
    that the modules ``stages`` names exist.
    """
    if opt.get("type") != "ConStyleUNet":
        return
    allowed = {"type", "backbone", "prompter", "inject", "stages", "probe_size", "in_channels"}
    unknown = sorted(set(opt) - allowed)
    if unknown:
        raise OptionError(_join(key, unknown[0]), f"unknown option of ConStyleUNet; expected {sorted(allowed - {'type'})}")
    backbone = opt.get("backbone")
    if not isinstance(backbone, Mapping) or "type" not in backbone:
        raise OptionError(_join(key, "backbone"), "expected a network dict with a `type`, e.g. {type: NAFNet, width: 32}")
    if _arch(backbone["type"]) is None:
        raise OptionError(_join(key, "backbone", "type"),
                          _unknown_name("architecture (ARCH_REGISTRY)", backbone["type"],
                                        _registered_names(_registries()[ARCH])))
    _prompter_path(opt.get("prompter"), _join(key, "prompter"))
    if "inject" in opt:
        _check_inject(opt["inject"], _join(key, "inject"))
    if build:
        net = _build_backbone(backbone, _join(key, "backbone"))
        if opt.get("stages") is not None:
            _check_stage_names(opt["stages"], net, _join(key, "stages"))


@_named("ConStyleUNet")
def build_constyle_unet(backbone: Mapping[str, Any], prompter: Optional[Mapping[str, Any]] = None,
                        inject: Union[str, Sequence[str]] = ("encoder", "bottleneck"),
                        stages: Optional[Mapping[str, Any]] = None,
                        probe_size: Optional[Union[int, Sequence[int]]] = None,
                        in_channels: Optional[int] = None):
    """The ``ConStyleUNet`` architecture: a backbone from ARCH_REGISTRY wrapped by ``wrap_unet``.

    Options (``network_g: {type: ConStyleUNet, ...}``):
        backbone: the backbone's own options, e.g. ``{type: NAFNet, width: 32}``; built through
            ARCH_REGISTRY, so a BasicSR fork's own ``NAFNet`` is the one wrapped.
        prompter: ``{pretrained: PATH}`` (the authors' .pth or an export), or ``{pretrained: ~}`` /
            ``~`` for the packaged prompter (untrained, with a warning, if none is packaged).
        inject: any of ``encoder``, ``bottleneck``, ``decoder``.
        stages: ``{encoder: [...], bottleneck: ..., decoder: [...]}`` (module names), or ``~`` for
            the ready spec of a known family, else discovery by a probe forward.
        probe_size, in_channels: passed to ``wrap_unet``.

    Returns a :class:`constyle_plugin.unet.ConStyleUNet`: ``B x C x H x W`` in, the backbone's output
    out. Bad options raise :class:`OptionError` naming the option.
    """
    from ..prompter import CheckpointError, ConStyleV2
    from ..unet import UNetStructureError, wrap_unet

    opt = {"type": "ConStyleUNet", "backbone": backbone, "prompter": prompter, "inject": inject,
           "stages": stages}
    check_network_options(opt, build=False)
    net = _build_backbone(backbone, "backbone")
    if stages is not None:
        _check_stage_names(stages, net, "stages")
    path = _prompter_path(prompter, "prompter")
    prompter_net = None
    if path is not None:
        try:
            prompter_net = ConStyleV2.from_pretrained(path)
        except (CheckpointError, OSError) as exc:
            raise OptionError("prompter.pretrained", str(exc)) from exc
    kwargs: Dict[str, Any] = {}
    if probe_size is not None:
        kwargs["probe_size"] = probe_size if isinstance(probe_size, int) else tuple(probe_size)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    try:
        return wrap_unet(net, prompter=prompter_net, stages=stages, inject=_check_inject(inject, "inject"),
                         **kwargs)
    except UNetStructureError as exc:
        raise OptionError("stages", str(exc)) from exc


@_named("ConStyleV2")
def build_prompter(pretrained: Optional[str] = None, frozen: bool = True, num_classes: int = 1000):
    """The ``ConStyleV2`` architecture: the prompter alone (``B x 3 x H x W`` -> ``Prompt``).

    ``pretrained``: a checkpoint path (any layout ``ConStyleV2.from_pretrained`` reads); ``~`` with
    ``frozen: true`` means the packaged prompter, with ``frozen: false`` a fresh, trainable one.
    """
    from ..prompter import ConStyleV2

    if pretrained is not None:
        _check_file("pretrained", pretrained, "prompter checkpoint")
        return ConStyleV2.from_pretrained(os.path.expanduser(str(pretrained)), frozen=frozen)
    if frozen:
        from ..unet import _default_prompter

        return _default_prompter()
    return ConStyleV2(num_classes=num_classes)


@_named("ConStyleMoCo")
def build_moco(queue_size: int = 65760, momentum: float = 0.999, temperature: float = 0.07,
               normalize: bool = False, enqueue: str = "query", num_classes: int = 1000,
               pretrained: Optional[str] = None):
    """The ``ConStyleMoCo`` architecture: the stage-1 MoCo wrapper (query / key encoder, queue).

    ``pretrained``: start from a checkpoint, either a whole MoCo state (the authors' layout; its
    queue must hold ``queue_size`` negatives) or a prompter-only file (fresh key encoder and queue).
    """
    from ..prompter import CheckpointError
    from ..pretrain import ConStyleMoCo

    kwargs = dict(momentum=momentum, temperature=temperature, normalize=normalize, enqueue=enqueue)
    if pretrained is not None:
        _check_file("pretrained", pretrained, "checkpoint")
        try:
            return ConStyleMoCo.from_pretrained(os.path.expanduser(str(pretrained)), strict=False,
                                                queue_size=queue_size, **kwargs)
        except CheckpointError as exc:
            raise OptionError("pretrained", str(exc)) from exc
    return ConStyleMoCo(queue_size=queue_size, num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def _entries() -> Dict[str, List[Tuple[str, Callable[[], Any]]]]:
    """Name -> loader of each entry, per registry (loaders import lazily)."""
    def archs(name: str) -> Callable[[], Any]:
        return lambda: getattr(importlib.import_module("constyle_plugin.archs"), name)

    def losses(name: str) -> Callable[[], Any]:
        return lambda: getattr(importlib.import_module("constyle_plugin.losses"), name)

    def datasets(name: str) -> Callable[[], Any]:
        return lambda: getattr(importlib.import_module("constyle_plugin.datasets"), name)

    def models(name: str) -> Callable[[], Any]:
        return lambda: getattr(importlib.import_module("constyle_plugin.integrations.basicsr_models"), name)

    return {
        ARCH: [("ConStyleUNet", lambda: build_constyle_unet), ("ConStyleV2", lambda: build_prompter),
               ("ConStyleMoCo", lambda: build_moco), ("NAFNet", archs("NAFNet")),
               ("Restormer", archs("Restormer")), ("ConvUNet", archs("ConvUNet"))],
        MODEL: [("ConStyleV2PretrainModel", models("ConStyleV2PretrainModel")),
                ("ConStyleSRModel", models("ConStyleSRModel"))],
        LOSS: [(n, losses(n)) for n in ("InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss")],
        DATASET: [(n, datasets(n)) for n in ("MixDegradationDataset", "ConStylePretrainDataset")],
    }


def register() -> Dict[str, Dict[str, List[str]]]:
    """Add the plugin's entries to BasicSR's registries; idempotent; never replaces a host's name.

    Returns, per registry (``ARCH``, ``MODEL``, ``LOSS``, ``DATASET``), the names ``added`` by this
    call, those ``kept`` from the host (a different object was already registered under the name:
    the host's stays), those ``already`` registered by an earlier call, and those ``unavailable``
    here (``ConStyleSRModel`` in a fork without BasicSR's ``SRModel``). A basicsr without
    registries (old forks) raises ``ImportError``; see :func:`available`.
    """
    registries = _registries()
    report: Dict[str, Dict[str, List[str]]] = {}
    for kind, entries in _entries().items():
        registry = registries[kind]
        result = report.setdefault(kind, {"added": [], "kept": [], "already": [], "unavailable": []})
        for name, load in entries:
            try:
                obj = load()
            except AttributeError:
                result["unavailable"].append(name)
                continue
            existing = _lookup(registry, name)
            if existing is not None:
                result["already" if existing is obj else "kept"].append(name)
                continue
            if getattr(obj, "__name__", None) != name:
                raise RuntimeError(f"constyle_plugin: entry {name!r} is named {getattr(obj, '__name__', None)!r}")
            registry.register(obj)
            result["added"].append(name)
    return report


# ------------------------------------------------------------------------------------------------
# Option checks (run by the `basicsr` command before anything is built)
# ------------------------------------------------------------------------------------------------
_PLUGIN_DATASETS = ("MixDegradationDataset", "ConStylePretrainDataset")
_SAMPLE_ROOTS = {"MixDegradationDataset": ("dataroot_gt", "sample_photos"),
                 "ConStylePretrainDataset": ("dataroot", "sample_classes")}


def check_options(opt: Mapping[str, Any], *, resuming: bool = False) -> None:
    """Check a parsed BasicSR options dict before training / testing starts.

    Checks the model type, every ``network_*`` (type registered; for ``ConStyleUNet``: backbone
    type, prompter file, inject targets, stage module names), the datasets (type registered, data
    folders present), ``path.pretrain_network_*`` files (unless resuming) and, for the plugin's
    models, the optimiser type. Raises :class:`OptionError` naming the first bad option.
    """
    import torch

    registries = _registries()
    model_type = opt.get("model_type")
    if _lookup(registries[MODEL], model_type) is None:
        raise OptionError("model_type", _unknown_name("model (MODEL_REGISTRY)", model_type,
                                                      _registered_names(registries[MODEL])))
    if model_type == "ConStyleV2PretrainModel" and (opt.get("network_g") or {}).get("type") != "ConStyleMoCo":
        raise OptionError("network_g.type", "ConStyleV2PretrainModel trains a ConStyleMoCo (stage 1); "
                                            f"got {(opt.get('network_g') or {}).get('type')!r}")
    for key in [k for k in opt if k.startswith("network_")]:
        net = opt[key]
        if not isinstance(net, Mapping) or "type" not in net:
            raise OptionError(key, "expected a network dict with a `type`")
        if _lookup(registries[ARCH], net["type"]) is None:
            raise OptionError(_join(key, "type"), _unknown_name("architecture (ARCH_REGISTRY)", net["type"],
                                                                _registered_names(registries[ARCH])))
        if net["type"] == "ConStyleUNet":
            check_network_options(net, key)
        elif net["type"] in ("ConStyleV2", "ConStyleMoCo") and net.get("pretrained") is not None:
            _check_file(_join(key, "pretrained"), net["pretrained"], "checkpoint")

    for phase, dataset in (opt.get("datasets") or {}).items():
        key = _join("datasets", phase)
        if not isinstance(dataset, Mapping) or "type" not in dataset:
            raise OptionError(key, "expected a dataset dict with a `type`")
        if _lookup(registries[DATASET], dataset["type"]) is None:
            raise OptionError(_join(key, "type"), _unknown_name("dataset (DATASET_REGISTRY)", dataset["type"],
                                                                _registered_names(registries[DATASET])))
        special = _SAMPLE_ROOTS.get(dataset["type"])
        for name, value in dataset.items():
            if not (name.startswith("dataroot") or name == "meta_info_file") or value is None:
                continue
            if special and name == special[0] and value == special[1]:
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.path.exists(os.path.expanduser(str(value))):
                raise OptionError(_join(key, name), f"not found: {value!r} (relative paths are "
                                                    f"relative to the current folder, {os.getcwd()})")

    if not resuming:
        for name, value in (opt.get("path") or {}).items():
            if name.startswith("pretrain_network") and value is not None:
                _check_file(_join("path", name), value, "checkpoint")

    if model_type in ("ConStyleSRModel", "ConStyleV2PretrainModel") and opt.get("is_train"):
        for name, value in (opt.get("train") or {}).items():
            if name.startswith("optim_") and isinstance(value, Mapping):
                optim = value.get("type")
                if not isinstance(getattr(torch.optim, str(optim), None), type):
                    raise OptionError(_join("train", name, "type"), f"{optim!r} is not an optimiser of torch.optim")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``basicsr`` console script (see :mod:`.basicsr_cli`)."""
    from .basicsr_cli import main as cli_main

    return cli_main(argv)
