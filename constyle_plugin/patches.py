"""Replacing a host function for one run: the last resort, where neither the plugin's own classes nor
the host's options can do the job. Before replacing anything, :func:`replace` checks that the
function still takes the parameters the replacement was written for, and refuses clearly otherwise:
a host that changed must not be patched silently."""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Sequence, Tuple

from .errors import ConStyleError

__all__ = ["HostChanged", "Patches", "host_version"]


class HostChanged(ConStyleError):
    """A host function the run replaces no longer has the signature the replacement was written for."""


def host_version(module: str = "basicsr") -> str:
    """``"basicsr 1.4.2"``: the installed distribution's version, or the module's ``__version__``."""
    from importlib import import_module, metadata

    try:
        return f"{module} {metadata.version(module)}"
    except metadata.PackageNotFoundError:
        pass
    try:
        return f"{module} {import_module(module).__version__}"
    except (ImportError, AttributeError):
        return f"{module} (version unknown)"


def _parameters(fn: Any) -> List[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except ValueError:  # a C method without a signature: only replacements that take any arguments
        return []


class Patches:
    """Host attributes replaced for one run, restored by :meth:`restore` (last replaced, first restored)."""

    def __init__(self) -> None:
        self._saved: List[Tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, params: Sequence[str], make: Callable[[Any], Any],
                host: str = "basicsr", written_for: str = "basicsr 1.4.2", more: bool = False) -> None:
        """``owner.name = make(owner.name)``, after checking that ``owner.name`` takes exactly ``params``
        (parameter names, in order; with ``more``, others may follow). Raises :class:`HostChanged`
        naming the host's version."""
        original = getattr(owner, name)
        found = _parameters(original)
        if (found[:len(params)] if more else found) != list(params):
            where = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
            wanted = ", ".join([*params, "..."] if more else params)
            raise HostChanged(f"{where} of {host_version(host)} takes ({', '.join(found)}); the plugin replaces it "
                              f"for this run and was written for ({wanted}) as in {written_for}. Install "
                              f"{written_for}, or a constyle-plugin release that supports this version")
        self._saved.append((owner, name, original))
        setattr(owner, name, make(original))

    def restore(self) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)
