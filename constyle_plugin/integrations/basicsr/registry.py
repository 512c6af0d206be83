"""BasicSR integration: the plugin's entries, registered with every flavour of BasicSR, and option checks.

BasicSR comes in three flavours, and each finds ``type: X`` in its own way (a *host*, here):

- **PyPI BasicSR >= 1.3**: registries (``basicsr.utils.registry``). :func:`register` adds the entries;
  ``import constyle_plugin`` arranges for it to run once ``basicsr`` is imported.
- **1.2-era forks** (megvii-research/NAFNet, swz30/Restormer, ...): no registries; ``define_network``
  / ``create_model`` / ``create_dataset`` take the first module in ``_arch_modules`` /
  ``_model_modules`` / ``_dataset_modules`` with an attribute of that name, and losses are attributes
  of ``basicsr.models.losses``. :func:`register_with_fork_module` appends one entries module *at the
  end* of each list (so every name the fork has stays the fork's) and sets the missing loss names;
  ``import constyle_plugin`` arranges for it to run as each of those modules is imported.
- **Vendored registries** (the authors' ConStyle v2 release keeps BasicSR's registry classes in
  top-level ``utils/registry.py``): :func:`register_into` registers into the registries passed in.

Entries: the catalogue's (:mod:`constyle_plugin.integrations.catalogue`); a name the host already has is
never replaced, and ``ConStyleUNet`` then wraps the host's class:

- ARCH: the ``basicsr_archs`` builders, ``ConStyleUNet`` (a backbone found through the same host, wrapped
  by ``wrap_unet``), ``ConStyleV2`` (the prompter), ``ConStyleMoCo`` (its pre-training wrapper), then the
  reference backbones of ``archs``.
- MODEL: ``basicsr_models``, the stage-1 and stage-2 model types; both build on PyPI BasicSR's
  ``BaseModel`` / ``SRModel``, so a 1.2-era fork trains with its own model classes.
- LOSS: ``losses``, the stage-1 losses.
- DATASET: ``datasets``, the core dataset classes as they are (they take BasicSR's ``opt``).

The ``basicsr`` command lives in :mod:`.cli`.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .. import catalogue
from ...core.builder import check_file, prompter_path, wrap_from_options
from ...compat import ensure_basicsr_importable
from ...errors import (CheckpointError, ConStyleRuntimeError, ConStyleTypeError, MissingDependencyError, OptionError, did_you_mean, join_keys)
from ...training.pretrain import ConStyleMoCo
from ...core.prompter import ConStyleV2, default_prompter
from ...core.promptmaps import check_prompt_size
from ...core.stages import check_inject, check_stage_names

__all__ = ["ARCH", "DATASET", "KINDS", "LOSS", "MODEL", "BasicSRHost", "ForkHost", "OptionError", "RegistryHost",
           "available",
           "check_network_options", "current_host", "format_registration_report", "register", "register_here",
           "register_into", "register_with_fork_module", "registration_report"]

ARCH, MODEL, LOSS, DATASET = "ARCH", "MODEL", "LOSS", "DATASET"
_join = join_keys


# ------------------------------------------------------------------------------------------------
# Hosts: where a BasicSR-style code base finds `type: X`
# ------------------------------------------------------------------------------------------------
class BasicSRHost:
    """Name look-ups of one BasicSR flavour."""

    flavour = "?"

    def find(self, kind: str, name: Any) -> Any:
        """The object ``type: name`` builds for ``kind`` (``ARCH``, ``MODEL``, ``LOSS``, ``DATASET``), or None."""
        raise NotImplementedError

    def names(self, kind: str) -> List[str]:
        """The names ``kind`` knows (for error messages)."""
        raise NotImplementedError

    def unknown(self, kind: str, name: Any) -> str:
        known = self.names(kind)
        hint = did_you_mean(name, known, n=3)
        hint = f"; {hint}" if hint else ""
        listed = ", ".join(known) if len(known) <= 40 else ", ".join(known[:40]) + ", ..."
        return f"{name!r} is not a registered {_KIND_WORDS[kind]} ({self.flavour}){hint} (known: {listed})"


_KIND_WORDS = {ARCH: "architecture", MODEL: "model", LOSS: "loss", DATASET: "dataset"}


def _lookup(registry: Any, name: Any) -> Any:
    """The object registered as ``name``, or None (without BasicSR's 'not found' print)."""
    obj_map = getattr(registry, "_obj_map", None)
    if isinstance(obj_map, Mapping):
        return obj_map.get(name)
    try:
        return registry.get(name) if name in registry else None
    except (KeyError, TypeError):
        return None


class RegistryHost(BasicSRHost):
    """BasicSR >= 1.3 registries, or registries of the same class vendored by a code base."""

    def __init__(self, registries: Mapping[str, Any], flavour: str) -> None:
        self.registries = {k: v for k, v in registries.items() if v is not None}
        self.flavour = flavour

    def find(self, kind: str, name: Any) -> Any:
        registry = self.registries.get(kind)
        return None if registry is None or not isinstance(name, str) else _lookup(registry, name)

    def names(self, kind: str) -> List[str]:
        obj_map = getattr(self.registries.get(kind), "_obj_map", None)
        return sorted(obj_map) if isinstance(obj_map, Mapping) else []

    def key(self) -> Tuple[int, ...]:
        return tuple(id(self.registries.get(k)) for k in (ARCH, MODEL, LOSS, DATASET))


_FORK_LISTS = {"basicsr.models.archs": ("_arch_modules", ARCH), "basicsr.models": ("_model_modules", MODEL),
               "basicsr.data": ("_dataset_modules", DATASET)}
_FORK_LOSSES = "basicsr.models.losses"


class ForkHost(BasicSRHost):
    """A 1.2-era fork: ``_arch_modules`` / ``_model_modules`` / ``_dataset_modules`` scans, losses as
    attributes of ``basicsr.models.losses`` (the same order of look-up as the fork's own code)."""

    flavour = "BasicSR 1.2-era fork"

    def _modules(self, kind: str) -> List[types.ModuleType]:
        if kind == LOSS:
            return [importlib.import_module(_FORK_LOSSES)]
        package = next(p for p, (_, k) in _FORK_LISTS.items() if k == kind)
        return list(getattr(importlib.import_module(package), _FORK_LISTS[package][0]))

    def find(self, kind: str, name: Any) -> Any:
        if not isinstance(name, str) or not name.isidentifier():
            return None
        for module in self._modules(kind):
            obj = getattr(module, name, None)
            if obj is not None:
                return obj
        return None

    def names(self, kind: str) -> List[str]:
        found = set()
        for module in self._modules(kind):
            if isinstance(module, _ForkEntries):
                found.update(module.available_names())
                continue
            found.update(n for n, v in vars(module).items()
                         if not n.startswith("_") and isinstance(v, type) and v.__module__ == module.__name__)
        return sorted(found)


def _pypi_registries() -> Dict[str, Any]:
    from basicsr.utils import registry

    return {ARCH: registry.ARCH_REGISTRY, MODEL: registry.MODEL_REGISTRY,
            LOSS: registry.LOSS_REGISTRY, DATASET: registry.DATASET_REGISTRY}


def current_host() -> BasicSRHost:
    """The flavour of the ``basicsr`` importable here: PyPI's registries or a 1.2-era fork's scans.

    Raises ImportError when basicsr is missing or is neither.
    """
    ensure_basicsr_importable()
    try:
        return RegistryHost(_pypi_registries(), "BasicSR registries")
    except ImportError:
        pass
    try:
        archs = importlib.import_module("basicsr.models.archs")
    except ImportError as exc:
        raise MissingDependencyError("basicsr here has neither registries (basicsr.utils.registry, BasicSR >= 1.3) nor "
                          "the module scans of 1.2-era forks (basicsr.models.archs)") from exc
    if not isinstance(getattr(archs, "_arch_modules", None), list):
        raise MissingDependencyError("basicsr.models.archs has no _arch_modules list: not a BasicSR flavour the plugin knows")
    return ForkHost()


def available() -> bool:
    """True when a basicsr of a known flavour imports here."""
    try:
        current_host()
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------
def _build_backbone(host: BasicSRHost, backbone: Any, key: str) -> Any:
    if not isinstance(backbone, Mapping) or "type" not in backbone:
        raise OptionError(key, f"expected a network dict with a `type`, e.g. {{type: NAFNet, width: 32}}, "
                               f"got {backbone!r}")
    opts = dict(backbone)
    arch_type = opts.pop("type")
    if arch_type in ("ConStyleUNet", "ConStyleV2", "ConStyleMoCo"):
        raise OptionError(_join(key, "type"), f"{arch_type!r} cannot be the backbone of a ConStyleUNet")
    cls = host.find(ARCH, arch_type)
    if cls is None:
        raise OptionError(_join(key, "type"), host.unknown(ARCH, arch_type))
    try:
        return cls(**opts)
    except (TypeError, ValueError) as exc:
        raise OptionError(key, f"{arch_type}(...) could not be built: {exc}") from exc


_UNET_OPTIONS = {"type", "backbone", "prompter", "inject", "stages", "probe_size", "in_channels", "prompt_size"}


def check_network_options(opt: Mapping[str, Any], key: str = "", build: bool = True,
                          host: Optional[BasicSRHost] = None) -> None:
    """Check a ``{type: ConStyleUNet, backbone: ..., ...}`` dict; errors name ``key.<option>``.

    With ``build=True`` the backbone is constructed (no forward pass) to check its options and
    that the modules ``stages`` names exist.
    """
    if opt.get("type") != "ConStyleUNet":
        return
    host = host or current_host()
    unknown = sorted(set(opt) - _UNET_OPTIONS)
    if unknown:
        hint = did_you_mean(unknown[0], sorted(_UNET_OPTIONS - {"type"}))
        hint = f"{hint} " if hint else ""
        raise OptionError(_join(key, unknown[0]), f"unknown option of ConStyleUNet; {hint}"
                                                  f"expected {sorted(_UNET_OPTIONS - {'type'})}")
    backbone = opt.get("backbone")
    if not isinstance(backbone, Mapping) or "type" not in backbone:
        raise OptionError(_join(key, "backbone"), "expected a network dict with a `type`, e.g. {type: NAFNet, width: 32}")
    if host.find(ARCH, backbone["type"]) is None:
        raise OptionError(_join(key, "backbone", "type"), host.unknown(ARCH, backbone["type"]))
    try:
        prompter_path(opt.get("prompter"))
        if "inject" in opt:
            check_inject(opt["inject"])
        check_prompt_size(opt.get("prompt_size"))
    except OptionError as exc:
        raise exc.under(key) from None
    if build:
        net = _build_backbone(host, backbone, _join(key, "backbone"))
        if opt.get("stages") is not None:
            try:
                check_stage_names(opt["stages"], net)
            except OptionError as exc:
                raise exc.under(key) from None


def _unet_builder(host_of: Callable[[], BasicSRHost]) -> Callable:
    def ConStyleUNet(backbone: Mapping[str, Any], prompter: Optional[Mapping[str, Any]] = None,
                     inject: Union[str, Sequence[str]] = ("encoder", "bottleneck"),
                     stages: Optional[Mapping[str, Any]] = None,
                     probe_size: Optional[Union[int, Sequence[int]]] = None,
                     in_channels: Optional[int] = None, prompt_size: Optional[int] = None):
        """The ``ConStyleUNet`` architecture: a backbone of this code base wrapped by ``wrap_unet``.

        Options (``network_g: {type: ConStyleUNet, ...}``):
            backbone: the backbone's own options, e.g. ``{type: NAFNet, width: 32}``; found the way this
                code base finds archs, so a BasicSR fork's own ``NAFNet`` is the one wrapped.
            prompter: ``{pretrained: PATH}`` (the authors' .pth or an export), or ``{pretrained: ~}`` /
                ``~`` for the packaged prompter.
            inject: any of ``encoder``, ``bottleneck``, ``decoder``.
            stages: ``{encoder: [...], bottleneck: ..., decoder: [...]}`` (module names), or ``~`` for
                the ready spec of a known family, else discovery by a probe forward.
            probe_size, in_channels: passed to ``wrap_unet``.
            prompt_size: the longer side (pixels) of the image copy the prompter sees; ``~``: full resolution.

        Returns a :class:`constyle_plugin.core.unet.ConStyleUNet`: ``B x C x H x W`` in, the backbone's
        output out. Bad options raise :class:`OptionError` naming the option.
        """
        host = host_of()
        opt = {"type": "ConStyleUNet", "backbone": backbone, "prompter": prompter, "inject": inject,
               "stages": stages, "prompt_size": prompt_size}
        check_network_options(opt, build=False, host=host)
        net = _build_backbone(host, backbone, "backbone")
        return wrap_from_options(net, prompter=prompter, inject=inject, stages=stages, probe_size=probe_size,
                                 in_channels=in_channels, prompt_size=prompt_size)
    return ConStyleUNet


build_constyle_unet = _unet_builder(current_host)


def _named(name: str) -> Callable[[Callable], Callable]:
    """Give a builder function the name it is registered under (BasicSR registers by ``__name__``)."""
    def deco(fn: Callable) -> Callable:
        fn.__name__ = name
        fn.__qualname__ = name
        return fn
    return deco


@_named("ConStyleV2")
def build_prompter(pretrained: Optional[str] = None, frozen: bool = True, num_classes: int = 1000):
    """The ``ConStyleV2`` architecture: the prompter alone (``B x 3 x H x W`` -> ``Prompt``).

    ``pretrained``: a checkpoint path (any layout ``ConStyleV2.from_pretrained`` reads); ``~`` with
    ``frozen: true`` means the packaged prompter, with ``frozen: false`` a fresh, trainable one.
    """
    if pretrained is not None:
        return ConStyleV2.from_pretrained(check_file("pretrained", pretrained, "prompter checkpoint"), frozen=frozen)
    if frozen:
        return default_prompter()
    return ConStyleV2(num_classes=num_classes)


@_named("ConStyleMoCo")
def build_moco(queue_size: int = 65760, momentum: float = 0.999, temperature: float = 0.07,
               normalize: bool = False, enqueue: str = "query", num_classes: int = 1000,
               pretrained: Optional[str] = None, degradation_classes: int = 0):
    """The ``ConStyleMoCo`` architecture: the stage-1 MoCo wrapper (query / key encoder, queue).

    ``pretrained``: start from a checkpoint, either a whole MoCo state (the authors' layout; its
    queue must hold ``queue_size`` negatives) or a prompter-only file (fresh key encoder and queue).
    ``degradation_classes``: 0 (the authors) or the size of a degradation head on ``z2`` (see
    :class:`~constyle_plugin.training.pretrain.ConStyleMoCo`).
    """
    kwargs = dict(momentum=momentum, temperature=temperature, normalize=normalize, enqueue=enqueue,
                  degradation_classes=degradation_classes)
    if pretrained is not None:
        path = check_file("pretrained", pretrained, "checkpoint")
        try:
            return ConStyleMoCo.from_pretrained(path, strict=False, queue_size=queue_size, **kwargs)
        except CheckpointError as exc:
            raise OptionError("pretrained", str(exc)) from exc
    return ConStyleMoCo(queue_size=queue_size, num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# Entries
# ------------------------------------------------------------------------------------------------
class EntryUnavailable(Exception):
    """An entry that cannot exist in this environment (``ConStyleSRModel`` without PyPI BasicSR)."""


# Which kinds of the catalogue each registry reads, in the order they are registered.
KINDS = {ARCH: ("basicsr_archs", "archs"), MODEL: ("basicsr_models",), LOSS: ("losses",), DATASET: ("datasets",)}


def _model(item: catalogue.Entry) -> Callable[[], Any]:
    def load() -> Any:
        try:
            return item.load()
        except ImportError as exc:
            raise EntryUnavailable(
                f"model_type {item.name} builds on PyPI BasicSR >= 1.3 ({exc}). Inside a 1.2-era fork, keep the "
                f"fork's own model_type (NAFNet: ImageRestorationModel, Restormer: ImageCleanModel) and set "
                f"network_g: {{type: ConStyleUNet, backbone: {{type: <the fork's arch>, ...}}}}") from None
    return load


def _loader(item: catalogue.Entry, unet_builder: Callable) -> Callable[[], Any]:
    if item.kind == "basicsr_archs" and item.name == "ConStyleUNet":
        return lambda: unet_builder  # bound to the host's own arch look-up
    return _model(item) if item.kind == "basicsr_models" else item.load


def _entries(unet_builder: Callable) -> Dict[str, List[Tuple[str, Callable[[], Any]]]]:
    """Name -> loader of each entry, per registry, from the catalogue (loaders import lazily)."""
    return {kind: [(item.name, _loader(item, unet_builder)) for k in kinds for item in catalogue.entries(k)]
            for kind, kinds in KINDS.items()}


def _register_into_host(host: RegistryHost, unet_builder: Callable) -> Dict[str, Dict[str, List[str]]]:
    report: Dict[str, Dict[str, List[str]]] = {}
    for kind, entries in _entries(unet_builder).items():
        registry = host.registries.get(kind)
        if registry is None:
            continue
        result = report.setdefault(kind, {"added": [], "kept": [], "already": [], "unavailable": []})
        for name, load in entries:
            try:
                obj = load()
            except (AttributeError, EntryUnavailable, ImportError):
                result["unavailable"].append(name)
                continue
            existing = _lookup(registry, name)
            if existing is not None:
                result["already" if existing is obj else "kept"].append(name)
                continue
            if getattr(obj, "__name__", None) != name:
                raise ConStyleRuntimeError(f"constyle_plugin: entry {name!r} is named {getattr(obj, '__name__', None)!r}")
            registry.register(obj)
            result["added"].append(name)
    return report


def register() -> Dict[str, Dict[str, List[str]]]:
    """Add the plugin's entries to PyPI BasicSR's registries; idempotent; never replaces a host's name.

    Returns, per registry (``ARCH``, ``MODEL``, ``LOSS``, ``DATASET``), the names ``added`` by this
    call, those ``kept`` from the host (a different object was already registered under the name:
    the host's stays), those ``already`` registered by an earlier call, and those ``unavailable``
    here. A basicsr without registries (1.2-era forks) raises ``ImportError``: see
    :func:`register_here`.
    """
    ensure_basicsr_importable()
    return _register_into_host(RegistryHost(_pypi_registries(), "BasicSR registries"), build_constyle_unet)


_VENDORED_BUILDERS: Dict[Tuple[int, ...], Callable] = {}


def register_into(arch: Any = None, model: Any = None, loss: Any = None,
                  dataset: Any = None) -> Dict[str, Dict[str, List[str]]]:
    """Register into registries a code base vendors under its own name (BasicSR's ``Registry`` class
    copied, as the authors' ConStyle v2 release does in ``utils/registry.py``)::

        from utils.registry import ARCH_REGISTRY, MODEL_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY
        from constyle_plugin.integrations.basicsr import register_into
        register_into(arch=ARCH_REGISTRY, model=MODEL_REGISTRY, loss=LOSS_REGISTRY, dataset=DATASET_REGISTRY)

    Registries left out (``None``) are not touched. ``ConStyleUNet`` registered here builds its
    backbone from ``arch``. Idempotent; never replaces a name already registered; returns the same
    report as :func:`register` (models are ``unavailable`` without PyPI BasicSR).
    """
    host = RegistryHost({ARCH: arch, MODEL: model, LOSS: loss, DATASET: dataset}, "vendored registries")
    for kind, registry in host.registries.items():
        if not callable(getattr(registry, "register", None)):
            raise ConStyleTypeError(f"register_into: {kind.lower()}= must be a BasicSR-style Registry "
                            f"(with .register), got {type(registry).__name__}")
    builder = _VENDORED_BUILDERS.get(host.key())
    if builder is None:
        builder = _VENDORED_BUILDERS[host.key()] = _named("ConStyleUNet")(_unet_builder(lambda: host))
    return _register_into_host(host, builder)


# --------------------------------------------------------------------------------- 1.2-era forks
class _ForkEntries(types.ModuleType):
    """The module appended to a fork's look-up list: attributes are the plugin's entries of one kind,
    loaded on first access; any other name is an AttributeError, as in any module."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"constyle_plugin.integrations.basicsr.fork_{kind.lower()}_entries",
                         f"constyle-plugin {_KIND_WORDS[kind]}s, found after the fork's own")
        self._kind = kind

    def _loaders(self) -> Dict[str, Callable[[], Any]]:
        return dict(_entries(_fork_unet_builder)[self._kind])

    def available_names(self) -> List[str]:
        return sorted(self._loaders())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        load = self._loaders().get(name)
        if load is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        try:
            obj = load()
        except EntryUnavailable as exc:
            raise MissingDependencyError(str(exc)) from None
        setattr(self, name, obj)
        return obj


_fork_unet_builder = _named("ConStyleUNet")(_unet_builder(ForkHost))
_FORK_ENTRIES = {kind: _ForkEntries(kind) for kind in (ARCH, MODEL, DATASET)}


def register_with_fork_module(module: types.ModuleType) -> bool:
    """Make the plugin's entries findable through one of a 1.2-era fork's look-up modules
    (``basicsr.models.archs``, ``basicsr.models``, ``basicsr.data``, ``basicsr.models.losses``).

    The entries module goes at the end of the fork's list, so the fork's own names win; losses are
    set only where the fork has no attribute of that name. Idempotent. Returns False for a module
    that is not laid out as a 1.2-era fork's (PyPI BasicSR's ``basicsr.data``, for instance).
    """
    name = module.__name__
    if name in _FORK_LISTS:
        modules = getattr(module, _FORK_LISTS[name][0], None)
        if not isinstance(modules, list):
            return False
        entries = _FORK_ENTRIES[_FORK_LISTS[name][1]]
        if not any(m is entries for m in modules):
            modules.append(entries)
        return True
    if name == _FORK_LOSSES and "basicsr.utils.registry" not in sys.modules:
        for loss_name, load in _entries(_fork_unet_builder)[LOSS]:
            if getattr(module, loss_name, None) is None:
                setattr(module, loss_name, load())
        return True
    return False


def register_here() -> Dict[str, Any]:
    """Register with the basicsr importable here, whichever its flavour (imports it)."""
    host = current_host()
    if isinstance(host, RegistryHost):
        return register()
    done = {}
    for name in (*_FORK_LISTS, _FORK_LOSSES):
        try:
            done[name] = register_with_fork_module(importlib.import_module(name))
        except ImportError:
            done[name] = False
    return {"fork": done}


def registration_report() -> Dict[str, Dict[str, List[str]]]:
    """What the plugin's names resolve to in the basicsr importable here (any flavour).

    Returns ``{kind: {"registered": [...], "kept": [...], "unavailable": [...]}}`` per registry
    (``ARCH``, ``MODEL``, ``LOSS``, ``DATASET``): ``registered``, the plugin's entries that
    ``type: <name>`` builds; ``kept``, names the host already had, so its own class stays;
    ``unavailable``, entries that cannot exist here (the plugin's model classes inside a 1.2-era fork)
    or that are not registered (yet). Raises ImportError when no known basicsr imports here.
    """
    host = current_host()
    builder = build_constyle_unet if isinstance(host, RegistryHost) else _fork_unet_builder
    report: Dict[str, Dict[str, List[str]]] = {}
    for kind, entries in _entries(builder).items():
        slot = report.setdefault(kind, {"registered": [], "kept": [], "unavailable": []})
        for name, load in entries:
            try:
                obj = load()
            except (AttributeError, EntryUnavailable, ImportError):  # ImportError: a fork without a basicsr
                slot["unavailable"].append(name)                     # utility that entry's module imports
                continue
            found = host.find(kind, name)
            slot["registered" if found is obj else "unavailable" if found is None else "kept"].append(name)
    return report


def format_registration_report(report: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    """One line of :func:`registration_report`: ``registered ...; kept from the host ...``."""
    def listed(what: str) -> str:
        parts = [f"{kind.lower()} {', '.join(r[what])}" for kind, r in report.items() if r.get(what)]
        return "; ".join(parts) if parts else "none"
    return f"constyle-plugin registered: {listed('registered')} | kept from the host: {listed('kept')}"
