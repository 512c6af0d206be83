"""wrap_unet on MLP and transformer U-Nets written the way such networks are written (tests/unets.py):
a MAXIM-style MLP U-Net, a Uformer-style token U-Net (square inputs only), a Swin-style channels-last
one; and what cannot be wrapped is refused at wrap time, never with a crash inside the network."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from constyle_plugin import ConStyleV2, StageSpec, wrap_unet
from constyle_plugin.core.unet import UNetStructureError, discover_stages

from unets import MixerUNet, SwinStyleUNet, TokenUNet, live_adapters


def prompter(seed=0):
    torch.manual_seed(seed)
    return ConStyleV2()


CASES = {
    # network, input, expected spec (written from the network's design, not read from discovery)
    "maxim_style": (lambda: MixerUNet(width=4), (2, 3, 32, 48),
                    StageSpec(encoder=("enc0", "enc1", "enc2"), bottleneck="bottleneck",
                              decoder=("dec2", "dec1", "dec0"))),
    "uformer_style": (lambda: TokenUNet(width=4), (2, 3, 32, 32),
                      StageSpec(encoder=("dowsample_0", "dowsample_1", "dowsample_2"), bottleneck="conv",
                                decoder=("upsample_0", "upsample_1", "upsample_2", "upsample_3"))),
    "swin_style": (lambda: SwinStyleUNet(width=4), (2, 3, 32, 48),
                   StageSpec(encoder=("merges.0", "merges.1", "merges.2"), bottleneck="mlp",
                             decoder=("ups.0", "ups.1", "ups.2"))),
}
LAYOUTS = {"maxim_style": "BCHW", "uformer_style": "BLC", "swin_style": "BHWC"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_discovery_finds_the_stages(case):
    build, _, expected = CASES[case]
    spec, infos = discover_stages(build())
    assert spec == expected
    assert [i.scale for i in infos if i.role == "encoder"] == [1, 2, 3]
    assert {i.layout for i in infos if i.role in ("encoder", "bottleneck")} == {LAYOUTS[case]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_identity_at_wrap_time_then_the_prompt_reaches_the_output(case):
    build, shape, _ = CASES[case]
    torch.manual_seed(0)
    unet = build().eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = unet(x)
    net = wrap_unet(unet, prompter=prompter(), inject=("encoder", "bottleneck", "decoder")).eval()
    with torch.no_grad():
        assert torch.equal(net(x), before)
    live_adapters(net)
    with torch.no_grad():
        prompted = net(x)
        assert (prompted - before).abs().max() > 1e-4
        other = copy.deepcopy(net)
        for p in other.prompter.parameters():
            p.mul_(0.5)
        assert (other(x) - prompted).abs().max() > 1e-5  # the prompt, not only the adapters, matters
    net.train()
    F.l1_loss(net(x), x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.injections.parameters())


def test_token_unet_falls_back_to_a_square_probe_and_says_so():
    unet = TokenUNet(width=4)
    with pytest.raises(RuntimeError):  # the network itself refuses non-square inputs
        unet(torch.rand(1, 3, 32, 48))
    net = wrap_unet(unet, prompter=prompter())
    assert "square probe 256 x 256" in net.describe()
    assert net.stages.bottleneck == "conv"  # a stage output, not a layer inside its MLP
    assert "BLC" in net.describe()


def test_maxim_style_decoder_is_the_main_path_not_a_skip_resampler():
    spec, infos = discover_stages(MixerUNet(width=4))
    assert not any(n.startswith(("resample", "global_up")) for n in spec.names())
    assert [i.scale for i in infos if i.role == "decoder"] == [2, 1, 0]


class BrokenUNet(nn.Module):
    """Raises inside its forward for any input (a bug, or an input it cannot take)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], 5, -1)


class ChannelsLastNoDown(nn.Module):
    """Channels-last MLP, never changes resolution: not a U-Net."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.mlp = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)
        return x + self.out(self.mlp(y).permute(0, 3, 1, 2))


def test_a_network_that_raises_is_refused_at_wrap_time_with_its_error():
    with pytest.raises(UNetStructureError) as info:
        wrap_unet(BrokenUNet(), prompter=prompter())
    message = str(info.value)
    assert "failed inside BrokenUNet" in message and "square 256 x 256" in message
    assert "RuntimeError" in message and "StageSpec" in message and "probe_size" in message


def test_no_unet_refusal_says_what_the_probe_saw():
    with pytest.raises(UNetStructureError, match=r"no downsampling.*saw, at the top level: stem: 1/1 -> 1/1 8ch; "
                                                 r"mlp: 1/1 -> 1/1 8ch BHWC.*StageSpec"):
        wrap_unet(ChannelsLastNoDown(), prompter=prompter())


def test_explicit_spec_on_token_stages_and_a_non_map_module_is_refused():
    unet = TokenUNet(width=4)
    net = wrap_unet(unet, prompter=prompter(), stages=StageSpec(encoder=("dowsample_0",), bottleneck="conv"))
    assert [(i.layout, i.scale) for i in net.stage_info] == [("BLC", 1), ("BLC", 4)]
    with pytest.raises(UNetStructureError, match=r"'encoderlayer_0.blocks.0.attn' returns no feature map"):
        wrap_unet(TokenUNet(width=4), prompter=prompter(),
                  stages=StageSpec(encoder=("encoderlayer_0.blocks.0.attn",), bottleneck="conv"))


class NamedTupleDownUNet(nn.Module):
    """Encoder steps that return a namedtuple (down, skip)."""

    Out = __import__("collections").namedtuple("Out", ["down", "skip"])

    class Down(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x):
            skip = torch.relu(self.conv(x))
            return NamedTupleDownUNet.Out(F.avg_pool2d(skip, 2), skip)

    def __init__(self):
        super().__init__()
        self.d1, self.d2 = self.Down(3, 4), self.Down(4, 8)
        self.u2, self.u1 = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ConvTranspose2d(12, 4, 2, stride=2)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.d2(a.down)
        y = self.u2(b.down)
        y = self.u1(torch.cat([y, b.skip], 1))
        return self.out(torch.cat([y, a.skip], 1))


def test_namedtuple_stage_outputs_stay_namedtuples():
    net = live_adapters(wrap_unet(NamedTupleDownUNet(), prompter=prompter()))
    assert net.stages.encoder == ("d1", "d2")
    with torch.no_grad():
        assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
