"""README claims that had no test of their own (issue 12, item 6; the map is tests/README.md), and a
check that every test the READMEs name exists, so the map cannot go stale silently."""
from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from constyle_plugin import ConStyleV2, StageSpec, wrap_unet
from constyle_plugin.unet import discover_stages

from unets import FunctionalUNet, ModuleListUNet

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


# ---------------------------------------------------------------------------- the maps name real tests
def _test_functions(path: Path) -> set:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def _named_tests(text: str):
    """``tests/f.py::test_x`` references, and ``::test_y`` ones that continue the last file named."""
    current = None
    for match in re.finditer(r"`(tests/[\w/]+\.py)?::(test_\w+)(\[[^\]`]*\])?`|`(tests/[\w/]+\.py)`", text):
        file_, name, _, bare_file = match.groups()
        if bare_file:
            current = bare_file
            continue
        current = file_ or current
        yield current, name


@pytest.mark.parametrize("readme", ["README.md", "tests/README.md"])
def test_every_test_the_readmes_name_exists(readme):
    text = (ROOT / readme).read_text()
    named = list(_named_tests(text))
    assert len(named) >= 30, f"{readme}: expected the Guarantees references, found {len(named)}"
    missing = [f"{f}::{n}" for f, n in named if f is None or not (ROOT / f).is_file()
               or n not in _test_functions(ROOT / f)]
    assert not missing, f"{readme} names tests that do not exist: {missing}"


# ---------------------------------------------------------------------------- "Stage discovery"
def test_discovery_is_one_probe_forward_on_a_random_non_square_image():
    """README: "One probe forward (a random 2 x C x 256 x 192 input ...)"; explicit specs are checked
    with one probe too."""
    for stages in (None, StageSpec(encoder=("down.0", "down.1", "down.2"), bottleneck="mid")):
        torch.manual_seed(0)
        unet = ModuleListUNet()
        seen = []
        handle = unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        wrap_unet(unet, prompter=ConStyleV2(), stages=stages)
        handle.remove()
        assert len(seen) == 1, stages
        (probe,) = seen
        assert probe.shape == (2, 3, 256, 192)
        assert 0 <= probe.min() and probe.max() <= 1 and probe.std() > 0.2  # random in [0, 1], not a constant


class AttentionUNet(ModuleListUNet):
    """A U-Net with squeeze-and-excitation (a global pooling to 1 x 1) on every level and the bottleneck,
    the way NAFNet's channel attention and many restoration U-Nets have it."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width=width)
        chans = [width * 2 ** i for i in range(4)]
        self.se = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), nn.Sigmoid())
                                for c in chans)

    def forward(self, x):
        y = self.head(x)
        skips = []
        for k, (enc, down) in enumerate(zip(self.enc, self.down)):
            y = enc(y)
            y = y * self.se[k](y)
            skips.append(y)
            y = down(y)
        y = self.mid(y)
        y = y * self.se[3](y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.tail(y) + x


@pytest.mark.parametrize("probe_size", [(256, 192), (64, 64), (16, 16)])
def test_a_global_pooling_is_never_a_stage(probe_size):
    """README: "... not square so a global pooling never passes for a stage". At 16 x 16 the bottleneck
    is 2 x 2, so its 1 x 1 pooling is exactly one more halving: it must still not count."""
    spec, infos = discover_stages(AttentionUNet(), probe_size=probe_size)
    assert spec == StageSpec(encoder=("down.0", "down.1", "down.2"), bottleneck="mid",
                             decoder=("up.0", "up.1", "up.2")), (probe_size, spec)
    assert not any(name.startswith("se") for name in spec.names())


def test_functional_downsampling_the_first_module_at_the_new_scale_stands_in():
    """README: "where downsampling is functional (F.max_pool2d inside forward), the first module that
    runs at the new scale stands in"; FunctionalUNet pools before e2 and before e3."""
    spec, infos = discover_stages(FunctionalUNet())
    assert spec.encoder == ("e2", "e3")
    assert [i.scale for i in infos if i.role == "encoder"] == [1, 2]
    assert spec.bottleneck == "e3"


# ---------------------------------------------------------------------------- "Serialisable"
def test_state_dict_keys_are_backbone_prompter_and_adapters():
    """README: "state_dict() round-trips (keys backbone.*, prompter.*, adapters.*)"."""
    torch.manual_seed(0)
    unet = ModuleListUNet()
    net = wrap_unet(unet, prompter=ConStyleV2(), inject=("encoder", "bottleneck", "decoder"))
    state = net.state_dict()
    assert {k.split(".", 1)[0] for k in state} == {"backbone", "prompter", "adapters"}
    assert {k[len("backbone."):] for k in state if k.startswith("backbone.")} == set(unet.state_dict())
    assert {k[len("prompter."):] for k in state if k.startswith("prompter.")} == set(net.prompter.state_dict())
    assert {k.split(".")[1] for k in state if k.startswith("adapters.")} == {
        "encoder1", "encoder2", "encoder3", "bottleneck", "decoder1", "decoder2", "decoder3"}
    # the backbone's own entries are exactly the bare network's: loadable into an unwrapped copy
    bare = ModuleListUNet()
    bare.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()


# ---------------------------------------------------------------------------- "Precision and device"
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_after_wrapping_converts_everything_prompter_included(dtype):
    """README: "`net.half()` after wrapping converts everything, prompter included" (and the identity at
    wrap time still holds in that precision)."""
    torch.manual_seed(0)
    unet = ModuleListUNet(width=4)
    reference = ModuleListUNet(width=4)
    reference.load_state_dict(unet.state_dict())
    net = wrap_unet(unet, prompter=ConStyleV2()).to(dtype).eval()
    floats = [t for t in net.state_dict().values() if t.is_floating_point()]
    assert floats and all(t.dtype == dtype for t in floats)
    assert all(t.dtype == dtype for t in net.prompter.state_dict().values() if t.is_floating_point())
    x = torch.rand(2, 3, 16, 16).to(dtype)
    seen = []
    net.prompter.register_forward_hook(lambda m, a, out: seen.append(out.latent.dtype))
    with torch.no_grad():
        out = net(x)
        expected = reference.to(dtype).eval()(x)
    assert seen == [dtype]  # the prompter ran in that precision
    assert out.dtype == dtype and torch.equal(out, expected)

