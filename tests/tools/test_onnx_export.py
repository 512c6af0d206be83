"""ONNX export of wrapped reference U-Nets: the prompter inside the graph, batch / height / width dynamic,
onnxruntime within 1e-4 of eager at sizes the trace never saw; an unexportable backbone is refused naming
the operator and the module; without onnx installed the error says what to install."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from constyle_plugin import ConStyleError, ConStyleV2, wrap_unet
from constyle_plugin.archs import MAXIM, ConvUNet, NAFNet, Restormer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from constyle_plugin.tools.export import OnnxExportError, check_onnx, export_onnx, load_onnx  # noqa: E402

BACKBONES = {
    "NAFNet": lambda: NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]),
    "Restormer": lambda: Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    "ConvUNet": lambda: ConvUNet(width=8, depth=3, blocks_per_level=1),
    "MAXIM": lambda: MAXIM(width=8, depth=2, num_groups=1, num_bottleneck_blocks=1, block_size_hr=(4, 4),
                           grid_size_hr=(4, 4), block_size_lr=(2, 2), grid_size_lr=(2, 2)),
}


def _wrapped(name: str):
    torch.manual_seed(0)
    net = wrap_unet(BACKBONES[name](), prompter=ConStyleV2(), inject=("encoder", "bottleneck", "decoder")).eval()
    with torch.no_grad():  # away from the identity, so that the prompt changes the output
        for p in net.injections.parameters():
            p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_exported_graph_matches_eager_at_sizes_the_trace_never_saw(name, tmp_path):
    net = _wrapped(name)
    path = export_onnx(net, tmp_path / f"{name}.onnx", check=False)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    (image,) = model.graph.input  # the prompter is inside: the image is the only input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["size_multiple"]) == net.backbone.size_multiple
    # trace at 64 x 64 (a multiple of the size multiple); these sizes need padding and prompt resizing
    diff, sizes = check_onnx(net, path, sizes=[(2, 37, 53), (1, 71, 46)])
    assert diff <= 1e-4, (name, diff)
    # the prompter's convolutions are nodes of the graph, and the prompt changes the output there
    assert sum("/prompter/" in node.name and node.op_type == "Conv" for node in model.graph.node) == 9
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        bare = net.backbone(x)  # the backbone on its own: no prompt
        assert float((load_onnx(path)(x) - net(x)).abs().max()) <= 1e-4 < float((bare - net(x)).abs().max())


class _AntialiasedDown(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=0.5, mode="bilinear", antialias=True)


class _UnexportableUNet(nn.Module):
    """Downsamples with an antialiased resize, which has no ONNX form in the TorchScript exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.downs = nn.ModuleList(_AntialiasedDown(8) for _ in range(3))
        self.tail = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.head(x)
        for down in self.downs:
            y = down(y)
        return self.tail(F.interpolate(y, size=x.shape[-2:])) + x


def test_unexportable_backbone_names_the_operator_and_the_module(tmp_path, capfd):
    net = wrap_unet(_UnexportableUNet(), prompter=ConStyleV2())
    with pytest.raises(OnnxExportError) as info:
        export_onnx(net, tmp_path / "net.onnx")
    message = str(info.value)
    assert isinstance(info.value, ConStyleError) and "\n" not in message
    assert "operator aten::_upsample_bilinear2d_aa has no ONNX form" in message
    assert "called in module 'backbone.downs.0' (_AntialiasedDown)" in message
    assert not (tmp_path / "net.onnx").exists()
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump is kept off the terminal


def test_export_and_onnx_restore_without_onnx_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "constyle-plugin\[export\]"'):
        export_onnx(_wrapped("ConvUNet"), tmp_path / "net.onnx")
    (tmp_path / "net.onnx").write_bytes(b"")
    with pytest.raises(ImportError, match=r'pip install "constyle-plugin\[export\]"'):
        load_onnx(tmp_path / "net.onnx")


def test_onnx_network_runs_any_batch_and_size(tmp_path):
    net = _wrapped("ConvUNet")
    runner = load_onnx(export_onnx(net, tmp_path / "net.onnx"))
    assert runner.size_multiple == 8 and runner.in_channels == 3
    for shape in [(3, 3, 16, 24), (1, 3, 9, 130)]:
        x = torch.rand(*shape)
        y = runner(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        with torch.no_grad():
            np.testing.assert_allclose(y.numpy(), net(x).numpy(), atol=1e-4)
