"""How ``constyle restore`` reads an MMEngine run (see :mod:`constyle_plugin.runs`)."""
from __future__ import annotations

from typing import Any, ContextManager, Dict, Mapping

from mmengine.config import Config
from torch import nn

from .registry import MODELS
from .runner import load_config, mmengine_checkpoint_globals

__all__ = ["READER", "MMEngineReader"]


class MMEngineReader:
    """MMEngine configs, Runner checkpoints and the models of the ``constyle`` scope."""

    def checkpoint_globals(self) -> ContextManager[None]:
        return mmengine_checkpoint_globals()

    def load_config(self, path: str) -> Config:
        return load_config(path)

    def config_from_dict(self, cfg: Dict[str, Any]) -> Config:
        return Config(cfg)

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        return MODELS.build(dict(cfg))


READER = MMEngineReader()
