"""ONNX export of wrapped reference U-Nets: the prompter inside the graph, batch / height / width dynamic,
onnxruntime within 1e-4 of eager at sizes the trace never saw; an unexportable backbone is refused naming
the operator and the module; the docs' own U-Net exports, checked at its size multiple, and a check that
fails names its cause and leaves no file; integer images are refused by the ONNX network; without onnx
installed the error says what to install.

The wrapped nets use the packaged prompter and live injections (``live_adapters``), and the images the
comparisons use look unlike the noise the trace sees: a prompt baked into the graph as a constant moves
the output by far more than the tolerance (asserted, as ``_wrong_prompt_moves``)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from constyle_plugin import ConStyleError, ConStyleV2, wrap_unet
from constyle_plugin.archs import MAXIM, ConvUNet, NAFNet, Restormer

from unets import live_adapters

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from constyle_plugin.tools.export import (OnnxExportError, OnnxInputError, check_onnx, export_onnx,  # noqa: E402
                                          load_onnx)

DOC = Path(__file__).resolve().parents[2] / "docs" / "checkpoints.md"
TOLERANCE = 1e-4

BACKBONES = {
    "NAFNet": lambda: NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]),
    "Restormer": lambda: Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    "ConvUNet": lambda: ConvUNet(width=8, depth=3, blocks_per_level=1),
    "MAXIM": lambda: MAXIM(width=8, depth=2, num_groups=1, num_bottleneck_blocks=1, block_size_hr=(4, 4),
                           grid_size_hr=(4, 4), block_size_lr=(2, 2), grid_size_lr=(2, 2)),
}


def _wrapped(name: str):
    """The packaged prompter (its prompts tell images apart, a random prompter's barely do) and injections
    away from their zero initialisation, so that the prompt changes the output."""
    torch.manual_seed(0)
    net = wrap_unet(BACKBONES[name](), inject=("encoder", "bottleneck", "decoder"))
    return live_adapters(net, scale=0.1).eval()


def _smooth(*shape: int, seed: int = 0) -> torch.Tensor:
    """A blurred image: unlike the uniform noise the trace (and a prompt baked in from it) sees."""
    noise = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)


def _wrong_prompt_moves(net, x: torch.Tensor, other: torch.Tensor) -> float:
    """How far ``net(x)`` moves when the prompt is ``other``'s (as in a graph with a baked-in prompt)."""
    prompt = net.prompter(other)
    net.prompter.forward = lambda image: prompt
    try:
        with torch.no_grad():
            wrong = net(x)
    finally:
        del net.prompter.forward
    with torch.no_grad():
        return float((wrong - net(x)).abs().max())


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
    x = _smooth(1, 3, 40, 48)
    # a prompt baked in from the trace's noise image would be off by far more than the tolerance at batch 1
    assert _wrong_prompt_moves(net, x, torch.rand(1, 3, 40, 48)) > 100 * TOLERANCE
    with torch.no_grad():
        bare = net.backbone(x)  # the backbone on its own: no prompt
        assert float((load_onnx(path)(x) - net(x)).abs().max()) <= TOLERANCE < float((bare - net(x)).abs().max())


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
        x = _smooth(*shape)
        assert _wrong_prompt_moves(net, x, torch.rand(*shape)) > 100 * TOLERANCE
        y = runner(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        with torch.no_grad():
            np.testing.assert_allclose(y.numpy(), net(x).numpy(), atol=1e-4)


# ---------------------------------------------------------------------------- the docs' own U-Net
def _docs_unet_class():
    """``MyUNet`` of docs/checkpoints.md (the ``# my_unet.py`` block), as written."""
    block = re.search(r"```python\n# my_unet\.py\n(.*?)\n```", DOC.read_text(), re.S)
    assert block, "the page lost its my_unet.py block"
    namespace: dict = {}
    exec(compile(block.group(1), "my_unet.py", "exec"), namespace)
    return namespace["MyUNet"]


def test_the_docs_own_unet_exports_checked_at_its_size_multiple(tmp_path):
    MyUNet = _docs_unet_class()
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(MyUNet()), scale=0.1).eval()
    assert net.backbone.size_multiple == 8
    reports = []
    path = export_onnx(net, tmp_path / "net.onnx", report=lambda diff, sizes: reports.append((diff, sizes)))
    (diff, sizes), = reports
    assert diff <= TOLERANCE and sizes == [(2, 40, 56), (1, 72, 48)]  # 37 x 53 and 71 x 46, padded as restore pads
    x = _smooth(1, 3, 40, 56)
    assert _wrong_prompt_moves(net, x, torch.rand(1, 3, 40, 56)) > 100 * TOLERANCE
    with torch.no_grad():
        assert float((load_onnx(path)(x) - net(x)).abs().max()) <= TOLERANCE


def test_a_failing_check_names_its_cause_and_leaves_no_file(tmp_path):
    """The same U-Net without its ``size_multiple``: the check's odd sizes do not run in the network itself;
    the error says so and how to fix it, and neither the file nor a temporary one is left; a file already
    at the path stays as it was."""
    MyUNet = _docs_unet_class()
    unet = MyUNet()
    del unet.size_multiple
    net = wrap_unet(unet).eval()
    with pytest.raises(OnnxExportError) as info:
        export_onnx(net, tmp_path / "net.onnx")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'net.onnx'}: checking the export, the network "
                                                       f"itself fails on a 2 x 3 x 37 x 53 input (RuntimeError: ")
    assert "set `size_multiple` on the network to the one its inputs need" in message
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "net.onnx").write_bytes(b"an earlier export")
    with pytest.raises(OnnxExportError):
        export_onnx(net, tmp_path / "net.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]
    assert (tmp_path / "net.onnx").read_bytes() == b"an earlier export"


def test_the_onnx_network_refuses_integer_images_naming_the_tensor(tmp_path):
    net = _wrapped("ConvUNet")
    path = export_onnx(net, tmp_path / "net.onnx", check=False)
    runner = load_onnx(path)
    x = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8)
    with pytest.raises(OnnxInputError) as info:
        runner(x)
    assert isinstance(info.value, ConStyleError) and isinstance(info.value, TypeError)
    assert str(info.value) == (f"{path}: the input image tensor is torch.uint8; the network takes floats in [0, 1] "
                               f"(B x 3 x H x W): pass x.float() / 255 for 8-bit images")
    with torch.no_grad():  # converted as the message says, it is the network's own output
        assert float((runner(x.float() / 255) - net(x.float() / 255)).abs().max()) <= TOLERANCE
