"""The wrapper under compile, autocast, channels_last, batch size 1, bad inputs, random U-Nets and DDP."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from constyle_plugin import ConStyleV2, wrap_unet

import unets
from unets import ModuleListUNet, SequentialUNet


def prompter(seed=0):
    torch.manual_seed(seed)
    return ConStyleV2()


def live_adapters(net, seed=1):
    """Give the zero-initialised adapters real weights, so the prompt path really computes."""
    return unets.live_adapters(net, seed, scale=0.05)


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet(width=4, depth=2), prompter=prompter())).eval()
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        eager = net(x)
        compiled = torch.compile(net)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_autocast_bfloat16_forward_and_backward():
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet(), prompter=prompter()))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = net.eval()(x)
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss = F.l1_loss(out.float(), x)
    loss.backward()
    assert torch.isfinite(out.float()).all()
    assert (out.float() - reference).abs().max() < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.prompt_parameters())


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    net = live_adapters(wrap_unet(ModuleListUNet(), prompter=prompter())).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), net(x),
                                   atol=1e-5, rtol=1e-5)


def test_batch_size_one_in_training_mode():
    # the prompter's BatchNorm1d would fail on one sample in train mode; frozen, it is in eval mode
    net = wrap_unet(ModuleListUNet(), prompter=prompter()).train()
    out = net(torch.rand(1, 3, 32, 32))
    out.mean().backward()
    assert out.shape == (1, 3, 32, 32)


def test_non_finite_input_is_refused_before_anything_runs():
    net = wrap_unet(ModuleListUNet(), prompter=prompter())
    ran = []
    net.backbone.register_forward_pre_hook(lambda m, a: ran.append(True))
    x = torch.rand(1, 3, 32, 32)
    x[0, 1, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        net(x)
    assert ran == []


def test_grey_backbone_gets_rgb_prompt():
    torch.manual_seed(0)

    class GreyUNet(ModuleListUNet):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(1, 8, 3, padding=1)
            self.tail = nn.Conv2d(8, 1, 3, padding=1)

    net = live_adapters(wrap_unet(GreyUNet(), prompter=prompter())).eval()
    x = torch.rand(2, 1, 32, 32)
    seen = []
    net.prompter.stage1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    prompts = []
    net.prompter.register_forward_hook(lambda m, args, out: prompts.append(out))
    with torch.no_grad():
        out = net(x)
        bare = net.backbone(x)
        rgb = net.prompter(x.repeat(1, 3, 1, 1))  # the prompt of the grey image as RGB
    assert out.shape == x.shape
    assert seen[0].shape == (2, 3, 32, 32) and torch.equal(seen[0], x.repeat(1, 3, 1, 1))
    assert torch.equal(prompts[0].latent, rgb.latent)
    assert all(torch.equal(a, b) for a, b in zip(prompts[0].features, rgb.features))
    assert (out - bare).abs().max() > 1e-4  # and the prompt reaches the grey network's output


# ---------------------------------------------------------------------------- property-based
class RandomUNet(nn.Module):
    """A U-Net drawn at random: depth, widths, and how it goes down and up."""

    def __init__(self, depth, widths, down, up):
        super().__init__()
        self.depth, self.down_kind, self.up_kind = depth, down, up
        self.head = nn.Conv2d(3, widths[0], 3, padding=1)
        self.downs = nn.ModuleList()
        for i in range(depth):
            cin, cout = widths[i], widths[i + 1]
            if down == "strided":
                self.downs.append(nn.Conv2d(cin, cout, 3, stride=2, padding=1))
            elif down == "pool":
                self.downs.append(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(cin, cout, 1)))
            else:  # functional pooling, then a block at the new scale
                self.downs.append(nn.Conv2d(cin, cout, 3, padding=1))
        self.mid = nn.Conv2d(widths[depth], widths[depth], 3, padding=1)
        self.ups = nn.ModuleList()
        self.fuses = nn.ModuleList()
        for i in reversed(range(depth)):
            if up == "transposed":
                self.ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            else:
                self.ups.append(nn.Conv2d(widths[i + 1], widths[i], 1))
            self.fuses.append(nn.Conv2d(2 * widths[i], widths[i], 3, padding=1))
        self.tail = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        y = self.head(F.pad(x, (0, (-w) % m, 0, (-h) % m)))
        skips = []
        for down in self.downs:
            skips.append(y)
            y = F.relu(down(F.max_pool2d(y, 2) if self.down_kind == "functional" else y))
        y = F.relu(self.mid(y))
        for up, fuse in zip(self.ups, self.fuses):
            if self.up_kind == "transposed":
                y = up(y)
            else:
                y = up(F.interpolate(y, scale_factor=2.0, mode="nearest"))
            y = F.relu(fuse(torch.cat([y, skips.pop()], 1)))
        return self.tail(y)[..., :h, :w] + x


@st.composite
def random_unets(draw):
    depth = draw(st.integers(2, 5))
    widths = [draw(st.sampled_from([2, 3, 4, 6]))]
    for _ in range(depth):
        widths.append(widths[-1] + draw(st.integers(0, 4)))
    down = draw(st.sampled_from(["strided", "pool", "functional"]))
    up = draw(st.sampled_from(["transposed", "interpolate"]))
    h, w = draw(st.integers(9, 41)), draw(st.integers(9, 41))
    seed = draw(st.integers(0, 2 ** 16))
    return depth, widths, down, up, (h, w), seed


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_unets())
def test_random_unets_wrap_as_identity(case):
    depth, widths, down, up, (h, w), seed = case
    torch.manual_seed(seed)
    unet = RandomUNet(depth, widths, down, up).eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        before = unet(x)
    net = wrap_unet(unet, prompter=prompter(seed)).eval()
    encoders = [i for i in net.stage_info if i.role == "encoder"]
    assert [i.scale for i in encoders] == list(range(1, min(depth, 3) + 1))
    assert next(i for i in net.stage_info if i.role == "bottleneck").scale == depth
    with torch.no_grad():
        after = net(x)
        assert after.shape == x.shape
        assert torch.equal(after, before)
        live_adapters(net, seed)
        assert net(x).shape == x.shape


# ---------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(net, batches, lr=0.05):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr)
    losses = []
    for x in batches:
        opt.zero_grad()
        loss = F.mse_loss(net(x), x.flip(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _make_net():
    torch.manual_seed(0)
    return live_adapters(wrap_unet(ModuleListUNet(width=4), prompter=prompter(3)))


def _ddp_worker(rank, world, port, batches, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        net = _make_net()
        frozen = {k: v.clone() for k, v in net.prompter.state_dict().items()}
        ddp = nn.parallel.DistributedDataParallel(net)  # find_unused_parameters=False: all adapters are used
        ddp.train()
        local = [b[rank::world] for b in batches]
        losses = _train(ddp, local)
        gathered = [None] * world
        dist.all_gather_object(gathered, losses)
        same_prompter = all(torch.equal(v, frozen[k]) for k, v in net.prompter.state_dict().items())
        state = {k: v.detach().clone() for k, v in net.state_dict().items()} if rank == 0 else None
        torch.save((state, gathered, same_prompter, net.prompter.training), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 16, 16, generator=g) for _ in range(3)]
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, batches, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    state, per_rank_losses, _, _ = next(r for r in results if r[0] is not None)
    assert all(r[2] for r in results), "the prompter changed on some rank"
    assert not any(r[3] for r in results), "the prompter left eval mode on some rank"

    single = _make_net().train()
    losses = _train(single, batches)
    ddp_losses = [sum(step) / 2 for step in zip(*per_rank_losses)]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(losses), atol=1e-5, rtol=1e-4)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-4, msg=key)
