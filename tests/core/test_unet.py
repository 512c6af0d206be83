"""wrap_unet / unwrap_unet on U-Nets written in different styles (tests/unets.py)."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from constyle_plugin import ConStyleV2, StageSpec
from constyle_plugin.core.unet import ConStyleUNet, UNetStructureError, discover_stages, unwrap_unet, wrap_unet

from unets import EncoderOnly, FunctionalUNet, ModuleListUNet, PlainCNN, SequentialUNet, TupleDownUNet

STYLES = {
    "modulelist_3down": (ModuleListUNet, (2, 3, 32, 32)),
    "sequential_4down_bn": (SequentialUNet, (2, 3, 32, 48)),
    "functional_odd": (FunctionalUNet, (2, 3, 37, 53)),
    "tuple_outputs_shared_act": (TupleDownUNet, (2, 3, 32, 32)),
    "modulelist_odd_padded": (ModuleListUNet, (2, 3, 37, 53)),
}


def random_prompter(seed: int = 0) -> ConStyleV2:
    torch.manual_seed(seed)
    prompter = ConStyleV2()
    # Non-trivial BatchNorm statistics, so that a drift would show.
    for bn in (prompter.mlp1[1], prompter.mlp2[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return prompter


def make(style: str, seed: int = 0):
    cls, shape = STYLES[style]
    torch.manual_seed(seed)
    unet = cls()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    return unet, x


def train_steps(net: nn.Module, x: torch.Tensor, steps: int, lr: float = 1e-2) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.l1_loss(net(x), x.flip(-1))
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize("style", sorted(STYLES))
def test_identity_at_wrap_time(style):
    unet, x = make(style)
    unet.eval()
    with torch.no_grad():
        before = unet(x)
    net = wrap_unet(unet, prompter=random_prompter()).eval()
    with torch.no_grad():
        after = net(x)
    assert after.shape == x.shape
    assert (after - before).abs().max().item() == 0.0
    assert net.backbone is unet


@pytest.mark.parametrize("style", sorted(STYLES))
def test_training_changes_output_and_keeps_prompter_frozen(style):
    unet, x = make(style)
    net = wrap_unet(unet, prompter=random_prompter())
    prompter_state = {k: v.clone() for k, v in net.prompter.state_dict().items()}
    net.eval()
    with torch.no_grad():
        before = net(x)
    opt = train_steps(net, x, steps=1)
    net.eval()
    with torch.no_grad():
        after_one = net(x)
    assert (after_one - before).abs().max().item() > 0
    train_steps(net, x, steps=4)
    assert not net.prompter.training
    for key, value in net.prompter.state_dict().items():
        assert torch.equal(value, prompter_state[key]), key
    assert all(not p.requires_grad for p in net.prompter.parameters())
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in net.prompter.parameters()}
    # the adapters trained: at least the zero-initialised fusions moved away from zero
    assert any(p.abs().sum() > 0 for n, p in net.injections.named_parameters() if "fuse.weight" in n)


@pytest.mark.parametrize("style", ["modulelist_3down", "tuple_outputs_shared_act"])
def test_deepcopy_and_state_dict_round_trip(style):
    unet, x = make(style)
    net = wrap_unet(unet, prompter=random_prompter())
    train_steps(net, x, steps=2)
    net.eval()
    with torch.no_grad():
        reference = net(x)
    clone = copy.deepcopy(net)
    with torch.no_grad():
        assert torch.equal(clone(x), reference)
    # the copy's hooks are bound to the copy's adapters: changing the copy leaves the original alone
    with torch.no_grad():
        for p in clone.injections.parameters():
            p.add_(0.1)
        assert not torch.equal(clone(x), reference)
        assert torch.equal(net(x), reference)

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh_unet, _ = make(style, seed=123)
    fresh = wrap_unet(fresh_unet, prompter=random_prompter(seed=5)).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), reference)


@pytest.mark.parametrize("style", ["modulelist_3down", "sequential_4down_bn"])
def test_unwrap_restores_original_forward(style):
    unet, x = make(style)
    net = wrap_unet(unet, prompter=random_prompter())
    train_steps(net, x, steps=2)
    net.eval()
    with torch.no_grad():
        wrapped_out = net(x)
        trained_state = {k: v.clone() for k, v in unet.state_dict().items()}
    hooks_before = sum(len(m._forward_hooks) for m in unet.modules())
    assert hooks_before > 0
    bare = unwrap_unet(net)
    assert bare is unet
    assert sum(len(m._forward_hooks) for m in unet.modules()) == 0
    for key, value in bare.state_dict().items():
        assert torch.equal(value, trained_state[key])
    with torch.no_grad():
        bare_out = bare(x)
    # the same trained weights without the prompt: the original forward, not the wrapped one
    reference = copy.deepcopy(bare)
    with torch.no_grad():
        assert torch.equal(reference(x), bare_out)
        assert not torch.equal(bare_out, wrapped_out)
    # and it can be wrapped again
    wrap_unet(bare, prompter=random_prompter())


def test_prompter_runs_once_per_forward_without_grad():
    unet, x = make("modulelist_3down")
    net = wrap_unet(unet, prompter=random_prompter())
    seen = []
    net.prompter.register_forward_hook(lambda m, a, out: seen.append(torch.is_grad_enabled()))
    net.train()
    net(x).sum().backward()
    assert seen == [False]
    assert not net.prompter.training and net.backbone.training


def test_discovery_reports_and_explicit_spec_matches():
    unet, x = make("modulelist_3down")
    spec, infos = discover_stages(unet)
    assert spec == StageSpec(encoder=("down.0", "down.1", "down.2"), bottleneck="mid",
                             decoder=("up.0", "up.1", "up.2"))
    assert [i.scale for i in infos if i.role == "encoder"] == [1, 2, 3]
    assert [i.channels for i in infos if i.role == "encoder"] == [16, 32, 64]
    assert eval(repr(spec), {"StageSpec": StageSpec}) == spec  # printable, and frozen into code as printed
    net = wrap_unet(unet, prompter=random_prompter(), stages=spec.to_dict())
    assert net.stages == spec
    assert "down.1" in net.describe()


def test_sequential_discovery_picks_outermost_level():
    spec, _ = discover_stages(SequentialUNet())
    # the whole level (pool + conv + BN + act) is the hook point, not the pool inside it
    assert spec.encoder == ("downs.0", "downs.1", "downs.2")
    assert spec.bottleneck == "downs.3"
    assert spec.decoder[0] == "ups.0"


def test_shared_module_is_never_a_hook_point():
    spec, infos = discover_stages(TupleDownUNet())
    assert "act" not in spec.names()
    assert spec.encoder == ("d1", "d2", "d3")
    assert all(i.output_index == 0 for i in infos if i.role == "encoder")  # the pooled half of (pooled, skip)


def test_decoder_injection_is_identity_then_trains():
    unet, x = make("modulelist_3down")
    unet.eval()
    with torch.no_grad():
        before = unet(x)
    net = wrap_unet(unet, prompter=random_prompter(), inject=("encoder", "bottleneck", "decoder"))
    assert sorted(net.injections) == ["bottleneck", "decoder1", "decoder2", "decoder3",
                                    "encoder1", "encoder2", "encoder3"]
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), before)
    train_steps(net, x, steps=2)
    assert net.injections["decoder1"].linear.weight.abs().sum() > 0


def test_prompt_parameters_are_the_adapters():
    unet, _ = make("modulelist_3down")
    net = wrap_unet(unet, prompter=random_prompter())
    assert {id(p) for p in net.prompt_parameters()} == {id(p) for p in net.injections.parameters()}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in net.injections.parameters()} | {id(p) for p in unet.parameters()}


def test_prompt_maps_are_resized_for_padding_backbones():
    # 37 x 53 pads to 40 x 56 inside the backbone: stage 1/2 is 20 x 28, the prompter's f1 19 x 27
    unet, x = make("modulelist_odd_padded")
    net = wrap_unet(unet, prompter=random_prompter()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.injections.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    keys = ("encoder1", "encoder2", "encoder3")
    seen, stage_out = {}, {}
    for key in keys:
        net.injections[key].register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, (*args, out)))
    for k, module in enumerate(unet.down):  # registered after the wrapper's hook: sees the stage's final output
        module.register_forward_hook(lambda m, args, out, k=k: stage_out.__setitem__(k, out))
    with torch.no_grad():
        out = net(x)
        features = net.prompter(x).features
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [tuple(f.shape[-2:]) for f in features] == [(19, 27), (10, 14), (5, 7)]
    assert [tuple(seen[k][0].shape[-2:]) for k in keys] == [(20, 28), (10, 14), (5, 7)]
    for k, key in enumerate(keys):
        stage, feature, got = seen[key]
        assert torch.equal(feature, features[k]), key  # the prompter's own map, not a re-computed one
        adapter = net.injections[key]
        # SPEC section 3 written out: LeakyReLU(0.1)(1x1 conv, no bias), resized bilinearly to the stage
        p = F.leaky_relu(torch.einsum("oc,bchw->bohw", adapter.proj.weight[:, :, 0, 0], feature), 0.1)
        p = F.interpolate(p, size=stage.shape[-2:], mode="bilinear", align_corners=False)
        fused = torch.einsum("oc,bchw->bohw", adapter.fuse.weight[:, :, 0, 0], torch.cat([stage, p], 1))
        torch.testing.assert_close(got, stage + fused + adapter.fuse.bias[:, None, None], atol=1e-5, rtol=1e-5)
        assert torch.equal(stage_out[k], got), key  # and that is what the rest of the network gets


@pytest.mark.parametrize("bad, needle", [
    (PlainCNN, "no downsampling"),
    (EncoderOnly, "no way back up"),
])
def test_not_a_unet_is_refused_with_advice(bad, needle):
    with pytest.raises(UNetStructureError, match=needle) as info:
        wrap_unet(bad(), prompter=random_prompter())
    assert "StageSpec" in str(info.value)


def test_explicit_spec_errors_name_the_module():
    unet, _ = make("modulelist_3down")
    with pytest.raises(UNetStructureError, match=r"'down.7' is not a module.*did you mean"):
        wrap_unet(unet, prompter=random_prompter(), stages=StageSpec(encoder=("down.0", "down.7"), bottleneck="mid"))
    shared = TupleDownUNet()
    with pytest.raises(UNetStructureError, match=r"'act' runs \d+ times"):
        wrap_unet(shared, prompter=random_prompter(), stages=StageSpec(encoder=("d1",), bottleneck="act"))
    with pytest.raises(ValueError, match="inject"):
        wrap_unet(unet, prompter=random_prompter(), inject=("encoder", "middle"))
    with pytest.raises(UNetStructureError, match="decoder"):
        wrap_unet(FunctionalUNet(), prompter=random_prompter(), inject=("encoder", "decoder"))


def test_wrapping_twice_is_refused():
    unet, _ = make("modulelist_3down")
    net = wrap_unet(unet, prompter=random_prompter())
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_unet(unet, prompter=random_prompter())
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_unet(net, prompter=random_prompter())


def test_default_prompter_without_packaged_weights_warns(monkeypatch):
    import constyle_plugin.core.prompter as prompter_module

    monkeypatch.setattr(prompter_module, "default_prompter_path", lambda: None)
    unet, _ = make("modulelist_3down")
    with pytest.warns(UserWarning, match="untrained"):
        net = wrap_unet(unet)
    assert not any(p.requires_grad for p in net.prompter.parameters())


def test_backbone_called_directly_is_the_bare_network():
    unet, x = make("modulelist_3down")
    net = wrap_unet(unet, prompter=random_prompter())
    train_steps(net, x, steps=2)
    net.eval()
    bare = ModuleListUNet().eval()  # the same class and trained weights, never hooked
    bare.load_state_dict(unet.state_dict())
    with torch.no_grad():
        wrapped = net(x)
        direct = net.backbone(x)
        assert torch.equal(direct, bare(x))
        assert not torch.equal(direct, wrapped)
        net(x.flip(-1))  # no prompt is left behind by an earlier wrapped call
        assert torch.equal(net.backbone(x), bare(x))


def test_checkpoints_with_the_old_adapters_keys_still_load():
    """The injection modules were saved as ``adapters.*`` before they were named ``injections``."""
    unet, x = make("modulelist_3down")
    net = wrap_unet(unet, prompter=random_prompter())
    with torch.no_grad():
        for p in net.injections.parameters():
            p.add_(0.1)
    state = net.state_dict()
    old = {("adapters." + k[len("injections."):] if k.startswith("injections.") else k): v for k, v in state.items()}
    assert any(k.startswith("adapters.") for k in old) and not any(k.startswith("injections.") for k in old)
    other = wrap_unet(make("modulelist_3down")[0], prompter=random_prompter())
    other.load_state_dict(old, strict=True)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    holder = torch.nn.Module()  # nested under a prefix, as inside a trainer's model
    holder.net = wrap_unet(make("modulelist_3down")[0], prompter=random_prompter())
    holder.load_state_dict({"net." + k: v for k, v in old.items()}, strict=True)
    assert all(torch.equal(v, holder.net.state_dict()[k]) for k, v in state.items())
