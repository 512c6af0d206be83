"""constyle_plugin.archs.MAXIM (MAXIM-1S): the multi-axis blocks do what the paper says, any input size
works, the ready StageSpec and discovery agree, and the default size is near the authors' model."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from constyle_plugin import ConStyleV2, wrap_unet
from constyle_plugin.adapters import maxim_spec, stage_spec_for
from constyle_plugin.archs import MAXIM
from constyle_plugin.archs.maxim import CrossGatingBlock, MultiAxisGmlpLayer, _AxisMix
from constyle_plugin.core.unet import StageSpec, discover_stages


def small(**kw):
    args = dict(width=4, depth=3, num_groups=1, num_bottleneck_blocks=1, block_size_hr=4, grid_size_hr=4,
                block_size_lr=2, grid_size_lr=2)
    args.update(kw)
    return MAXIM(**args)


def test_construction_takes_keywords_only():
    with pytest.raises(TypeError):
        MAXIM(3, 32)
    with pytest.raises(ValueError, match="MAXIM: .*depth"):
        MAXIM(depth=0)
    assert MAXIM().size_multiple == 64  # 1/8 bottleneck with 8 x 8 blocks and grid: 8 * 8
    assert small().size_multiple == 16


@pytest.mark.parametrize("size", [(16, 16), (37, 53), (5, 3), (64, 40)])
def test_any_input_size(size):
    torch.manual_seed(0)
    model = small().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_block_mixing_is_local_and_grid_mixing_is_dilated():
    torch.manual_seed(0)
    x = torch.zeros(1, 8, 8, 1)  # channels-last, 8 x 8
    x[0, 0, 0, 0] = 1.0
    for mode, expected in (("block", {(r, c) for r in range(2) for c in range(2)}),   # its own 2 x 2 block
                           ("grid", {(r, c) for r in (0, 4) for c in (0, 4)})):      # same place in each cell
        mix = _AxisMix((2, 2), mode)
        with torch.no_grad():
            mix.dense.bias.zero_()
            mix.dense.weight.fill_(1.0)
            y = mix(x)[0, :, :, 0]
        assert {tuple(i) for i in torch.nonzero(y).tolist()} == expected, mode


def test_multi_axis_layer_reaches_the_whole_image_in_one_layer():
    # the grid branch is global: a pixel influences far pixels of other blocks within one layer
    torch.manual_seed(0)
    layer = MultiAxisGmlpLayer(4, block=(2, 2), grid=(2, 2)).eval()
    x = torch.rand(1, 4, 8, 8, requires_grad=True)
    layer(x)[0, :, 7, 7].sum().backward()
    assert x.grad[0, :, 3, 3].abs().sum() > 0  # same place in another grid cell
    assert x.grad[0, :, 6, 6].abs().sum() > 0  # same block
    assert x.grad[0, :, 0, 5].abs().sum() == 0  # neither


def test_cross_gating_each_input_gates_the_other():
    torch.manual_seed(0)
    block = CrossGatingBlock(6, 4, 4, (2, 2), (2, 2)).eval()
    x, y = torch.rand(1, 6, 8, 8), torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        x1, y1 = block(x, y)
        x2, y2 = block(x, y * 2)
        x3, y3 = block(x * 2, y)
    assert x1.shape == y1.shape == (1, 4, 8, 8)
    assert not torch.allclose(x1, x2) and not torch.allclose(y1, y3)


def test_encoders_return_downsampled_and_skip_from_a_multi_scale_input():
    model = small().eval()
    seen = {}
    for i, enc in enumerate(model.encoders):
        enc.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0].shape, [t.shape for t in o])))
    for i, conv in enumerate(model.inputs):
        conv.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"in{i}", a[0].shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 48))
    assert [seen[f"in{i}"][-2:] for i in range(3)] == [(32, 48), (16, 24), (8, 12)]  # the image pyramid
    for i in range(3):
        down, skip = seen[i][1]
        assert skip[-2:] == (32 >> i, 48 >> i) and down[-2:] == (32 >> (i + 1), 48 >> (i + 1))


def test_ready_spec_and_discovery_agree_and_wrap_as_identity():
    torch.manual_seed(0)
    model = small().eval()
    expected = StageSpec(encoder=("encoders.0", "encoders.1", "encoders.2"), bottleneck="bottleneck",
                         decoder=("decoders.0", "decoders.1", "decoders.2"))
    assert maxim_spec(model) == stage_spec_for(model) == expected
    spec, infos = discover_stages(model)
    assert spec == expected
    assert [(i.scale, i.output_index) for i in infos if i.role == "encoder"] == [(1, 0), (2, 0), (3, 0)]
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        before = model(x)
        net = wrap_unet(model, prompter=ConStyleV2(), inject=("encoder", "bottleneck", "decoder")).eval()
        assert torch.equal(net(x), before)


def test_default_size_is_near_the_authors_constyle_maxim():
    """SPEC section 5: ConStyle-MAXIM 8.10 M parameters / 25.58 GFLOPs (thop MACs) at 2 x 3 x 128 x 128."""
    with torch.device("meta"):
        bare = MAXIM()
    prompter = ConStyleV2()
    prompter_params = sum(p.numel() for n, p in prompter.named_parameters() if not n.startswith("classifier"))
    params = sum(p.numel() for p in bare.parameters()) + prompter_params
    assert abs(params / 8.10e6 - 1) < 0.06
    prompter = prompter.to("meta").eval()
    prompter.check_finite = False  # meta tensors hold no values
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        bare(torch.empty(2, 3, 128, 128, device="meta"))
        prompter(torch.empty(2, 3, 128, 128, device="meta"))
    macs = counter.get_total_flops() / 2
    assert abs(macs / 25.58e9 - 1) < 0.2


# ------------------------------------------------------------------ options files
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _without(opt, *keys):
    return {k: v for k, v in opt.items() if k not in keys}


def test_basicsr_options_are_the_nafnet_recipe_with_a_maxim():
    yaml = pytest.importorskip("yaml")
    load = lambda name: yaml.safe_load((ROOT / "options" / name).read_text())  # noqa: E731
    for variant in ("constyle", "origin"):
        maxim, nafnet = load(f"maxim_{variant}.yml"), load(f"nafnet_{variant}.yml")
        assert _without(maxim, "name", "network_g") == _without(nafnet, "name", "network_g"), variant
        assert maxim["name"] == {"constyle": "MAXIM_ConStyle_v2", "origin": "MAXIM_origin"}[variant]
    constyle, origin = load("maxim_constyle.yml")["network_g"], load("maxim_origin.yml")["network_g"]
    assert _without(constyle, "backbone") == _without(load("nafnet_constyle.yml")["network_g"], "backbone")
    assert constyle["backbone"] == origin
    kwargs = _without(origin, "type")
    assert origin["type"] == "MAXIM"
    with torch.device("meta"):
        built = MAXIM(**kwargs)
        default = MAXIM()
    assert [p.shape for p in built.parameters()] == [p.shape for p in default.parameters()]


def test_mmengine_configs_build_the_same_maxim():
    mmengine = pytest.importorskip("mmengine")
    cfg = mmengine.Config.fromfile(str(ROOT / "options" / "mmengine" / "maxim_constyle.py"))
    origin = mmengine.Config.fromfile(str(ROOT / "options" / "mmengine" / "maxim_origin.py"))
    nafnet = mmengine.Config.fromfile(str(ROOT / "options" / "mmengine" / "nafnet_constyle.py"))
    backbone = dict(cfg.model.backbone)
    assert backbone.pop("type") == "MAXIM"
    with torch.device("meta"):
        built = MAXIM(**backbone)
    assert built.size_multiple == 64
    assert origin.model.prompter is None and origin.model.backbone == cfg.model.backbone
    for key in ("optim_wrapper", "param_scheduler", "train_cfg", "custom_hooks", "train_dataloader"):
        assert cfg.get(key) == nafnet.get(key), key
