"""`constyle restore` / `evaluate` rebuild a BasicSR run's network from the options copy BasicSR keeps
beside the experiment, with the ``--force_yml`` overrides it recorded in the ``# CMD:`` line (arguments
joined by spaces, quotes gone). Each value reads as BasicSR's own parser read it when it trained."""
from __future__ import annotations

import pytest

from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.integrations.basicsr.restore import read_options as _basicsr_options

ITEMS = {  # --force_yml item as typed -> where it lands
    "network_g:backbone:width=16": ("network_g", "backbone", "width"),
    "train:optim_g:lr=!!float 1e-3": ("train", "optim_g", "lr"),
    "train:scheduler:periods=[100, 200]": ("train", "scheduler", "periods"),
    "train:ema_decay=0.999": ("train", "ema_decay"),
    "val:save_img=false": ("val", "save_img"),
    "path:pretrain_network_g=~": ("path", "pretrain_network_g"),
    "datasets:val:photos=['camera', 'coffee']": ("datasets", "val", "photos"),
}
OPTIONS = """name: Tiny
model_type: ConStyleSRModel
network_g: {type: ConStyleUNet, backbone: {type: NAFNet, width: 8}}
path: {pretrain_network_g: x.pth}
datasets: {val: {photos: [camera]}}
train: {optim_g: {lr: 0.1}, scheduler: {periods: [1]}, ema_decay: 0}
val: {save_img: true}
"""


def test_recorded_overrides_read_as_basicsr_read_them(tmp_path):
    ensure_basicsr_importable()
    from basicsr.utils.options import _postprocess_yml_value

    cmd = "# basicsr train -opt Tiny.yml --force_yml " + " ".join(ITEMS) + " --auto_resume"
    path = tmp_path / "Tiny.yml"
    path.write_text("# GENERATE TIME: Wed Dec  2 12:00:00 2026\n# CMD:\n" + cmd + "\n\n" + OPTIONS)
    opt = _basicsr_options(path)
    for item, keys in ITEMS.items():
        node = opt
        for key in keys:
            node = node[key]
        assert node == _postprocess_yml_value(item.split("=", 1)[1].strip()), item
    assert opt["train"]["optim_g"]["lr"] == pytest.approx(0.001)
