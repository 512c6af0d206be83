"""Reference U-Nets (NAFNet, Restormer, ConvUNet) and their ready StageSpecs."""
from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from constyle_plugin.adapters import convunet_spec, nafnet_spec, restormer_spec, stage_spec_for
from constyle_plugin.archs import MAXIM, ConvUNet, NAFNet, Restormer
from constyle_plugin.archs.restormer import MDTA, BiasFreeLayerNorm2d
from constyle_plugin.core.unet import StageSpec

torch.manual_seed(0)


def tiny_nafnet(**kw):
    args = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])
    args.update(kw)
    return NAFNet(**args)


def tiny_restormer(**kw):
    args = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4],
                ffn_expansion_factor=2.0)
    args.update(kw)
    return Restormer(**args)


def tiny_convunet(**kw):
    args = dict(width=8, depth=3, blocks_per_level=1)
    args.update(kw)
    return ConvUNet(**args)


def tiny_maxim(**kw):
    # block / grid 2 at the first two levels, 1 below: size_multiple 8 like the other tiny archs;
    # width 8 and reduction 1: with fewer hidden ReLU units in the channel attention, a random init
    # can leave them all dead (their weights then get no gradient)
    args = dict(width=8, depth=3, num_groups=1, num_bottleneck_blocks=1, block_size_hr=2, grid_size_hr=2,
                block_size_lr=1, grid_size_lr=1, reduction=1)
    args.update(kw)
    return MAXIM(**args)


TINY = {"nafnet": tiny_nafnet, "restormer": tiny_restormer, "convunet": tiny_convunet, "maxim": tiny_maxim}
OUTPUT_CONV = {"nafnet": "ending", "restormer": "output", "convunet": "ending", "maxim": "ending"}


def randomise_residual_scales(model: nn.Module) -> None:
    """NAFBlocks start as the identity (beta = gamma = 0); give them non-zero scales for the tests."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.5)


# ------------------------------------------------------------------ shapes and padding
@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("size", [(32, 32), (37, 53), (3, 5)])
def test_output_size_equals_input_size(arch, size):
    model = TINY[arch]().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert model.size_multiple == 8


@pytest.mark.parametrize("arch, mode", [("nafnet", "constant"), ("restormer", "reflect"),
                                        ("convunet", "reflect")])
def test_padding_mode_and_crop(arch, mode):
    """model(x) is model(pad(x)) cropped to the top-left H x W, with the documented pad mode."""
    model = TINY[arch]().eval()
    randomise_residual_scales(model)
    x = torch.rand(1, 3, 37, 53)
    padded = F.pad(x, (0, 56 - 53, 0, 40 - 37), mode=mode)
    with torch.no_grad():
        y, y_full = model(x), model(padded)
    assert y_full.shape[-2:] == (40, 56)
    torch.testing.assert_close(y, y_full[..., :37, :53])
    # the other border rule must give a different answer, or this test could not tell them apart
    other = F.pad(x, (0, 3, 0, 3), mode="replicate")
    with torch.no_grad():
        assert not torch.allclose(y, model(other)[..., :37, :53])


def test_reflect_falls_back_to_replicate_when_input_is_smaller_than_the_pad():
    model = tiny_convunet().eval()
    x = torch.rand(1, 3, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(F.pad(x, (0, 3, 0, 5), mode="replicate"))[..., :3, :5])


@pytest.mark.parametrize("arch", sorted(TINY))
def test_global_residual(arch):
    """With the last conv zeroed the network returns its input exactly, pixel-aligned after the crop."""
    model = TINY[arch]().eval()
    conv = getattr(model, OUTPUT_CONV[arch])
    with torch.no_grad():
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        x = torch.rand(1, 3, 37, 53)
        torch.testing.assert_close(model(x), x)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_backward_reaches_every_parameter(arch):
    model = TINY[arch]().train()
    randomise_residual_scales(model)
    x = torch.rand(2, 3, 19, 24, requires_grad=True)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_fresh_nafblocks_still_receive_gradient_on_their_scales():
    model = tiny_nafnet()
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    assert model.encoders[0][0].beta.grad.abs().sum() > 0
    assert model.middle_blks[0].gamma.grad.abs().sum() > 0


@pytest.mark.parametrize("make, channels, error", [
    (tiny_nafnet, 3, "NAFNet"), (tiny_restormer, 3, "Restormer"), (tiny_convunet, 3, "ConvUNet")])
def test_wrong_input_is_a_clear_error(make, channels, error):
    model = make()
    with pytest.raises(ValueError, match=f"{error}: input must be B x {channels} x H x W"):
        model(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match=error):
        model(torch.rand(3, 16, 16))


def test_bad_constructor_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="enc_blk_nums"):
        NAFNet(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        Restormer(dim=6, num_blocks=[1, 1, 1, 1], heads=[4, 1, 1, 1])
    with pytest.raises(ValueError, match="LayerNorm_type"):
        Restormer(dim=8, num_blocks=[1, 1, 1, 1], LayerNorm_type="Bias")
    with pytest.raises(ValueError, match="pad_mode"):
        ConvUNet(width=8, pad_mode="circularish")


def test_other_channel_counts():
    gray = NAFNet(img_channel=1, width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    assert gray(torch.rand(1, 1, 13, 9)).shape == (1, 1, 13, 9)
    dp = Restormer(inp_channels=6, out_channels=3, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                   dual_pixel_task=True)
    assert dp(torch.rand(1, 6, 13, 9)).shape == (1, 3, 13, 9)
    conv = ConvUNet(in_channels=1, out_channels=3, width=8, depth=2, blocks_per_level=1)
    assert not conv.global_residual and conv.size_multiple == 4
    assert conv(torch.rand(1, 1, 13, 9)).shape == (1, 3, 13, 9)


# ------------------------------------------------------------------ layers against the papers
def nafblock_params(c: int, e: int = 2, f: int = 2) -> int:
    """Parameters of one NAFBlock, from the paper's layer list (e = DW expansion, f = FFN expansion)."""
    d, g = e * c, f * c
    return (2 * c                      # LayerNorm 1 (weight, bias)
            + c * d + d                # 1x1 conv c -> d
            + 9 * d + d                # 3x3 depthwise conv
            + (d // 2) ** 2 + d // 2   # SCA: 1x1 conv after global pooling, on the gated d/2 channels
            + (d // 2) * c + c         # 1x1 conv d/2 -> c
            + c                        # beta
            + 2 * c                    # LayerNorm 2
            + c * g + g                # FFN 1x1 conv c -> g
            + (g // 2) * c + c         # FFN 1x1 conv g/2 -> c
            + c)                       # gamma


def nafnet_params(img: int, width: int, middle: int, enc, dec, e: int = 2, f: int = 2) -> int:
    total = (img * width * 9 + width) + (width * img * 9 + img)  # intro and ending 3x3 convs
    c = width
    for n in enc:
        total += n * nafblock_params(c, e, f)
        total += c * 2 * c * 4 + 2 * c  # 2x2 stride-2 conv, c -> 2c
        c *= 2
    total += middle * nafblock_params(c, e, f)
    for n in dec:
        total += c * 2 * c              # 1x1 conv c -> 2c without bias, then PixelShuffle(2)
        c //= 2
        total += n * nafblock_params(c, e, f)
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cfg", [
    dict(img_channel=3, width=8, middle_blk_num=2, enc_blk_nums=[1, 2, 3], dec_blk_nums=[1, 1, 2]),
    dict(img_channel=1, width=6, middle_blk_num=0, enc_blk_nums=[2, 0], dec_blk_nums=[0, 1], dw_expand=4,
         ffn_expand=3),
])
def test_nafnet_parameter_count_matches_the_layer_list(cfg):
    e, f = cfg.get("dw_expand", 2), cfg.get("ffn_expand", 2)
    expected = nafnet_params(cfg["img_channel"], cfg["width"], cfg["middle_blk_num"], cfg["enc_blk_nums"],
                             cfg["dec_blk_nums"], e, f)
    assert n_params(NAFNet(**cfg)) == expected


def test_default_sizes_match_the_papers():
    # NAFNet-GoPro-width32: 17.11 M (NAFNet paper); Restormer: 26.13 M (Restormer paper)
    nafnet = NAFNet()
    assert round(n_params(nafnet) / 1e6, 2) == 17.11
    assert n_params(nafnet) == nafnet_params(3, 32, 1, [1, 1, 1, 28], [1, 1, 1, 1])
    assert round(n_params(Restormer()) / 1e6, 2) == 26.13


def test_checkpoint_key_layout_of_the_releases():
    """Parameter names and shapes as in the authors' released NAFNet / Restormer checkpoints."""
    naf = NAFNet(width=32, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).state_dict()
    expected = {"intro.weight": (32, 3, 3, 3), "encoders.0.0.norm1.weight": (32,), "encoders.0.0.conv1.weight":
                (64, 32, 1, 1), "encoders.0.0.conv2.weight": (64, 1, 3, 3), "encoders.0.0.sca.1.weight":
                (32, 32, 1, 1), "encoders.0.0.conv3.weight": (32, 32, 1, 1), "encoders.0.0.beta": (1, 32, 1, 1),
                "encoders.0.0.conv5.weight": (32, 32, 1, 1), "downs.0.weight": (64, 32, 2, 2),
                "middle_blks.0.gamma": (1, 128, 1, 1), "ups.0.0.weight": (256, 128, 1, 1),
                "decoders.1.0.norm2.bias": (32,), "ending.weight": (3, 32, 3, 3)}
    assert {k: tuple(naf[k].shape) for k in expected} == expected
    res = Restormer(dim=48, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).state_dict()
    expected = {"patch_embed.proj.weight": (48, 3, 3, 3), "encoder_level1.0.norm1.body.weight": (48,),
                "encoder_level1.0.norm1.body.bias": (48,), "encoder_level1.0.attn.temperature": (1, 1, 1),
                "encoder_level1.0.attn.qkv.weight": (144, 48, 1, 1),
                "encoder_level1.0.attn.qkv_dwconv.weight": (144, 1, 3, 3),
                "encoder_level1.0.attn.project_out.weight": (48, 48, 1, 1),
                "encoder_level1.0.ffn.project_in.weight": (254, 48, 1, 1),
                "encoder_level1.0.ffn.dwconv.weight": (254, 1, 3, 3),
                "encoder_level1.0.ffn.project_out.weight": (48, 127, 1, 1),
                "down1_2.body.0.weight": (24, 48, 3, 3), "latent.0.attn.temperature": (8, 1, 1),
                "up4_3.body.0.weight": (768, 384, 3, 3), "reduce_chan_level3.weight": (192, 384, 1, 1),
                "reduce_chan_level2.weight": (96, 192, 1, 1), "decoder_level1.0.norm2.body.weight": (96,),
                "refinement.0.attn.temperature": (1, 1, 1), "output.weight": (3, 96, 3, 3)}
    assert {k: tuple(res[k].shape) for k in expected} == expected
    assert not any(k.endswith(".bias") and "norm" not in k for k in res)  # bias=False by default


def test_timm_layernorm2d_is_nafnet_channel_layernorm():
    x = torch.randn(2, 5, 4, 3)
    ln = LayerNorm2d(5)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    ref = (x - mu) / (var + 1e-6).sqrt() * ln.weight.view(1, 5, 1, 1) + ln.bias.view(1, 5, 1, 1)
    assert ln.eps == 1e-6
    torch.testing.assert_close(ln(x), ref)


def test_restormer_biasfree_layernorm():
    x = torch.randn(2, 5, 4, 3) + 3.0
    ln = BiasFreeLayerNorm2d(5)
    with torch.no_grad():
        ln.weight.normal_()
    var = (x - x.mean(1, keepdim=True)).pow(2).mean(1, keepdim=True)
    torch.testing.assert_close(ln(x), x / (var + 1e-5).sqrt() * ln.weight.view(1, 5, 1, 1))
    model = tiny_restormer(LayerNorm_type="BiasFree")
    assert model(torch.rand(1, 3, 9, 9)).shape == (1, 3, 9, 9)


def _identity_mdta(dim: int, heads: int) -> MDTA:
    """MDTA whose q = k = v = x and whose output projection is the identity."""
    attn = MDTA(dim, heads)
    eye = torch.eye(dim).view(dim, dim, 1, 1)
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.cat([eye, eye, eye]))
        attn.qkv_dwconv.weight.zero_()
        attn.qkv_dwconv.weight[:, :, 1, 1] = 1
        attn.project_out.weight.copy_(eye)
    return attn


def test_mdta_heads_attend_within_their_channel_group():
    x = torch.randn(1, 4, 6, 5)
    x2 = x.clone()
    x2[:, 2:] = torch.randn(1, 2, 6, 5)  # change only head 1's channels (heads=2 -> groups {0,1}, {2,3})
    two = _identity_mdta(4, heads=2)
    with torch.no_grad():
        a, b = two(x), two(x2)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])
    one = _identity_mdta(4, heads=1)
    with torch.no_grad():
        assert not torch.allclose(one(x)[:, :2], one(x2)[:, :2])


def test_mdta_is_softmax_over_normalised_channel_correlations():
    """One head, q = k = v = x: out = softmax(t * q_hat k_hat^T) v over channels, for any temperature."""
    attn = _identity_mdta(3, heads=1)
    with torch.no_grad():
        attn.temperature.fill_(2.5)
    x = torch.randn(2, 3, 4, 5)
    flat = x.flatten(2)
    unit = flat / flat.norm(dim=-1, keepdim=True)
    weights = torch.softmax(2.5 * unit @ unit.transpose(1, 2), dim=-1)  # B x 3 x 3
    with torch.no_grad():
        torch.testing.assert_close(attn(x), (weights @ flat).view_as(x))


def test_restormer_temperature_is_learned_per_head():
    model = tiny_restormer()
    assert model.latent[0].attn.temperature.shape == (4, 1, 1)
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    assert model.latent[0].attn.temperature.grad.abs().sum() > 0


# ------------------------------------------------------------------ adapters
CASES = {
    "nafnet": (tiny_nafnet, nafnet_spec),
    "nafnet-4-levels": (lambda: tiny_nafnet(enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]), nafnet_spec),
    "nafnet-2-levels": (lambda: tiny_nafnet(enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), nafnet_spec),
    "restormer": (tiny_restormer, restormer_spec),
    "convunet": (tiny_convunet, convunet_spec),
    "convunet-4-levels": (lambda: tiny_convunet(depth=4), convunet_spec),
}


def _measure(model: nn.Module, names, x: torch.Tensor):
    """Output H x W of each named module and how many times it ran, measured with forward hooks."""
    modules = dict(model.named_modules())
    seen = {n: [] for n in names}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen[n].append(tuple(o.shape[-2:])))
               for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("size", [(32, 48), (37, 53)])
def test_stage_specs_point_at_the_right_scales(case, size):
    make, spec_fn = CASES[case]
    model = make().eval()
    spec = spec_fn(model)
    assert stage_spec_for(model) == spec
    names = spec.names()
    assert set(names) <= dict(model.named_modules()).keys()
    m = model.size_multiple
    ph, pw = -(-size[0] // m) * m, -(-size[1] // m) * m  # the padded size the network works at
    seen = _measure(model, names, torch.rand(1, 3, *size))
    assert all(len(v) == 1 for v in seen.values()), seen  # each hook point runs once per forward
    levels = m.bit_length() - 1
    assert len(spec.encoder) == min(3, levels)
    for i, name in enumerate(spec.encoder):
        assert seen[name] == [(ph >> (i + 1), pw >> (i + 1))], name
    assert seen[spec.bottleneck] == [(ph >> levels, pw >> levels)]
    assert len(spec.decoder) == levels
    for i, name in enumerate(spec.decoder):
        assert seen[name] == [(ph >> (levels - 1 - i), pw >> (levels - 1 - i))], name


def test_stage_spec_for_known_names():
    assert stage_spec_for(tiny_restormer()) == StageSpec(encoder=("down1_2", "down2_3", "down3_4"),
                                                         bottleneck="latent", decoder=("up4_3", "up3_2", "up2_1"))
    assert stage_spec_for(NAFNet()) == StageSpec(encoder=("downs.0", "downs.1", "downs.2"), bottleneck="middle_blks",
                                                 decoder=("ups.0", "ups.1", "ups.2", "ups.3"))


def test_stage_spec_for_lookalikes_and_strangers():
    ours = tiny_nafnet(enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])

    class NAFNet(nn.Module):  # another code base's NAFNet: same class name and submodule names
        def __init__(self):
            super().__init__()
            for name, child in ours.named_children():
                self.add_module(name, child)

    class NAFNetLocal(NAFNet):
        pass

    for cls in (NAFNet, NAFNetLocal):
        assert stage_spec_for(cls()) == StageSpec(encoder=("downs.0", "downs.1"), bottleneck="middle_blks",
                                                  decoder=("ups.0", "ups.1"))

    class MyNet(nn.Module):  # same layout, unknown name: left to discovery
        def __init__(self):
            super().__init__()
            for name, child in ours.named_children():
                self.add_module(name, child)

    assert stage_spec_for(MyNet()) is None

    class Restormer(nn.Module):  # known name, wrong layout
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 3)

    assert stage_spec_for(Restormer()) is None
    assert stage_spec_for(nn.Sequential(nn.Conv2d(3, 3, 3))) is None
    with pytest.raises(ValueError, match="Restormer stage spec: Restormer has no submodule"):
        restormer_spec(Restormer())


def test_stage_spec_for_dataparallel_prefixes_names():
    wrapped = nn.DataParallel(tiny_convunet())
    spec = stage_spec_for(wrapped)
    assert spec.encoder == ("module.downs.0", "module.downs.1", "module.downs.2")
    assert spec.bottleneck == "module.bottleneck"
    assert set(spec.names()) <= dict(wrapped.named_modules()).keys()


def test_adapters_import_only_torch_and_the_core():
    import constyle_plugin.adapters as adapters

    tree = ast.parse(pathlib.Path(adapters.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    allowed_roots = {"torch", "typing", "__future__"}
    core = {"constyle_plugin.core.stages", "constyle_plugin.core.unet", "constyle_plugin.core.prompter", "constyle_plugin.core.injection"}
    assert imported, "the parser found no imports at all"
    bad = {m for m in imported if m.split(".")[0] not in allowed_roots and m not in core}
    assert not bad, bad
