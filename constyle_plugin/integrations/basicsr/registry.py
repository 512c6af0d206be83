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

Entries (a name the host already has is never replaced; ``ConStyleUNet`` then wraps the host's class):

- ARCH: ``ConStyleUNet`` (a backbone found through the same host, wrapped by ``wrap_unet``),
  ``ConStyleV2`` (the prompter), ``ConStyleMoCo`` (its pre-training wrapper), and the reference
  ``NAFNet``, ``Restormer``, ``ConvUNet``, ``MAXIM``.
- MODEL: ``ConStyleV2PretrainModel`` (stage 1) and ``ConStyleSRModel`` (stage 2); both build on
  PyPI BasicSR's ``BaseModel`` / ``SRModel``, so a 1.2-era fork trains with its own model classes.
- LOSS: ``InfoNCELoss``, ``ContentLoss``, ``StyleLoss``, ``DistillKLLoss``.
- DATASET: ``MixDegradationDataset``, ``ConStylePretrainDataset``, and the all-in-one benchmark data
  ``AllInOneTrainDataset``, ``AllInOneTestDataset``.

The ``basicsr`` command lives in :mod:`.cli`.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ...core.builder import check_file, prompter_path, wrap_from_options
from ...compat import ensure_basicsr_importable
from ...errors import CheckpointError, OptionError, did_you_mean, join_keys
from ...training.pretrain import ConStyleMoCo
from ...core.prompter import ConStyleV2, default_prompter
from ...core.stages import check_inject, check_stage_names

__all__ = [
    "ARCH", "DATASET", "LOSS", "MODEL",
    "BasicSRHost", "ForkHost", "OptionError", "OptionWarning", "RegistryHost",
    "available", "check_call_options", "check_network_options", "check_option_keys", "check_options",
    "check_training_numbers",
    "current_host", "format_registration_report", "register", "register_here",
    "register_into", "register_with_fork_module", "registration_report",
]

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
        raise ImportError("basicsr here has neither registries (basicsr.utils.registry, BasicSR >= 1.3) nor "
                          "the module scans of 1.2-era forks (basicsr.models.archs)") from exc
    if not isinstance(getattr(archs, "_arch_modules", None), list):
        raise ImportError("basicsr.models.archs has no _arch_modules list: not a BasicSR flavour the plugin knows")
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


_UNET_OPTIONS = {"type", "backbone", "prompter", "inject", "stages", "probe_size", "in_channels"}


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
                     in_channels: Optional[int] = None):
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

        Returns a :class:`constyle_plugin.core.unet.ConStyleUNet`: ``B x C x H x W`` in, the backbone's
        output out. Bad options raise :class:`OptionError` naming the option.
        """
        host = host_of()
        opt = {"type": "ConStyleUNet", "backbone": backbone, "prompter": prompter, "inject": inject,
               "stages": stages}
        check_network_options(opt, build=False, host=host)
        net = _build_backbone(host, backbone, "backbone")
        return wrap_from_options(net, prompter=prompter, inject=inject, stages=stages, probe_size=probe_size,
                                 in_channels=in_channels)
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


def _from(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


def _model(name: str) -> Callable[[], Any]:
    def load() -> Any:
        try:
            module = importlib.import_module("constyle_plugin.integrations.basicsr.models")
        except ImportError as exc:
            raise EntryUnavailable(
                f"model_type {name} builds on PyPI BasicSR >= 1.3 ({exc}). Inside a 1.2-era fork, keep the "
                f"fork's own model_type (NAFNet: ImageRestorationModel, Restormer: ImageCleanModel) and set "
                f"network_g: {{type: ConStyleUNet, backbone: {{type: <the fork's arch>, ...}}}}") from None
        return getattr(module, name)
    return load


def _entries(unet_builder: Callable) -> Dict[str, List[Tuple[str, Callable[[], Any]]]]:
    """Name -> loader of each entry, per registry (loaders import lazily)."""
    archs = "constyle_plugin.archs"
    return {
        ARCH: [("ConStyleUNet", lambda: unet_builder), ("ConStyleV2", lambda: build_prompter),
               ("ConStyleMoCo", lambda: build_moco),
               *[(n, _from(archs, n)) for n in ("NAFNet", "Restormer", "ConvUNet", "MAXIM")]],
        MODEL: [(n, _model(n)) for n in ("ConStyleV2PretrainModel", "ConStyleSRModel")],
        LOSS: [(n, _from("constyle_plugin.training.losses", n))
               for n in ("InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss")],
        DATASET: [*[(n, _from("constyle_plugin.data.datasets", n))
                    for n in ("MixDegradationDataset", "ConStylePretrainDataset")],
                  *[(n, _from("constyle_plugin.data.benchmark_datasets", n))
                    for n in ("AllInOneTrainDataset", "AllInOneTestDataset")]],
    }


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
                raise RuntimeError(f"constyle_plugin: entry {name!r} is named {getattr(obj, '__name__', None)!r}")
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
            raise TypeError(f"register_into: {kind.lower()}= must be a BasicSR-style Registry "
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
            raise ImportError(str(exc)) from None
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


# ------------------------------------------------------------------------------------------------
# Option checks (run by the `basicsr` command before anything is built)
# ------------------------------------------------------------------------------------------------
_SAMPLE_ROOTS = {"MixDegradationDataset": ("dataroot_gt", "sample_photos"),
                 "ConStylePretrainDataset": ("dataroot", "sample_classes")}


def point_sample_datasets(opt: Mapping[str, Any]) -> None:
    """Give the plugin's datasets that read the offline sample photos (``dataroot_gt: sample_photos``,
    ``dataroot: sample_classes`` or none) a ``sample_dir`` in the run's folder, where they are
    exported at first use (``experiments/<name>/sample_photos``, or ``results/<name>/...``)."""
    folder = opt["path"].get("experiments_root") or opt["path"].get("results_root")
    for dataset in (opt.get("datasets") or {}).values():
        if not isinstance(dataset, dict):
            continue
        root_key, special = _SAMPLE_ROOTS.get(dataset.get("type"), (None, None))
        if root_key and dataset.get(root_key) in (None, special) and not dataset.get("sample_dir"):
            dataset["sample_dir"] = os.path.join(folder, special)


class OptionWarning(UserWarning):
    """An option key that nothing reads, in a section where BasicSR allows extra keys."""


# Keys that PyPI BasicSR 1.4.2 itself reads (basicsr.utils.options.parse_options, basicsr.train / test,
# basicsr.data.build_dataloader, BaseModel); ``network_*`` keys are networks. The plugin's own keys are
# declared by the classes that read them: a dataset's ``OPTIONS``, a model's ``TRAIN_OPTIONS`` /
# ``VAL_OPTIONS`` (constyle_plugin.data.datasets, .models).
BASICSR_TOP_LEVEL = frozenset({"name", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "path", "train",
                               "val", "logger", "dist_params", "find_unused_parameters",
                               # set by parse_options / train_pipeline
                               "is_train", "dist", "rank", "world_size", "auto_resume", "root_path"})
BASICSR_DATALOADER = frozenset({"name", "type", "phase", "scale", "num_worker_per_gpu", "batch_size_per_gpu",
                                "dataset_enlarge_ratio", "prefetch_mode", "num_prefetch_queue", "pin_memory",
                                "persistent_workers",
                                "use_shuffle"})  # in BasicSR's own options templates (1.4.2 always shuffles)
BASICSR_LOGGER = frozenset({"print_freq", "save_checkpoint_freq", "use_tb_logger", "wandb"})
BASICSR_PATH = frozenset({"resume_state", "ignore_resume_networks",
                          # set by parse_options
                          "experiments_root", "models", "training_states", "log", "visualization", "results_root"})
_BASICSR_PATH_PREFIXES = ("pretrain_network_", "param_key_", "strict_load_")


def _hint(key: str, known: Sequence[str], cutoff: float = 0.6) -> str:
    return did_you_mean(key, sorted(known), cutoff=cutoff)


def _unknown_keys(section: Any, known: Sequence[str], where: str, reader: str) -> None:
    """OptionError for the first key of ``section`` that is not in ``known`` (``reader`` reads the section)."""
    if not isinstance(section, Mapping):
        return
    for key in section:
        if key not in known:
            hint = _hint(key, known)
            raise OptionError(_join(where, str(key)),
                              f"unknown option: {reader} does not read it{'; ' + hint if hint else ''} "
                              f"(known: {', '.join(sorted(known))})")


def check_option_keys(opt: Mapping[str, Any], *, host: Optional[BasicSRHost] = None,
                      warn: Optional[Callable[[str], None]] = None) -> None:
    """Report option keys that nothing reads, each with a did-you-mean when one is close.

    Errors (:class:`OptionError`) where the plugin's code reads the section: the ``train`` / ``val``
    sections of a model type declaring ``TRAIN_OPTIONS`` / ``VAL_OPTIONS`` (the plugin's models), the
    options of a dataset type declaring ``OPTIONS`` (the plugin's datasets, plus BasicSR's dataloader
    keys), ``datasets`` phases BasicSR does not know, and top-level keys close to a known one
    (``netwrok_g``). Warnings (``warn``, default :func:`warnings.warn` with :class:`OptionWarning`)
    where BasicSR itself allows extra keys: other top-level keys of a run of the plugin's models,
    ``logger`` and ``path`` keys.
    """
    host = host or current_host()
    if warn is None:
        def warn(message: str) -> None:
            warnings.warn(message, OptionWarning, stacklevel=3)
    model = host.find(MODEL, opt.get("model_type"))
    plugin_model = hasattr(model, "TRAIN_OPTIONS")
    top_known = sorted(BASICSR_TOP_LEVEL | {"network_g"})
    for key in opt:
        if key in BASICSR_TOP_LEVEL or str(key).startswith("network_"):
            continue
        hint = _hint(key, top_known, cutoff=0.8)
        if hint:
            raise OptionError(str(key), f"unknown top-level option; {hint}")
        if plugin_model:
            warn(f"{key}: top-level option that neither BasicSR nor {opt.get('model_type')} reads (ignored)")
    if plugin_model:
        if "network_g" not in opt:
            raise OptionError("network_g", f"missing: {opt.get('model_type')} trains `network_g`")
        _unknown_keys(opt.get("train"), model.TRAIN_OPTIONS, "train", f"{opt.get('model_type')} (with basicsr.train)")
        _unknown_keys(opt.get("val"), model.VAL_OPTIONS, "val", f"{opt.get('model_type')} (with basicsr.train)")
    elif isinstance(opt.get("train"), Mapping) and opt["train"].get("amp") not in (None, False):
        warn(f"train.amp: {opt.get('model_type')} does not read it and trains in float32; mixed precision is "
             f"ConStyleSRModel's (model_type: ConStyleSRModel trains a bare backbone too)")
    datasets = opt.get("datasets")
    if isinstance(datasets, Mapping):
        for phase, dataset in datasets.items():
            key = _join("datasets", str(phase))
            if opt.get("is_train") and phase != "train" and str(phase).split("_")[0] != "val":
                hint = _hint(phase, ["train", "val"])
                raise OptionError(key, f"BasicSR trains on `train` and validates on `val` / `val_<n>` datasets; "
                                       f"{hint or 'rename this phase'}")
            if not isinstance(dataset, Mapping):
                continue
            cls = host.find(DATASET, dataset.get("type"))
            own = getattr(cls, "OPTIONS", None)
            if own is not None:
                _unknown_keys(dataset, own | BASICSR_DATALOADER, key,
                              f"{dataset.get('type')} (or BasicSR's dataloader)")
    for section, known in (("logger", BASICSR_LOGGER), ("path", BASICSR_PATH)):
        values = opt.get(section)
        if not isinstance(values, Mapping):
            continue
        for key in values:
            if key in known or (section == "path" and str(key).startswith(_BASICSR_PATH_PREFIXES)):
                continue
            hint = _hint(key, sorted(known | {p + "g" for p in _BASICSR_PATH_PREFIXES} if section == "path" else known))
            warn(f"{section}.{key}: BasicSR does not read this option (ignored){'; ' + hint if hint else ''}")


def _number(opt: Mapping[str, Any], keys: Sequence[str], minimum: int, why: str) -> None:
    node: Any = opt
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    key = ".".join(keys)
    if node is None:
        raise OptionError(key, f"missing: {why}")
    try:
        value = float(node)
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(node, bool) or value != int(value) or value < minimum:
        raise OptionError(key, f"{node!r}: expected a whole number >= {minimum} ({why})")


def check_training_numbers(opt: Mapping[str, Any]) -> None:
    """The numbers a training run cannot do without, checked before anything is built: a positive
    ``train.total_iter`` (0 or less trains nothing, and BasicSR would still save the untrained network
    as ``net_g_latest.pth``), ``datasets.train`` with a positive ``batch_size_per_gpu``, and the
    logging / checkpoint / validation intervals BasicSR divides by."""
    _number(opt, ("train", "total_iter"), 1, "a run of fewer than 1 iteration trains nothing")
    if not isinstance((opt.get("datasets") or {}).get("train"), Mapping):
        raise OptionError("datasets.train", "missing: training needs a `train` dataset")
    _number(opt, ("datasets", "train", "batch_size_per_gpu"), 1, "the training batch per GPU (or per CPU process)")
    _number(opt, ("datasets", "train", "num_worker_per_gpu"), 0,
            "data loading processes per GPU; 0 loads in the main one")
    _number(opt, ("logger", "print_freq"), 1, "iterations between log lines")
    _number(opt, ("logger", "save_checkpoint_freq"), 1, "iterations between checkpoints")
    if opt.get("val") is not None and any(str(p).startswith("val") for p in opt.get("datasets") or {}):
        _number(opt, ("val", "val_freq"), 1, "iterations between validations")


def check_options(opt: Mapping[str, Any], *, resuming: bool = False, host: Optional[BasicSRHost] = None,
                  warn: Optional[Callable[[str], None]] = None) -> None:
    """Check a parsed BasicSR options dict before training / testing starts.

    Checks the model type, option keys that nothing reads (:func:`check_option_keys`; ``warn``
    receives the warnings), every ``network_*`` (type known; for ``ConStyleUNet``: backbone type,
    prompter file, inject targets, stage module names), the datasets (type known, data folders
    present), ``path.pretrain_network_*`` files (unless resuming), for a training run the numbers
    of :func:`check_training_numbers` and, for the plugin's models, the optimiser type. Names are
    looked up the way ``host`` (default: the basicsr importable here) looks them up. Raises
    :class:`OptionError` naming the first bad option.
    """
    import torch

    host = host or current_host()
    model_type = opt.get("model_type")
    try:
        found_model = host.find(MODEL, model_type)
    except ImportError as exc:  # a fork asked for a model that needs PyPI BasicSR
        raise OptionError("model_type", str(exc)) from None
    if found_model is None:
        raise OptionError("model_type", host.unknown(MODEL, model_type))
    check_option_keys(opt, host=host, warn=warn)
    if opt.get("is_train"):
        check_training_numbers(opt)
    if model_type == "ConStyleV2PretrainModel" and (opt.get("network_g") or {}).get("type") != "ConStyleMoCo":
        raise OptionError("network_g.type", "ConStyleV2PretrainModel trains a ConStyleMoCo (stage 1); "
                                            f"got {(opt.get('network_g') or {}).get('type')!r}")
    for key in [k for k in opt if k.startswith("network_")]:
        net = opt[key]
        if not isinstance(net, Mapping) or "type" not in net:
            raise OptionError(key, "expected a network dict with a `type`")
        if host.find(ARCH, net["type"]) is None:
            raise OptionError(_join(key, "type"), host.unknown(ARCH, net["type"]))
        if net["type"] == "ConStyleUNet":
            check_network_options(net, key, host=host)
            continue
        check_call_options(host.find(ARCH, net["type"]), net, key, str(net["type"]))
        if net["type"] in ("ConStyleV2", "ConStyleMoCo") and net.get("pretrained") is not None:
            check_file(_join(key, "pretrained"), net["pretrained"], "checkpoint")

    for phase, dataset in (opt.get("datasets") or {}).items():
        key = _join("datasets", phase)
        if not isinstance(dataset, Mapping) or "type" not in dataset:
            raise OptionError(key, "expected a dataset dict with a `type`")
        if host.find(DATASET, dataset["type"]) is None:
            raise OptionError(_join(key, "type"), host.unknown(DATASET, dataset["type"]))
        _check_dataset_values(dataset, key)
        special = _SAMPLE_ROOTS.get(dataset["type"])
        for name, value in dataset.items():
            if not (name.startswith("dataroot") or name == "meta_info_file") or value is None:
                continue
            if special and name == special[0] and value == special[1]:
                continue
            if not isinstance(value, (str, os.PathLike)) or not os.path.exists(os.path.expanduser(str(value))):
                raise OptionError(_join(key, name), f"not found: {value!r} (relative paths are "
                                                    f"relative to the current folder, {os.getcwd()})")
        _check_layout(host.find(DATASET, dataset["type"]), dataset, key)

    if not resuming:
        for name, value in (opt.get("path") or {}).items():
            if name.startswith("pretrain_network") and value is not None:
                check_file(_join("path", name), value, "checkpoint")

    if model_type in ("ConStyleSRModel", "ConStyleV2PretrainModel") and opt.get("is_train"):
        train = opt.get("train") or {}
        for name in ("optim_g", "scheduler"):
            if not isinstance(train.get(name), Mapping) or "type" not in train[name]:
                raise OptionError(_join("train", name), f"missing: {model_type} needs a dict with a `type`")
        for name, value in train.items():
            if name.startswith("optim_") and isinstance(value, Mapping):
                optim = value.get("type")
                if not isinstance(getattr(torch.optim, str(optim), None), type):
                    raise OptionError(_join("train", name, "type"), f"{optim!r} is not an optimiser of torch.optim")
                check_call_options(getattr(torch.optim, optim), value, _join("train", name), optim, positional=1)
        _check_scheduler(train["scheduler"])
        for name in ("pixel_opt", "perceptual_opt"):
            loss = train.get(name)
            if isinstance(loss, Mapping):
                found = host.find(LOSS, loss.get("type"))
                if found is None:
                    raise OptionError(_join("train", name, "type"), host.unknown(LOSS, loss.get("type")))
                check_call_options(found, loss, _join("train", name), str(loss["type"]))


def _check_layout(cls: Any, dataset: Mapping[str, Any], key: str) -> None:
    """The data layout of a dataset type declaring ``check_layout`` (the all-in-one benchmark datasets:
    folders, pairs, list files), checked before BasicSR makes the run's folders: the datasets themselves
    are built after them."""
    check = getattr(cls, "check_layout", None)
    if check is None:
        return
    from ...errors import LayoutError

    try:
        check(dataset)
    except OptionError as exc:
        raise OptionError(_join(key, exc.key), exc.message) from None
    except LayoutError as exc:
        raise OptionError(_join(key, "dataroot"), str(exc)) from None


def _check_dataset_values(dataset: Mapping[str, Any], key: str) -> None:
    """Sample-photo names exist; paired folders (``dataroot_gt`` / ``dataroot_lq``, no meta file) hold
    as many files each, as BasicSR's pairing asserts."""
    photos = dataset.get("photos")
    if photos is not None:
        from ...data.samples import SAMPLE_NAMES

        for i, name in enumerate([photos] if isinstance(photos, str) else list(photos)):
            if name not in SAMPLE_NAMES:
                hint = did_you_mean(name, SAMPLE_NAMES)
                raise OptionError(_join(key, f"photos[{i}]"), f"{name!r} is not a sample photo"
                                  f"{'; ' + hint if hint else ''} (available: {', '.join(SAMPLE_NAMES)})")
    gt, lq = dataset.get("dataroot_gt"), dataset.get("dataroot_lq")
    if (isinstance(gt, str) and isinstance(lq, str) and not dataset.get("meta_info_file")
            and os.path.isdir(gt) and os.path.isdir(lq)):
        counts = [sum(1 for e in os.scandir(folder) if e.is_file()) for folder in (gt, lq)]
        if counts[0] != counts[1]:
            raise OptionError(_join(key, "dataroot_lq"), f"{lq!r} holds {counts[1]} files but dataroot_gt {gt!r} "
                                                         f"holds {counts[0]}; paired folders need one file per pair")


def check_call_options(target: Callable, options: Mapping[str, Any], key: str, what: str,
                       positional: int = 0) -> None:
    """OptionError for a key of ``options`` (besides ``type``) that ``target`` does not take as an
    argument (a class's ``__init__`` or a function; the first ``positional`` arguments are passed by
    the trainer). Targets taking ``**kwargs`` accept anything."""
    import inspect

    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   inspect.Parameter.KEYWORD_ONLY)][positional:]
    for name in options:
        if name != "type" and name not in names:
            hint = _hint(name, names)
            raise OptionError(_join(key, str(name)), f"not an argument of {what}{'; ' + hint if hint else ''} "
                                                     f"(arguments: {', '.join(names)})")


_SCHEDULERS = {"MultiStepLR": "MultiStepRestartLR", "MultiStepRestartLR": "MultiStepRestartLR",
               "CosineAnnealingRestartLR": "CosineAnnealingRestartLR"}  # BaseModel.setup_schedulers


def _check_scheduler(scheduler: Mapping[str, Any]) -> None:
    kind = scheduler.get("type")
    if kind not in _SCHEDULERS:
        hint = _hint(kind, sorted(_SCHEDULERS))
        raise OptionError("train.scheduler.type", f"{kind!r} is not a scheduler BasicSR's BaseModel builds"
                                                  f"{'; ' + hint if hint else ''} "
                                                  f"(known: {', '.join(sorted(_SCHEDULERS))})")
    try:
        from basicsr.models import lr_scheduler
    except ImportError:
        return
    check_call_options(getattr(lr_scheduler, _SCHEDULERS[kind]), scheduler, "train.scheduler", str(kind),
                       positional=1)
    for name in ("periods", "restart_weights", "milestones"):
        value = scheduler.get(name)
        if name in scheduler and not isinstance(value, (list, tuple)):
            raise OptionError(_join("train.scheduler", name), f"expected a list, e.g. [{value}], got {value!r}")
