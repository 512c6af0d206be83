"""Constructor arguments a module was built with, so a saved network can be built again from its
``config.json``. Standard library and torch only."""
from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable, Dict, Optional, Type, TypeVar

__all__ = ["init_args", "remember_init_args"]

T = TypeVar("T", bound=type)
_ATTR = "_constyle_init_args"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def remember_init_args(cls: T) -> T:
    """Class decorator: each instance records its constructor's arguments (all of them, defaults
    included, as JSON values) for :func:`init_args`. Arguments JSON cannot hold are not recorded."""
    original: Callable = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self) is not cls:  # a subclass may take other arguments
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {k: _jsonable(v) for k, v in list(bound.arguments.items())[1:]
                  if signature.parameters[k].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                          inspect.Parameter.VAR_KEYWORD)}
        try:
            json.dumps(values)
        except (TypeError, ValueError):
            return
        object.__setattr__(self, _ATTR, values)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def init_args(module: Any) -> Optional[Dict[str, Any]]:
    """The constructor arguments recorded for ``module`` by :func:`remember_init_args`, or ``None``."""
    values = getattr(module, _ATTR, None)
    return dict(values) if isinstance(values, dict) else None
