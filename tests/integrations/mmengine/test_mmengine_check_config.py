"""``check_config`` names the one broken key of the shipped MMEngine config (hypothesis)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[3]
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).map(lambda s: "No" + s)

MM_BREAKS = ("backbone_type", "prompter_file", "dataset_type", "metric_type", "load_from", "loss_type")


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(MM_BREAKS), name=names, split=st.sampled_from(["train", "val"]))
def test_mmengine_check_config_names_the_broken_key(kind, name, split):
    import constyle_plugin  # noqa: F401  (registers)
    from mmengine.config import Config

    from constyle_plugin.integrations.mmengine.runner import ConfigError, check_config

    cfg = _mm_config()
    if kind == "backbone_type":
        cfg.model.backbone.type, key = name, "model.backbone.type"
    elif kind == "prompter_file":
        cfg.model.prompter.pretrained, key = f"/nonexistent/{name}.pth", "model.prompter.pretrained"
    elif kind == "dataset_type":
        cfg[f"{split}_dataloader"].dataset.type, key = name, f"{split}_dataloader.dataset.type"
    elif kind == "metric_type":
        ev = cfg.val_evaluator
        metrics = ev["metrics"] if isinstance(ev, dict) and "metrics" in ev else ev
        first = metrics[0] if isinstance(metrics, (list, tuple)) else metrics
        first["type"] = name
        key = "val_evaluator" + (".metrics" if isinstance(ev, dict) and "metrics" in ev else "") + \
              ("[0]" if isinstance(metrics, (list, tuple)) else "") + ".type"
    elif kind == "load_from":
        cfg.load_from, key = f"/nonexistent/{name}.pth", "load_from"
    else:
        cfg.model.pixel_loss.type, key = name, "model.pixel_loss.type"
    assert isinstance(cfg, Config)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert str(info.value).startswith(f"{key}: "), (kind, str(info.value))


_MM_CFG = []


def _mm_config():
    from mmengine.config import Config

    if not _MM_CFG:
        import constyle_plugin  # noqa: F401
        from constyle_plugin.integrations.mmengine.runner import check_config

        _MM_CFG.append(Config.fromfile(str(ROOT / "options" / "mmengine" / "nafnet_constyle.py")))
        check_config(_MM_CFG[0])  # the unbroken config passes
    return Config(_MM_CFG[0].to_dict())
