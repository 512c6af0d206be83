"""How ``constyle restore`` reads an MMEngine run (see :mod:`constyle_plugin.runs`): the config (given,
or the one the Runner recorded for the run, read as plain values without running it), the Runner
checkpoint (the EMA copy apart) and the restorer's network."""
from __future__ import annotations

import ast
import logging
import re
import warnings
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Tuple

import torch
from mmengine.config import Config
from torch import Tensor, nn

from ...errors import CheckpointError, ConStyleError, RestoreError
from ...runs import TrainingRun, no_recorded_config, without_prompter_file
from .registry import MODELS
from .runner import load_config, mmengine_checkpoint_globals

__all__ = ["READER", "MMEngineReader", "read_dumped_config"]

logger = logging.getLogger(__name__)


_TIMESTAMP = re.compile(r"(?:^|_)(\d{8}_\d{6})$")


def _recorded_mmengine_config(checkpoint: Path, meta: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """``(source, text)`` of the config MMEngine recorded for the run that saved ``checkpoint``.

    The checkpoint's ``meta`` names the run (``experiment_name = <config name>_<timestamp>``); the
    Runner dumped that run's config into the work dir as ``<timestamp>/vis_data/config.py`` and
    ``<config name>.py``, and into ``meta['cfg']`` itself. Files of any other name are never used.
    """
    name = meta.get("experiment_name")
    candidates: List[Path] = []
    if isinstance(name, str):
        match = _TIMESTAMP.search(name)
        if match:
            candidates.append(checkpoint.parent / match.group(1) / "vis_data" / "config.py")
            stem = name[:match.start()]
            if stem and "/" not in stem and "\\" not in stem and stem not in (".", ".."):
                candidates.append(checkpoint.parent / f"{stem}.py")
    for path in candidates:
        if path.is_file():
            return str(path), path.read_text(encoding="utf-8")
    text = meta.get("cfg")
    if isinstance(text, str) and text.strip():
        return f"{checkpoint} (the config recorded in its meta)", text
    return None


def _literal(node: ast.AST, source: str) -> Any:
    """The value of a literal expression of a dumped config: numbers, strings, None / True / False,
    lists, tuples, sets, dicts and ``dict(key=value, ...)``. Anything else is refused: nothing is run."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(item, source) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, source): _literal(v, source) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args
            and all(kw.arg is not None for kw in node.keywords)):
        return {kw.arg: _literal(kw.value, source) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise RestoreError(f"--config: {source}, line {getattr(node, 'lineno', '?')}: "
                       f"{type(node).__name__} is not a plain value; a config found beside a checkpoint is "
                       f"read without running it, so pass the config file with --config")


def read_dumped_config(text: str, source: str) -> Dict[str, Any]:
    """The ``name = value`` entries of a config MMEngine dumped (``Config.pretty_text``), read without
    running anything: every value must be a literal (see :func:`_literal`)."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise RestoreError(f"--config: {source}: not a dumped MMEngine config ({exc.msg}, line {exc.lineno}); "
                           f"pass --config") from None
    cfg: Dict[str, Any] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise RestoreError(f"--config: {source}, line {stmt.lineno}: not a plain assignment; a config found "
                               f"beside a checkpoint is read without running it, so pass the config with --config")
        cfg[stmt.targets[0].id] = _literal(stmt.value, source)
    return cfg


def _read_mmengine_checkpoint(checkpoint: Path) -> Any:
    """A Runner checkpoint, read with safe loading (plus the globals MMEngine's own checkpoints need)."""
    try:
        with mmengine_checkpoint_globals():
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (reported with the file's name, nothing run)
        raise CheckpointError(f"{checkpoint}: not a readable MMEngine checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _mmengine_backbone(cfg: Any) -> Optional[Dict[str, Any]]:
    model = cfg.get("model")
    backbone = model.get("backbone") if isinstance(model, Mapping) else None
    return {**dict(backbone), "registry": "mmengine"} if isinstance(backbone, Mapping) else None


def _build_mmengine(cfg: Any, source: str) -> nn.Module:
    if not isinstance(cfg.get("model"), Mapping):
        raise ConStyleError(f"--config {source}: no model section: not an MMEngine training config")
    model_cfg = dict(cfg.model)
    if "prompter" in model_cfg:
        model_cfg["prompter"] = without_prompter_file(model_cfg["prompter"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*prompter is untrained.*")
        model = MODELS.build(model_cfg)
    if not hasattr(model, "net"):
        raise ConStyleError(f"--config {source}: model type {cfg.model.get('type')!r} is not a restorer "
                         f"(expected ConStyleRestorer)")
    return model.net


def _mmengine_states(checkpoint: Path, raw: Any) -> Dict[str, Dict[str, Tensor]]:
    """The restorer's weights from a Runner checkpoint: "model", and "ema" when the run kept one.

    MMEngine's ``EMAHook`` swaps the two when it saves (so that ``state_dict`` loads the average for
    deployment): ``state_dict`` holds the EMA weights and ``ema_state_dict`` (``module.*`` keys around
    ``steps``) the trained model's own."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{checkpoint}: expected an MMEngine checkpoint dict")

    def net_weights(state: Mapping[str, Any]) -> Dict[str, Tensor]:
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
                 if isinstance(v, Tensor) and k != "steps"}
        return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}

    saved = net_weights(raw.get("state_dict") or raw)
    if raw.get("ema_state_dict"):
        return {"model": net_weights(raw["ema_state_dict"]), "ema": saved}
    return {"model": saved}


class MMEngineReader:
    """MMEngine configs, Runner checkpoints and the models of the ``constyle`` scope."""

    def read_run(self, checkpoint: Path, config: Optional[Path]) -> TrainingRun:
        if config is not None:
            cfg = load_config(str(config))
            net = _build_mmengine(cfg, str(config))
            states = _mmengine_states(checkpoint, _read_mmengine_checkpoint(checkpoint))
            return TrainingRun(net, states, str(config), _mmengine_backbone(cfg), checkpoint)
        raw = _read_mmengine_checkpoint(checkpoint)
        meta = raw.get("meta") if isinstance(raw, dict) else None
        recorded = _recorded_mmengine_config(checkpoint, meta) if isinstance(meta, Mapping) else None
        if recorded is None:
            raise no_recorded_config(checkpoint)
        source, text = recorded
        cfg = Config(read_dumped_config(text, source))
        net = _build_mmengine(cfg, source)
        logger.info("config of %s: %s", checkpoint, source)
        return TrainingRun(net, _mmengine_states(checkpoint, raw), source, _mmengine_backbone(cfg), checkpoint)

    def checkpoint_globals(self) -> ContextManager[None]:
        return mmengine_checkpoint_globals()

    def load_config(self, path: str) -> Config:
        return load_config(path)

    def config_from_dict(self, cfg: Dict[str, Any]) -> Config:
        return Config(cfg)

    def build_model(self, cfg: Mapping[str, Any]) -> nn.Module:
        return MODELS.build(dict(cfg))


READER = MMEngineReader()
