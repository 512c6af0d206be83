"""The plugin's errors: one base class, :class:`ConStyleError` (a ``ValueError``), and one
"did you mean" helper for messages about a misspelt name.

Each error's message names the file, option or tensor at fault. Standard library only.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, List

__all__ = ["CheckpointError", "ConStyleError", "ConStyleKeyError", "ConStyleRuntimeError", "ConStyleTypeError",
           "ConfigError", "EvaluateError", "ImageReadError", "ImageWriteError", "InspectError", "LayoutError", "MissingDependencyError",
           "MissingFileError", "OptionError", "PromptError", "RestoreError", "UNetStructureError", "WrapError",
           "close_matches", "did_you_mean", "join_keys"]


class ConStyleError(ValueError):
    """Base class of every error the plugin raises about its inputs (files, options, networks)."""


class CheckpointError(ConStyleError):
    """A checkpoint that cannot be read, or does not hold what it should (a ConStyle v2 prompter,
    the weights of the network being loaded)."""


class UNetStructureError(ConStyleError):
    """The probe found no U-Net structure, or a StageSpec names modules that cannot be hooked."""


class RestoreError(ConStyleError):
    """``constyle restore`` cannot run as asked; the message starts with the option at fault."""


class EvaluateError(ConStyleError):
    """``constyle evaluate`` cannot run as asked (an unpaired or missing file, a size mismatch, no
    metrics); the message starts with the option at fault and names the file."""


class InspectError(ConStyleError):
    """``constyle inspect`` cannot run as asked (a missing input or prompter, a folder without images, a
    bad option); the message names the option or file at fault."""


class LayoutError(ConStyleError):
    """A benchmark data folder that is not laid out as its setting expects (a missing folder, a file
    without its partner, another setting's layout); the message names the file or folder at fault and
    the layout expected."""


class PromptError(ConStyleError):
    """A prompt given to a wrapped net (``use_prompt``) that does not fit the input it is applied to."""


class ConfigError(ConStyleError):
    """An MMEngine config names an unknown type or a missing file; the message starts with the config key."""


class ImageReadError(ConStyleError, OSError):
    """An image file that cannot be read or decoded (also an ``OSError``, as file errors are)."""


class ImageWriteError(ConStyleError, OSError):
    """An image that cannot be encoded or written (also an ``OSError``)."""


class WrapError(ConStyleError):
    """``wrap_unet`` / ``ConStyleUNet`` given what they cannot use: an already wrapped net, an unknown
    injection target, a stage output of another layout than the probe saw."""


class ConStyleTypeError(ConStyleError, TypeError):
    """An argument of the wrong type (also a ``TypeError``, which callers of Python APIs catch)."""


class ConStyleRuntimeError(ConStyleError, RuntimeError):
    """Something that went wrong while running (a forward, an encoder), not in the arguments
    (also a ``RuntimeError``)."""


class ConStyleKeyError(ConStyleError, KeyError):
    """A mapping (a data sample, a batch) without a key the plugin needs (also a ``KeyError``)."""


class MissingFileError(ConStyleError, FileNotFoundError):
    """A file or folder the plugin was pointed at does not exist (also a ``FileNotFoundError``)."""


class MissingDependencyError(ConStyleError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install (also an
    ``ImportError``)."""


def join_keys(*parts: str) -> str:
    """Dotted option path from its parts, empty parts skipped: ``join_keys("network_g", "", "type")``."""
    return ".".join(p for p in parts if p)


class OptionError(ConStyleError):
    """A bad option; ``key`` is its dotted path, e.g. ``network_g.backbone.type``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "OptionError":
        """The same error for an option nested under ``prefix``."""
        return OptionError(join_keys(prefix, self.key), self.message)


def close_matches(name: Any, choices: Iterable[Any], n: int = 1, cutoff: float = 0.6) -> List[str]:
    """The (at most ``n``) entries of ``choices`` closest to ``name``, best first."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)


def did_you_mean(name: Any, choices: Iterable[Any], n: int = 1, cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` (or ``"did you mean 'x', 'y'?"``) for the names of ``choices`` close to
    ``name``; ``""`` when none is close. Callers add their own separator."""
    close = close_matches(name, choices, n=n, cutoff=cutoff)
    return f"did you mean {', '.join(map(repr, close))}?" if close else ""
