"""The hook engine (constyle_plugin/core/hooks.py): activation checkpointing, handles, and what wrapping
must leave untouched (buffers, dtype, device) or refuse up front (meta tensors, non-image inputs)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from constyle_plugin import ConStyleV2, wrap_unet
from constyle_plugin.core.unet import discover_stages, unwrap_unet

from unets import ModuleListUNet, SequentialUNet, live_adapters


def prompter(seed=0):
    torch.manual_seed(seed)
    p = ConStyleV2()
    for bn in (p.mlp1[1], p.mlp2[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return p


class CheckpointedUNet(ModuleListUNet):
    """ModuleListUNet whose down steps and middle block run under torch.utils.checkpoint (hooked stages)."""

    def __init__(self, reentrant=None):
        super().__init__(width=4)
        self.reentrant = reentrant  # None: no checkpointing

    def forward(self, x):
        h, w = x.shape[-2:]
        run = (lambda m, t: m(t)) if self.reentrant is None else \
            (lambda m, t: checkpoint(m, t, use_reentrant=self.reentrant))
        y = self.head(x)
        skips = []
        for enc, down in zip(self.enc, self.down):
            y = enc(y)
            skips.append(y)
            y = run(down, y)
        y = run(self.mid, y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.tail(y)[..., :h, :w] + x


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_gradients_of_the_plain_run(reentrant):
    torch.manual_seed(0)
    plain = live_adapters(wrap_unet(CheckpointedUNet(None), prompter=prompter(),
                                    inject=("encoder", "bottleneck", "decoder")))
    ckpt = copy.deepcopy(plain)
    ckpt.backbone.reentrant = reentrant
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for net in (plain, ckpt):
        net.train()
        F.l1_loss(net(x), target).backward()
    g_plain, g_ckpt = grads(plain), grads(ckpt)
    assert set(g_plain) == set(g_ckpt)
    assert any(n.startswith("injections.encoder") for n in g_ckpt)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_with_two_forwards_before_one_backward(reentrant):
    # each recomputation must use the prompt of the forward that built its graph, not the last one
    torch.manual_seed(0)
    plain = live_adapters(wrap_unet(CheckpointedUNet(None), prompter=prompter()))
    ckpt = copy.deepcopy(plain)
    ckpt.backbone.reentrant = reentrant
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g) * 0.5
    for net in (plain, ckpt):
        net.train()
        a, b = net(x1), net(x2)
        (a.square().mean() + (b - x2).abs().mean()).backward()
    g_plain, g_ckpt = grads(plain), grads(ckpt)
    for name, gp in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], gp, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointed_backbone_called_alone_stays_bare():
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(CheckpointedUNet(False), prompter=prompter()))
    x = torch.rand(1, 3, 32, 32)
    net.backbone(x).sum().backward()  # checkpointed, hooked, but called on its own: bare, also when re-run
    bare_net = CheckpointedUNet(None)
    bare_net.load_state_dict(net.backbone.state_dict())
    bare_net(x).sum().backward()
    for (n, p), q in zip(net.backbone.named_parameters(), bare_net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=n)


# ------------------------------------------------------------------ handles
def test_unwrap_removes_exactly_the_registered_handles():
    unet = ModuleListUNet(width=4)
    other = []
    unet.down[0].register_forward_hook(lambda m, a, o: other.append(1))  # the user's own hook stays
    net = wrap_unet(unet, prompter=prompter())
    assert len(net._hooks) == 4  # encoder 1-3 and bottleneck
    counts = {n: len(m._forward_hooks) for n, m in unet.named_modules()}
    assert counts["down.0"] == 2 and counts["mid"] == 1
    unwrap_unet(net)
    assert len(net._hooks) == 0
    assert {n: len(m._forward_hooks) for n, m in unet.named_modules() if m._forward_hooks} == {"down.0": 1}
    other.clear()  # (the probe ran it too)
    unet(torch.rand(1, 3, 16, 16))
    assert other == [1]
    wrap_unet(unet, prompter=prompter())  # and it can be wrapped again


def test_a_deep_copy_owns_its_hooks_and_is_wrapped():
    unet = ModuleListUNet(width=4)
    net = wrap_unet(unet, prompter=prompter())
    clone = copy.deepcopy(net)
    with pytest.raises(ValueError, match="already wrapped"):
        wrap_unet(clone.backbone, prompter=prompter())
    unwrap_unet(clone)
    assert sum(len(m._forward_hooks) for m in clone.backbone.modules()) == 0
    assert sum(len(m._forward_hooks) for m in unet.modules()) == 4  # the original keeps its hooks
    wrap_unet(clone.backbone, prompter=prompter())


def test_wrapper_pickles_after_a_training_forward():
    net = wrap_unet(ModuleListUNet(width=4), prompter=prompter()).train()
    out = net(torch.rand(1, 3, 16, 16))  # a live graph: the ledger holds a weak reference to it
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    out.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(torch.ones(1, 3, 16, 16)), net.eval()(torch.ones(1, 3, 16, 16)))


# ------------------------------------------------------------------ the probe leaves the network alone
class CountingBNUNet(SequentialUNet):
    """BatchNorm levels (train mode) and a buffer that counts forwards even in eval mode."""

    def __init__(self):
        super().__init__(width=4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_wrapping_a_train_mode_batchnorm_unet_changes_no_buffer_and_no_output():
    torch.manual_seed(0)
    unet = CountingBNUNet().train()
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(unet)
    net = wrap_unet(unet, prompter=prompter())
    assert unet.training and all(m.training for m in unet.modules())
    for (name, b), (_, a) in zip(before.named_buffers(), unet.named_buffers()):
        assert torch.equal(b, a), name
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = before(x)  # train mode: batch statistics, and the running ones move
        got = net(x)
    assert torch.equal(got, expected)
    for (name, b), (_, a) in zip(before.named_buffers(), unet.named_buffers()):
        assert torch.equal(b, a), name
    before.eval(), net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), before(x))


def test_the_probe_draws_no_global_random_numbers():
    # (the adapters' own initialisation does draw, as any new layer does; the probe forward must not)
    unet = ModuleListUNet(width=4)
    unet.mid.register_forward_hook(lambda m, a, o: o + 0 * torch.rand(()))  # a network that draws numbers
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    discover_stages(unet)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ dtype, device, channels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wrapping_a_half_precision_unet(dtype):
    torch.manual_seed(0)
    unet = ModuleListUNet(width=4).to(dtype)
    p = prompter()
    loaded = {k: v.clone() for k, v in p.state_dict().items()}
    x = torch.rand(2, 3, 16, 16).to(dtype)
    with torch.no_grad():
        expected = unet(x)
    net = wrap_unet(unet, prompter=p)
    # the frozen prompter keeps its fp32 weights; the adapters follow the backbone
    assert all(v.dtype == torch.float32 for v in net.prompter.state_dict().values() if v.is_floating_point())
    assert all(t.dtype == dtype for t in net.injections.parameters())
    for k, v in net.prompter.state_dict().items():
        assert torch.equal(v, loaded[k]), k
    with torch.no_grad():
        out = net(x)
    assert out.dtype == dtype and torch.equal(out, expected)
    live_adapters(net)
    net.train()
    net(x).float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in net.injections.parameters())


def test_meta_device_unet_is_refused_at_wrap_time():
    with torch.device("meta"):
        unet = ModuleListUNet(width=4)
    p = prompter()
    loaded = {k: v.clone() for k, v in p.state_dict().items()}
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        wrap_unet(unet, prompter=p)
    assert all(not v.is_meta for v in p.state_dict().values())
    for k, v in p.state_dict().items():
        assert torch.equal(v, loaded[k]), k


class SixChannelUNet(ModuleListUNet):
    def __init__(self):
        super().__init__(width=4)
        self.head = nn.Conv2d(6, 4, 3, padding=1)
        self.tail = nn.Conv2d(4, 6, 3, padding=1)


def test_six_channel_unet_is_refused_at_wrap_time():
    with pytest.raises(ValueError, match=r"6-channel inputs.*'head'.*1 \(grey\), 3 \(RGB\) or 4"):
        wrap_unet(SixChannelUNet(), prompter=prompter())
    with pytest.raises(ValueError, match=r"in_channels=2"):
        wrap_unet(ModuleListUNet(width=4), prompter=prompter(), in_channels=2)


def test_the_hook_engine_imports_only_torch_and_the_standard_library():
    import ast
    import pathlib
    import sys

    import constyle_plugin

    root = pathlib.Path(constyle_plugin.__file__).parent / "core"
    for name in ("hooks.py", "unet.py", "injection.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top == "torch" or top in sys.stdlib_module_names, (name, mod)


def test_concurrent_forwards_in_threads_keep_their_own_prompt():
    # nn.DataParallel runs one replica per device in its own thread, all sharing the hooks: a forward
    # paused half-way while another thread runs a whole forward must still apply its own prompt
    import threading

    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet(width=4), prompter=prompter())).eval()
    g = torch.Generator().manual_seed(9)
    xa, xb = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    with torch.no_grad():
        expected_a, expected_b = net(xa), net(xb)
    paused, resume = threading.Event(), threading.Event()

    def pause_first_time(module, args):
        if threading.current_thread().name == "A" and not paused.is_set():
            paused.set()
            resume.wait(timeout=60)

    handle = net.backbone.down[1].register_forward_pre_hook(pause_first_time)  # after encoder1's hook ran
    results = {}

    def run(name, x):
        with torch.no_grad():
            results[name] = net(x)

    a = threading.Thread(target=run, args=("A", xa), name="A")
    a.start()
    assert paused.wait(timeout=60)
    run("B", xb)  # a whole forward while A is inside its own
    resume.set()
    a.join(timeout=60)
    handle.remove()
    assert torch.equal(results["B"], expected_b)
    assert torch.equal(results["A"], expected_a)
