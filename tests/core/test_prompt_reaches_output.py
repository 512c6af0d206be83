"""The prompt reaches the output, in the way the paper's stage 2 describes it.

The adapters' formulas are written out here independently of ``constyle_plugin/core/injection.py``
(1x1 convolutions as ``einsum``, LeakyReLU(0.1) as ``where``), and with the adapters moved off their
zero initialisation the wrapped network's output must change when the prompter or its output
changes, and must not change when neither does.

SPEC section 3, as this project makes it channel-preserving and identity at wrap time (README,
"Where the prompt goes"):
- encoder stage at 1/2, 1/4, 1/8 (x: B x C x h x w, f_i: B x Cp x h' x w'):
  ``x + fuse(concat(x, resize(LeakyReLU_0.1(proj(f_i)))))``, ``proj`` 1x1 without bias, ``fuse`` 1x1;
- bottleneck (z: B x 128): ``x + fuse(concat(x, x * Linear(z)))``;
- decoder stage (optional): ``x * (1 + gamma) + beta`` with ``(gamma, beta) = Linear(z)``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from constyle_plugin import ConStyleV2, wrap_unet
from constyle_plugin.core.injection import FeatureInjector, LatentFiLM, LatentModulator
from constyle_plugin.core.prompter import Prompt

from unets import ModuleListUNet


# ---------------------------------------------------------------------------- the formulas, written out
def conv1x1(weight, x, bias=None):
    """A 1x1 convolution: ``weight`` is ``Cout x Cin x 1 x 1``."""
    y = torch.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x)
    return y if bias is None else y + bias[None, :, None, None]


def leaky(x, slope=0.1):
    return torch.where(x > 0, x, slope * x)


def feature_injector(params, x, f):
    p = leaky(conv1x1(params["proj.weight"], f))
    if p.shape[-2:] != x.shape[-2:]:
        p = F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x + conv1x1(params["fuse.weight"], torch.cat([x, p], 1), params["fuse.bias"])


def latent_modulator(params, x, z):
    scale = z @ params["linear.weight"].T + params["linear.bias"]
    return x + conv1x1(params["fuse.weight"], torch.cat([x, x * scale[:, :, None, None]], 1), params["fuse.bias"])


def latent_film(params, x, z):
    gamma, beta = (z @ params["linear.weight"].T + params["linear.bias"]).chunk(2, dim=1)
    return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def randomise(module, seed=1, std=0.2):
    """Move every parameter off its (zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def params_of(module):
    return {k: v.detach() for k, v in module.named_parameters()}


# ---------------------------------------------------------------------------- the adapters alone
@pytest.mark.parametrize("feature_hw", [(16, 12), (15, 11)])  # the same size as the stage, and resized
def test_feature_injector_is_the_spec_formula(feature_hw):
    adapter = FeatureInjector(32, 24)
    assert set(params_of(adapter)) == {"proj.weight", "fuse.weight", "fuse.bias"}  # proj: 1x1, no bias
    assert adapter.proj.weight.shape == (24, 32, 1, 1) and adapter.fuse.weight.shape == (24, 48, 1, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 16, 12, generator=g)
    f = torch.randn(2, 32, *feature_hw, generator=g)
    assert torch.equal(adapter(x, f), x)  # zero-initialised fusion: the identity
    randomise(adapter)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, f), feature_injector(params_of(adapter), x, f), atol=1e-5, rtol=1e-5)


def test_latent_modulator_is_the_spec_formula():
    adapter = LatentModulator(128, 24)
    assert set(params_of(adapter)) == {"linear.weight", "linear.bias", "fuse.weight", "fuse.bias"}
    assert adapter.linear.weight.shape == (24, 128) and adapter.fuse.weight.shape == (24, 48, 1, 1)
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 24, 5, 7, generator=g), torch.randn(2, 128, generator=g)
    assert torch.equal(adapter(x, z), x)
    randomise(adapter)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, z), latent_modulator(params_of(adapter), x, z), atol=1e-5, rtol=1e-5)


def test_latent_film_is_the_readme_formula():
    adapter = LatentFiLM(128, 24)
    assert set(params_of(adapter)) == {"linear.weight", "linear.bias"}
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 24, 5, 7, generator=g), torch.randn(2, 128, generator=g)
    assert torch.equal(adapter(x, z), x)
    randomise(adapter)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, z), latent_film(params_of(adapter), x, z), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- through the wrapper
def prompter(seed=0):
    torch.manual_seed(seed)
    p = ConStyleV2()
    for bn in (p.mlp1[1], p.mlp2[1]):  # non-trivial statistics, as a trained prompter has
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return p


def live_net(inject=("encoder", "bottleneck", "decoder"), seed=0):
    torch.manual_seed(seed)
    unet = ModuleListUNet()
    net = wrap_unet(unet, prompter=prompter(seed), inject=inject)
    randomise(net.injections, seed=seed + 1)
    return net.eval()


def image(seed=0, shape=(2, 3, 32, 48)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def expected_output(net, x):
    """The wrapped network's output rebuilt by hand: an unhooked copy of the backbone whose stage outputs
    go through the formulas above, fed by the prompter's own prompt for ``x``."""
    bare = ModuleListUNet().eval()
    bare.load_state_dict(net.backbone.state_dict())
    with torch.no_grad():
        prompt = net.prompter(x)
    adapters = {k: params_of(v) for k, v in net.injections.items()}
    modules = dict(bare.named_modules())
    for key, module_name in (("encoder1", "down.0"), ("encoder2", "down.1"), ("encoder3", "down.2")):
        if key in adapters:
            f = prompt.features[int(key[-1]) - 1]
            modules[module_name].register_forward_hook(
                lambda m, a, out, p=adapters[key], f=f: feature_injector(p, out, f))
    if "bottleneck" in adapters:
        modules["mid"].register_forward_hook(lambda m, a, out: latent_modulator(adapters["bottleneck"], out,
                                                                                 prompt.latent))
    for k in range(3):
        if f"decoder{k + 1}" in adapters:
            modules[f"up.{k}"].register_forward_hook(
                lambda m, a, out, p=adapters[f"decoder{k + 1}"]: latent_film(p, out, prompt.latent))
    with torch.no_grad():
        return bare(x)


@pytest.mark.parametrize("inject", [("encoder", "bottleneck"), ("encoder", "bottleneck", "decoder"),
                                    ("encoder",), ("bottleneck",), ("decoder",)])
def test_wrapped_output_is_the_backbone_with_the_spec_adapters(inject):
    net = live_net(inject)
    assert (net.stages.encoder, net.stages.bottleneck) == (("down.0", "down.1", "down.2"), "mid")
    assert net.stages.decoder == ("up.0", "up.1", "up.2")
    x = image()
    with torch.no_grad():
        got = net(x)
        bare = net.backbone(x)
    assert (got - bare).abs().max() > 1e-4  # the live adapters matter
    torch.testing.assert_close(got, expected_output(net, x), atol=1e-5, rtol=1e-5)


def replace_prompt(net, change):
    """Make the prompter hand ``change(prompt)`` to the hooks (a forward hook on the prompter)."""
    return net.prompter.register_forward_hook(lambda m, a, out: change(out))


def run(net, x):
    with torch.no_grad():
        return net(x)


FEATURE_CHANGES = {
    f"f{k + 1}": (lambda k: lambda p: Prompt(p.latent, tuple(f + 0.5 if i == k else f
                                                             for i, f in enumerate(p.features))))(k)
    for k in range(3)
}
LATENT_CHANGE = {"latent": lambda p: Prompt(p.latent + 0.5, p.features)}


@pytest.mark.parametrize("what", sorted({**FEATURE_CHANGES, **LATENT_CHANGE}))
def test_output_changes_with_each_part_of_the_prompt(what):
    """Each of f1, f2, f3 and the latent, changed alone, changes net(x): none is dropped or zeroed."""
    net = live_net()
    x = image()
    before = run(net, x)
    handle = replace_prompt(net, {**FEATURE_CHANGES, **LATENT_CHANGE}[what])
    after = run(net, x)
    assert (after - before).abs().max() > 1e-4, what
    handle.remove()
    assert torch.equal(run(net, x), before)  # and back: nothing else carried state


@pytest.mark.parametrize("inject, unused", [(("encoder",), "latent"), (("bottleneck",), "f1"),
                                            (("bottleneck",), "f3"), (("decoder",), "f2")])
def test_output_ignores_the_prompt_parts_a_stage_does_not_use(inject, unused):
    net = live_net(inject)
    x = image()
    before = run(net, x)
    replace_prompt(net, {**FEATURE_CHANGES, **LATENT_CHANGE}[unused])
    assert torch.equal(run(net, x), before)


def test_output_changes_with_the_prompter_and_only_with_it():
    net = live_net()
    x = image()
    before = run(net, x)
    # a prompter with the same weights: the same output, bit for bit
    net.prompter = copy.deepcopy(net.prompter)
    assert torch.equal(run(net, x), before)
    # the classifier (pretext head) is not part of the prompt: changing it changes nothing
    with torch.no_grad():
        for p in net.prompter.classifier.parameters():
            p.add_(1.0)
    assert torch.equal(run(net, x), before)
    # other prompter weights: another output
    net.prompter = prompter(seed=7).freeze()
    assert (run(net, x) - before).abs().max() > 1e-4
    # a change to one conv of the encoder, or to the latent head's BatchNorm statistics, is enough
    net.prompter = copy.deepcopy(prompter(0)).freeze()
    assert torch.equal(run(net, x), before)
    with torch.no_grad():
        net.prompter.stage1[0][0].weight.mul_(1.5)
    assert (run(net, x) - before).abs().max() > 1e-4
    net.prompter = prompter(0).freeze()
    net.prompter.mlp2[1].running_mean.add_(1.0)
    assert (run(net, x) - before).abs().max() > 1e-4


def test_each_image_gets_its_own_prompt():
    """The prompt is computed from the image it guides: batching with another image changes nothing
    (the frozen prompter's BatchNorm uses its statistics), a different image gets a different prompt."""
    net = live_net()
    a, b = image(1, (1, 3, 32, 48)), image(2, (1, 3, 32, 48))
    alone = run(net, a)
    together = run(net, torch.cat([a, b]))
    torch.testing.assert_close(together[:1], alone, atol=1e-6, rtol=1e-5)
    # with b's prompt handed to a's forward, a's output changes
    prompt_b = net.prompter(b)
    replace_prompt(net, lambda p: prompt_b)
    assert (run(net, a) - alone).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["nafnet", "restormer", "convunet", "maxim"])
def test_reference_archs_every_hook_reaches_the_output(arch):
    """The reference archs use ready StageSpecs: each adapter, and each part of the prompt, changes net(x)
    (a spec naming a module whose output the network discards would not)."""
    from test_archs import TINY, randomise_residual_scales

    torch.manual_seed(0)
    unet = TINY[arch]()
    randomise_residual_scales(unet)
    net = wrap_unet(unet, prompter=prompter(), inject=("encoder", "bottleneck", "decoder")).eval()
    randomise(net.injections, seed=3, std=0.1)
    x = image(shape=(1, 3, 32, 32))
    before = run(net, x)
    assert len(net.injections) >= 5, sorted(net.injections)
    for key, adapter in net.injections.items():
        saved = {k: v.clone() for k, v in adapter.state_dict().items()}
        with torch.no_grad():
            for p in adapter.parameters():
                p.add_(0.1)
        assert (run(net, x) - before).abs().max() > 1e-5, (arch, key)
        adapter.load_state_dict(saved)
    assert torch.equal(run(net, x), before)
    for what, change in {**FEATURE_CHANGES, **LATENT_CHANGE}.items():
        handle = replace_prompt(net, change)
        assert (run(net, x) - before).abs().max() > 1e-5, (arch, what)
        handle.remove()
