"""The catalogue: every entry the plugin registers with a trainer, in one table.

:data:`CATALOGUE` is ``{kind: {name: "module:attr"}}``. Both registries read their names from it
(:mod:`.basicsr.registry` and :mod:`.mmengine.registry`), so a name is added in one place:

- kinds both trainers register: ``archs`` (the reference backbones), ``losses`` (the stage-1 losses)
  and ``datasets`` (the core dataset classes taking BasicSR's ``opt`` dict; BasicSR registers them as
  they are, MMEngine the keyword adapter of each, :func:`.mmengine.data.keyword_dataset`);
- BasicSR only: ``basicsr_archs`` (the ``ConStyleUNet`` / ``ConStyleV2`` / ``ConStyleMoCo`` builders)
  and ``basicsr_models`` (the two model types);
- MMEngine only: ``mmengine_models``, ``mmengine_losses`` (plus BasicSR's pixel losses, torch's own where
  basicsr does not import), ``mmengine_datasets``, ``mmengine_metrics``, ``mmengine_hooks``,
  ``mmengine_runners``, ``mmengine_optim_wrapper_constructors``.

Nothing is imported until an entry is resolved (:func:`resolve`, :meth:`Entry.load`); importing this
module imports no other module of the package but its errors.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Literal, Mapping, NamedTuple, Tuple, get_args

from ..errors import ConStyleKeyError

__all__ = ["CATALOGUE", "FALLBACKS", "KINDS", "Entry", "Kind", "entries", "entry", "names", "resolve"]

Kind = Literal["archs", "losses", "datasets", "basicsr_archs", "basicsr_models", "mmengine_models",
               "mmengine_losses", "mmengine_datasets", "mmengine_metrics", "mmengine_hooks", "mmengine_runners",
               "mmengine_optim_wrapper_constructors"]
KINDS: Tuple[str, ...] = get_args(Kind)

_ARCHS = "constyle_plugin.archs"
_LOSSES = "constyle_plugin.training.losses"
_BASICSR = "constyle_plugin.integrations.basicsr"
_MMENGINE = "constyle_plugin.integrations.mmengine"


def _from(module: str, *attrs: str) -> Dict[str, str]:
    return {a: f"{module}:{a}" for a in attrs}


CATALOGUE: Mapping[str, Mapping[str, str]] = {
    # both trainers
    "archs": _from(_ARCHS, "NAFNet", "Restormer", "ConvUNet", "MAXIM"),
    "losses": _from(_LOSSES, "InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss"),
    "datasets": {**_from("constyle_plugin.data.datasets", "MixDegradationDataset", "ConStylePretrainDataset"),
                 **_from("constyle_plugin.data.benchmark_datasets", "AllInOneTrainDataset", "AllInOneTestDataset")},
    # BasicSR only (ConStyleUNet: the builder PyPI BasicSR gets; forks and vendored registries get one bound
    # to their own arch look-up, see .basicsr.registry)
    "basicsr_archs": {"ConStyleUNet": f"{_BASICSR}.registry:build_constyle_unet",
                      "ConStyleV2": f"{_BASICSR}.registry:build_prompter",
                      "ConStyleMoCo": f"{_BASICSR}.registry:build_moco"},
    "basicsr_models": _from(f"{_BASICSR}.models", "ConStyleV2PretrainModel", "ConStyleSRModel"),
    # MMEngine only
    "mmengine_models": _from(f"{_MMENGINE}.models", "ConStyleRestorer", "ConStylePretrainer",
                             "ConStyleDataPreprocessor"),
    "mmengine_losses": {**_from(_LOSSES, "ClassificationLoss"),
                        **_from("basicsr.losses.basic_loss", "L1Loss", "MSELoss", "CharbonnierLoss")},
    "mmengine_datasets": _from(f"{_MMENGINE}.data", "PairedFolderDataset"),
    "mmengine_metrics": _from(f"{_MMENGINE}.data", "PSNR", "SSIM", "PretextAccuracy"),
    "mmengine_optim_wrapper_constructors": _from(f"{_MMENGINE}.models", "ConStyleOptimWrapperConstructor"),
    "mmengine_runners": _from(f"{_MMENGINE}.runner", "ConStyleRunner"),
    "mmengine_hooks": _from(f"{_MMENGINE}.hooks", "PrompterExportHook"),
}

# What an entry resolves to where its own module cannot be imported (basicsr is a dependency, but
# configs with plain L1 / MSE pixel losses stay usable without it).
FALLBACKS: Mapping[Tuple[str, str], str] = {("mmengine_losses", "L1Loss"): "torch.nn:L1Loss",
                                            ("mmengine_losses", "MSELoss"): "torch.nn:MSELoss"}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    if module == "basicsr" or module.startswith("basicsr."):
        from ..compat import ensure_basicsr_importable

        ensure_basicsr_importable()
    return getattr(importlib.import_module(module), attr)


class Entry(NamedTuple):
    """One registered entry: its kind, the name configs use, and ``"module:attr"`` of the object."""

    kind: str
    name: str
    target: str

    def load(self) -> Any:
        """The object (imported now). Raises ImportError where its module cannot be imported here and
        there is no fallback, AttributeError where the module has no such attribute."""
        try:
            return _import(self.target)
        except ImportError:
            fallback = FALLBACKS.get((self.kind, self.name))
            if fallback is None:
                raise
            return _import(fallback)


def _check_kind(kind: str) -> Mapping[str, str]:
    if kind not in CATALOGUE:
        raise ConStyleKeyError(f"no catalogue kind {kind!r}; kinds: {', '.join(KINDS)}")
    return CATALOGUE[kind]


def names(kind: Kind) -> List[str]:
    """The names of ``kind``, in the order they are registered (nothing imported)."""
    return list(_check_kind(kind))


def entries(kind: Kind) -> List[Entry]:
    """The entries of ``kind``, in the order they are registered (nothing imported until ``load``)."""
    return [Entry(kind, name, target) for name, target in _check_kind(kind).items()]


def entry(kind: Kind, name: str) -> Entry:
    """The entry ``name`` of ``kind``; :class:`~constyle_plugin.errors.ConStyleKeyError` (a ``KeyError``)
    naming the kind's names when there is none."""
    table = _check_kind(kind)
    if name not in table:
        raise ConStyleKeyError(f"no {kind} entry {name!r} in the catalogue; known: {', '.join(table)}")
    return Entry(kind, name, table[name])


def resolve(kind: Kind, name: str) -> Any:
    """The object registered as ``name`` of ``kind`` (its module imported now; see :meth:`Entry.load`)."""
    return entry(kind, name).load()
