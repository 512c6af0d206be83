"""wrap_unet on what a new user hands it: a compiled module, a forward that takes more than the image
or returns a dict, images outside [0, 1], a pooling module reused at every level; and unwrapping."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from constyle_plugin import ConStyleV2, unwrap_unet, wrap_unet
from constyle_plugin.errors import UNetStructureError

import unets
from unets import ModuleListUNet, block


def prompter(seed: int = 0) -> ConStyleV2:
    torch.manual_seed(seed)
    return ConStyleV2()


class MaskedUNet(nn.Module):
    """forward(x, mask) -> {"out": ..., "skip": ...}: an extra input and a dict output."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.inner = ModuleListUNet(width=width, depth=2)
        self.gate = nn.Conv2d(1, 3, 1)

    def forward(self, x, mask, scale: float = 1.0):
        y = self.inner(x * torch.sigmoid(self.gate(mask)) * scale)
        return {"out": y, "skip": x}


def test_compiled_module_is_wrapped_inside_and_said_in_a_fresh_process():
    code = textwrap.dedent("""
        import warnings, torch
        from constyle_plugin import ConStyleV2, wrap_unet
        import unets
        torch.manual_seed(0)
        unet = unets.ModuleListUNet(width=4, depth=2)
        compiled = torch.compile(unet)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = wrap_unet(compiled, prompter=ConStyleV2())
        assert net.backbone is unet, type(net.backbone)
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(net(x), unet(x))
        print("WARN:", " | ".join(str(w.message) for w in caught))
    """)
    import os
    from pathlib import Path
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = proc.stdout.split("WARN:", 1)[1]
    assert "_orig_mod" in warning and "torch.compile(wrap_unet(" in warning, warning


def test_example_inputs_positional_for_a_forward_with_a_mask_and_a_dict_output():
    torch.manual_seed(0)
    unet = MaskedUNet()
    x, mask = torch.rand(2, 3, 32, 24), torch.rand(2, 1, 32, 24)
    net = wrap_unet(unet, prompter=prompter(), example_inputs=(x, mask))
    assert [i.role for i in net.stage_info].count("encoder") == 2
    with torch.no_grad():
        want, got = unet(x, mask), net(x, mask)
    assert set(got) == {"out", "skip"}
    torch.testing.assert_close(got["out"], want["out"])
    unets.live_adapters(net, scale=0.05)
    with torch.no_grad():
        assert not torch.allclose(net(x, mask)["out"], want["out"]), "the prompt never reached the output"
    # the wrapped net is called as the user's net is, keyword arguments included
    with torch.no_grad():
        torch.testing.assert_close(net(x, mask=mask, scale=0.5)["out"], net(x, mask, 0.5)["out"])


def test_example_inputs_as_keywords_and_with_an_explicit_stage_spec():
    torch.manual_seed(0)
    unet = MaskedUNet()
    x, mask = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    net = wrap_unet(unet, prompter=prompter(), example_inputs={"x": x, "mask": mask})
    spec = net.stages
    again = wrap_unet(MaskedUNet(), prompter=prompter(), stages=spec, example_inputs=(x, mask))
    assert again.stages == spec
    with torch.no_grad():
        torch.testing.assert_close(net(x=x, mask=mask)["out"], unet(x, mask)["out"])


def test_example_inputs_must_start_with_an_image():
    with pytest.raises(UNetStructureError, match="example_inputs"):
        wrap_unet(MaskedUNet(), prompter=prompter(), example_inputs=("not an image",))


def test_a_forward_that_needs_more_than_the_image_points_to_example_inputs():
    with pytest.raises(UNetStructureError) as info:
        wrap_unet(MaskedUNet(), prompter=prompter())
    message = str(info.value)
    assert "MaskedUNet.forward(x, mask, scale) needs 'mask' besides the image" in message
    assert "example_inputs=(x, mask)" in message and "probe_size" not in message


class InterpolateDecoderUNet(nn.Module):
    """Strided-conv encoder, a decoder that upsamples with F.interpolate in forward (no upsampling module)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.down1, self.down2 = nn.Conv2d(width, 2 * width, 2, 2), nn.Conv2d(2 * width, 4 * width, 2, 2)
        self.mid = block(4 * width, 4 * width)
        self.dec2, self.dec1 = block(6 * width, 2 * width), block(3 * width, width)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        s0 = self.head(x)
        s1 = self.down1(s0)
        y = self.mid(self.down2(s1))
        y = self.dec2(torch.cat([F.interpolate(y, scale_factor=2.0), s1], 1))
        y = self.dec1(torch.cat([F.interpolate(y, scale_factor=2.0), s0], 1))
        return x + self.tail(y)


def test_a_decoder_that_upsamples_in_forward_asked_for_gets_the_stage_spec_hint():
    from constyle_plugin import StageSpec

    with pytest.raises(UNetStructureError) as info:
        wrap_unet(InterpolateDecoderUNet(), prompter=prompter(), inject=("encoder", "decoder"))
    message = str(info.value)
    assert "asks for ['decoder']" in message and "F.interpolate" in message
    assert "stages=StageSpec(encoder=[...], bottleneck=..., decoder=[" in message
    # the hint works: the decoder's modules named explicitly
    net = wrap_unet(InterpolateDecoderUNet(), prompter=prompter(), inject=("encoder", "decoder"),
                    stages=StageSpec(encoder=["down1", "down2"], bottleneck="mid", decoder=["dec2", "dec1"]))
    assert [i.name for i in net.stage_info if i.role == "decoder"] == ["dec2", "dec1"]


def range_warnings(net, *batches):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            for batch in batches:
                net(batch)
    return [str(w.message) for w in caught if "[0, 1]" in str(w.message)]


@pytest.mark.parametrize("make, seen", [
    (lambda: torch.rand(2, 3, 16, 16) * 255, "0..255"),
    (lambda: torch.rand(2, 3, 16, 16) * 2 - 1, "[-1, 1]"),
])
def test_images_outside_0_1_warn_once_per_wrapped_net(make, seen):
    net = wrap_unet(ModuleListUNet(width=4, depth=2), prompter=prompter())
    found = range_warnings(net, make(), make(), make())
    assert len(found) == 1, found
    assert seen in found[0] and "[0, 1]" in found[0]
    other = wrap_unet(ModuleListUNet(width=4, depth=2), prompter=prompter())
    assert len(range_warnings(other, make())) == 1


def test_noise_and_overshoot_just_outside_0_1_do_not_warn():
    torch.manual_seed(0)
    net = wrap_unet(ModuleListUNet(width=4, depth=2), prompter=prompter())
    clean = torch.rand(2, 3, 32, 32)
    noisy = clean + torch.randn_like(clean) * 50 / 255  # sigma-50 denoising input, not clipped
    overshoot = clean * 1.08 - 0.04
    assert range_warnings(net, clean, noisy, overshoot) == []


class SharedPoolUNet(nn.Module):
    """One MaxPool2d and one conv block reused at every level."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = block(width, width)
        self.down = nn.MaxPool2d(2)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        y = self.head(x)
        skips = []
        for _ in range(3):
            y = self.body(y)
            skips.append(y)
            y = self.down(y)
        for skip in reversed(skips):
            y = F.interpolate(y, size=skip.shape[-2:]) + skip
        return x + self.out(y)


def test_a_reused_pooling_is_reported_as_seen_but_run_more_than_once():
    with pytest.raises(UNetStructureError) as info:
        wrap_unet(SharedPoolUNet(), prompter=prompter())
    message = str(info.value)
    assert "no module that halves the resolution" not in message
    assert "'down' halves the resolution but runs 3 times per forward" in message, message
    assert "own" in message and "StageSpec" in message


def test_unwrap_keeps_the_backbone_weights_but_drops_the_prompt_and_says_so():
    torch.manual_seed(0)
    unet = ModuleListUNet(width=4, depth=2)
    net = unets.live_adapters(wrap_unet(unet, prompter=prompter()), scale=0.05)
    x = torch.rand(1, 3, 16, 16)
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        wrapped = net(x)
        bare = unwrap_unet(net)(x)
    assert all(torch.equal(weights[k], v) for k, v in unet.state_dict().items())
    assert not torch.allclose(wrapped, bare)
    doc = " ".join(unwrap_unet.__doc__.split())
    assert "output changes" in doc and "injection modules" in doc
