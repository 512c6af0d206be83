"""Compatibility with the code bases the plugin runs inside, kept in one module.

Two things live here, both standard library only so that ``import constyle_plugin`` stays light:

- **Deferred registration.** The plugin registers with BasicSR (any flavour) and MMEngine when the
  program imports them, not by importing them itself. :func:`when_imported` runs a callback right
  after a module has finished loading (or at once, if it already has): an import hook on
  ``sys.meta_path`` that wraps the module's loader (and those of the plugin's own submodules, so
  that a registration triggered from inside one of them waits until it has finished) and touches
  no other import.
- **basicsr 1.4.2 on current torchvision.** basicsr imports
  ``torchvision.transforms.functional_tensor``, which torchvision 0.17 renamed to
  ``_functional_tensor``. While the hook is installed, that old name resolves to the new module
  (only where torchvision no longer has it), so basicsr imports wherever the program imports
  ``constyle_plugin`` first. :func:`ensure_basicsr_importable` applies the same alias by hand.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
import warnings
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["basicsr_available", "ensure_basicsr_importable", "when_imported"]

_OWN_PREFIX = "constyle_plugin."
_FUNCTIONAL_TENSOR = "torchvision.transforms.functional_tensor"
_RENAMED_FUNCTIONAL_TENSOR = "torchvision.transforms._functional_tensor"

Callback = Callable[[types.ModuleType], None]


def _alias_functional_tensor() -> None:
    if _FUNCTIONAL_TENSOR in sys.modules:
        return
    try:
        importlib.import_module(_FUNCTIONAL_TENSOR)
    except ImportError:
        sys.modules[_FUNCTIONAL_TENSOR] = importlib.import_module(_RENAMED_FUNCTIONAL_TENSOR)


def ensure_basicsr_importable() -> types.ModuleType:
    """Import and return ``basicsr`` (PyPI's or a fork's), aliasing torchvision's renamed module first.

    Idempotent; an environment whose torchvision still has ``functional_tensor`` is left alone.
    """
    _alias_functional_tensor()
    return importlib.import_module("basicsr")


def basicsr_available() -> bool:
    """True when basicsr can be imported (with the alias applied)."""
    try:
        ensure_basicsr_importable()
    except ImportError:
        return False
    return True


class _AliasLoader(importlib.abc.Loader):
    """Loads a module name as another, already existing module (the renamed torchvision module)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # noqa: D401 - importlib protocol
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _NotifyingLoader(importlib.abc.Loader):
    """Delegates to a module's own loader, then runs the callbacks waiting for that module."""

    def __init__(self, loader: importlib.abc.Loader, hook: "_ImportHook") -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self:
            # Code that reads ``__spec__.loader`` / ``__loader__`` later sees the module's own loader.
            spec.loader = self.loader
            module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.hook.run(module.__name__, module)

    def __getattr__(self, name: str):  # get_resource_reader, is_package, get_source, ...
        return getattr(self.loader, name)


class _ImportHook(importlib.abc.MetaPathFinder):
    """The one meta-path finder the plugin installs (see the module docstring)."""

    def __init__(self) -> None:
        self.callbacks: Dict[str, List[Callback]] = {}
        # (module, callback) for modules that were still executing when the callback was added (the
        # plugin imported from inside a host module); run at the next import once they are done.
        self.pending: List[tuple] = []
        # (callback, trainer module) held back while one of the plugin's own modules was executing
        self.deferred: List[tuple] = []
        self._local = threading.local()

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        if self.pending:
            self.flush()
        own = fullname.startswith(_OWN_PREFIX)
        if fullname != _FUNCTIONAL_TENSOR and fullname not in self.callbacks and not own:
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = self._find_elsewhere(fullname, path, target)
        finally:
            self._local.busy = False
        if fullname == _FUNCTIONAL_TENSOR:
            if spec is None and importlib.util.find_spec(_RENAMED_FUNCTIONAL_TENSOR) is not None:
                return importlib.machinery.ModuleSpec(fullname, _AliasLoader(_RENAMED_FUNCTIONAL_TENSOR))
            return spec
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _NotifyingLoader(spec.loader, self)
        return spec

    def _find_elsewhere(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def flush(self) -> None:
        waiting, self.pending = self.pending, []
        for module, callback in waiting:
            if _initialising(module):
                self.pending.append((module, callback))
            else:
                _call_safely(callback, module)

    def run(self, name: str, module: types.ModuleType) -> None:
        self.pending = [(m, c) for m, c in self.pending if m is not module]
        for callback in list(self.callbacks.get(name, ())):
            _call_safely(callback, module)
        if name.startswith(_OWN_PREFIX) and self.deferred and not _own_module_initialising(except_=module):
            waiting, self.deferred = self.deferred, []
            for callback, trainer in waiting:
                _call_safely(callback, trainer, defer=False)


def _own_module_initialising(except_: Optional[types.ModuleType] = None) -> bool:
    """True while one of the plugin's submodules (other than ``except_``, which has just run) executes."""
    return any(_initialising(m) for n, m in list(sys.modules.items())
               if n.startswith(_OWN_PREFIX) and m is not None and m is not except_)


def _call_safely(callback: Callback, module: types.ModuleType, defer: bool = True) -> None:
    # Registration imports the plugin's modules: while one of them is still executing (it is what
    # imported the trainer), they are incomplete, so registration waits until the last one is done.
    if defer and _own_module_initialising():
        _HOOK.deferred.append((callback, module))
        return
    # A failing registration must never break the host's own import: say so and carry on.
    try:
        callback(module)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"constyle_plugin: registering with {module.__name__} failed: "
                      f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)


_HOOK = _ImportHook()


def when_imported(name: str, callback: Callback) -> None:
    """Run ``callback(module)`` once ``name`` has finished importing: now, if it already has.

    Callbacks run every time the module is (re)loaded; they must be idempotent. An exception in a
    callback becomes a ``RuntimeWarning``: the importing program goes on.
    """
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    _HOOK.callbacks.setdefault(name, []).append(callback)
    module = sys.modules.get(name)
    if module is None:
        return
    if _initialising(module):
        _HOOK.pending.append((module, callback))
    else:
        _call_safely(callback, module)


def flush_pending() -> None:
    """Run the callbacks still waiting for a module that has finished importing since."""
    _HOOK.flush()


def _initialising(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def install_torchvision_alias() -> None:
    """Install the import hook (so the renamed torchvision module resolves) without callbacks."""
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
