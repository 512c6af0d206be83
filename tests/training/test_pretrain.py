"""Stage-1 MoCo wrapper: checkpoint layout, momentum update, queue, gradients, loss switches."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from constyle_plugin.core.prompter import CheckpointError, ConStyleV2
from constyle_plugin.training.pretrain import (ConStyleMoCo, ConStylePretrainLoss, MoCoOutput, accuracy,
                                     collapse_message, latent_spread,
                                      pretrain_losses)

torch.set_num_threads(1)


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


def labels(b=2):
    return torch.arange(b) * 7 % 1000


def params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.fixture
def moco():
    torch.manual_seed(0)
    return ConStyleMoCo(queue_size=8)


# ---------------------------------------------------------------- layout
def test_state_dict_has_the_authors_layout():
    model = ConStyleMoCo()
    keys = list(model.state_dict())
    inner = list(ConStyleV2().state_dict())
    expected = {"encoder_q." + k for k in inner} | {"encoder_k." + k for k in inner} | {"queue", "queue_ptr"}
    assert set(keys) == expected and len(keys) == len(expected)
    sd = model.state_dict()
    assert sd["queue"].shape == (128, 65760)
    assert sd["queue_ptr"].shape == (1,) and sd["queue_ptr"].dtype == torch.long and sd["queue_ptr"].item() == 0
    # a few shapes written out from the SPEC's table
    assert sd["encoder_q.stage1.0.0.weight"].shape == (16, 3, 3, 3)
    assert sd["encoder_k.stage4.1.0.weight"].shape == (256, 256, 3, 3)
    assert sd["encoder_q.mlp2.1.num_batches_tracked"].shape == ()
    assert sd["encoder_k.classifier.3.weight"].shape == (1000, 512)
    # MoCo initialisation: standard normal queue, key encoder = copy of query encoder, no grads
    assert abs(sd["queue"].mean().item()) < 0.01 and abs(sd["queue"].std().item() - 1) < 0.01
    for (nq, pq), (nk, pk) in zip(model.encoder_q.named_parameters(), model.encoder_k.named_parameters()):
        assert nq == nk and torch.equal(pq, pk)
        assert pq.requires_grad and not pk.requires_grad


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="enqueue"):
        ConStyleMoCo(queue_size=8, enqueue="keys")
    with pytest.raises(ValueError, match="queue_size"):
        ConStyleMoCo(queue_size=0)
    with pytest.raises(ValueError, match="momentum"):
        ConStyleMoCo(queue_size=8, momentum=1.5)
    with pytest.raises(ValueError, match="frozen"):
        ConStyleMoCo(queue_size=8, encoder_q=ConStyleV2().freeze())


def test_normalize_option_normalises_the_initial_queue():
    model = ConStyleMoCo(queue_size=16, normalize=True)
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(16), atol=1e-5)


# ---------------------------------------------------------------- momentum update
def test_momentum_update_formula():
    torch.manual_seed(1)
    model = ConStyleMoCo(queue_size=8, momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q0, k0 = params(model.encoder_q), params(model.encoder_k)
    bn_before = model.encoder_k.mlp1[1].running_mean.clone()
    model.momentum_update()
    for pq, pk_old, pk_new in zip(q0, k0, model.encoder_k.parameters()):
        assert torch.allclose(pk_new, 0.9 * pk_old + 0.1 * pq, atol=1e-6)
    assert torch.equal(model.encoder_k.mlp1[1].running_mean, bn_before)  # buffers are not averaged


# ---------------------------------------------------------------- queue
def test_enqueue_writes_columns_and_wraps(moco):
    before = moco.queue.clone()
    a = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128)
    moco.dequeue_and_enqueue(a)
    assert moco.queue_ptr.item() == 2
    assert torch.equal(moco.queue[:, 0], a[0]) and torch.equal(moco.queue[:, 1], a[1])
    assert torch.equal(moco.queue[:, 2:], before[:, 2:])
    moco.queue_ptr[0] = 6
    b = -torch.arange(4 * 128, dtype=torch.float32).reshape(4, 128) - 1
    moco.dequeue_and_enqueue(b)
    assert moco.queue_ptr.item() == 2
    for col, row in zip((6, 7, 0, 1), range(4)):
        assert torch.equal(moco.queue[:, col], b[row])
    assert torch.equal(moco.queue[:, 2:6], before[:, 2:6])
    with pytest.raises(ValueError, match="latents"):
        moco.dequeue_and_enqueue(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="latents"):
        moco.dequeue_and_enqueue(torch.zeros(9, 128))


def test_enqueue_normalises_when_asked():
    model = ConStyleMoCo(queue_size=8, normalize=True)
    model.dequeue_and_enqueue(torch.full((2, 128), 3.0))
    assert torch.allclose(model.queue[:, :2], torch.full((128, 2), 1 / math.sqrt(128)))


@pytest.mark.parametrize("enqueue", ["query", "key"])
def test_forward_slices_and_enqueue(enqueue):
    torch.manual_seed(2)
    model = ConStyleMoCo(queue_size=8, enqueue=enqueue)
    model.queue_ptr[0] = 4
    queue0 = model.queue.clone()
    out = model(*images())
    assert isinstance(out, MoCoOutput)
    assert torch.equal(out.queue, queue0)
    assert torch.equal(out.neg2, queue0[:, 4:6].t())  # the slot about to be overwritten
    assert torch.equal(out.neg1, queue0[:, 6:8].t())  # the next one
    written = out.q_enc.z2 if enqueue == "query" else out.k
    assert torch.equal(model.queue[:, 4:6], written.detach().t())
    assert torch.equal(model.queue[:, :4], queue0[:, :4]) and torch.equal(model.queue[:, 6:], queue0[:, 6:])
    assert model.queue_ptr.item() == 6
    # at the end of the queue the next slot wraps to the start
    out = model(*images(seed=1))
    assert torch.equal(out.neg2, out.queue[:, 6:8].t())
    assert torch.equal(out.neg1, out.queue[:, 0:2].t())
    assert model.queue_ptr.item() == 0


def test_forward_output_shapes(moco):
    out = moco(*images())
    assert out.q_enc.z1.shape == out.q_enc.z2.shape == out.k.shape == (2, 128)
    assert out.q_enc.pooled.shape == (2, 256)
    assert out.q_logits.shape == out.k_logits.shape == (2, 1000)
    assert out.queue.shape == (128, 8) and out.neg1.shape == out.neg2.shape == (2, 128)
    assert out.q_enc.z2.requires_grad and out.q_logits.requires_grad
    assert not out.k.requires_grad and not out.k_logits.requires_grad and not out.queue.requires_grad


def test_forward_input_errors(moco):
    q, k = images()
    with pytest.raises(ValueError, match="queue_size"):
        ConStyleMoCo(queue_size=9)(q, k)
    with pytest.raises(ValueError, match="at least 2"):
        moco(q[:1], k[:1])
    with pytest.raises(ValueError, match="key_img"):
        moco(q, torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match="query_img"):
        moco(q[0], k)


def test_eval_forward_changes_no_state(moco):
    moco.eval()
    sd = {k: v.clone() for k, v in moco.state_dict().items()}
    out = moco(*images(b=3))  # eval: batch 3 need not divide the queue, batch 1 would also be fine
    assert out.neg2.shape == (3, 128)
    for k, v in moco.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_train_forward_updates_key_encoder_once():
    torch.manual_seed(3)
    model = ConStyleMoCo(queue_size=8, momentum=0.5)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.mul_(1.5)
    q0, k0 = params(model.encoder_q), params(model.encoder_k)
    model(*images())
    for pq, pk_old, pk_new in zip(q0, k0, model.encoder_k.parameters()):
        assert torch.allclose(pk_new, 0.5 * pk_old + 0.5 * pq, atol=1e-6)


# ---------------------------------------------------------------- training step
def test_one_optimiser_step_trains_query_encoder_only():
    torch.manual_seed(4)
    model = ConStyleMoCo(queue_size=8, momentum=0.99)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    assert len(opt.param_groups[0]["params"]) == len(list(model.encoder_q.parameters()))
    q0, k0 = params(model.encoder_q), params(model.encoder_k)
    out = model(*images())
    losses = model.pretrain_loss()(out, labels(), iteration=0)
    opt.zero_grad()
    losses["total"].backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    for name, p in model.encoder_q.named_parameters():
        assert p.grad is not None, name
        if name not in ("mlp1.0.bias", "mlp2.0.bias"):  # BatchNorm right after cancels these
            assert p.grad.abs().sum() > 0, name
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(q0, model.encoder_q.parameters()))
    # the key encoder moved by the momentum update only (computed from the pre-step weights)
    for pq, pk_old, pk_new in zip(q0, k0, model.encoder_k.parameters()):
        assert torch.allclose(pk_new, 0.99 * pk_old + 0.01 * pq, atol=1e-6)
    # and a second step runs (the queue snapshot keeps backward valid after the in-place enqueue)
    out = model(*images(seed=5))
    model.pretrain_loss()(out, labels(), iteration=1)["total"].backward()


# ---------------------------------------------------------------- losses
def test_loss_switches_and_total(moco):
    out = moco(*images())
    crit = ConStylePretrainLoss(class_iter=10, kl_iter=20)
    early = crit(out, labels(), iteration=0)
    assert set(early) == {"infonce", "content", "style", "class", "kl", "total"}
    assert torch.allclose(early["total"], sum(v for k, v in early.items() if k != "total"))
    assert set(crit(out, labels(), iteration=9)) == set(early)
    assert set(crit(out, labels(), iteration=10)) == {"infonce", "content", "style", "kl", "total"}
    assert set(crit(out, labels(), iteration=20)) == {"infonce", "content", "style", "total"}
    assert "class" not in crit(out, None, iteration=0)
    always_kl = ConStylePretrainLoss()  # authors: class_iter 50 000, kl_iter None
    assert "kl" in always_kl(out, labels(), iteration=10 ** 7)
    assert "class" in always_kl(out, labels(), iteration=49999)
    assert "class" not in always_kl(out, labels(), iteration=50000)


def test_loss_terms_are_wired_to_the_right_tensors(moco):
    out = moco(*images())
    got = pretrain_losses(out, labels(), 0)
    z1, z2, k = out.q_enc.z1.detach(), out.q_enc.z2.detach(), out.k

    def gram(z):
        return z @ z.t() / (z.shape[0] * 128)

    style = -(((gram(z1) - gram(out.neg1)) ** 2).mean() + ((gram(z2) - gram(out.neg2)) ** 2).mean())
    assert got["style"].item() == pytest.approx(style.item(), rel=1e-5)
    assert got["content"].item() == pytest.approx(((z2 - k) ** 2).mean().item(), rel=1e-5)
    logits = torch.cat([(z2 * k).sum(1, keepdim=True), z2 @ out.queue], 1) / 0.07
    infonce = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    assert got["infonce"].item() == pytest.approx(infonce.item(), rel=1e-5)
    p = out.k_logits.softmax(1)
    kl = (p * (p.log() - out.q_logits.detach().log_softmax(1))).sum() / 2
    assert got["kl"].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    ce = -out.q_logits.detach().log_softmax(1)[torch.arange(2), labels()].mean()
    assert got["class"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_loss_weights(moco):
    out = moco(*images())
    base = pretrain_losses(out, labels(), 0)
    weighted = pretrain_losses(out, labels(), 0, weights={"content": 2.0, "style": 0.0})
    assert weighted["content"].item() == pytest.approx(2 * base["content"].item(), rel=1e-6)
    assert "style" not in weighted
    with pytest.raises(ValueError, match="weights"):
        pretrain_losses(out, labels(), 0, weights={"contrast": 1.0})
    with pytest.raises(TypeError, match="out"):
        pretrain_losses((out.q_enc, out.k), labels(), 0)


def test_pretrain_loss_follows_model_settings():
    model = ConStyleMoCo(queue_size=8, temperature=0.2, normalize=True)
    crit = model.pretrain_loss(class_iter=None)
    assert crit.infonce.temperature == 0.2 and crit.infonce.normalize
    assert crit.class_iter is None


# ---------------------------------------------------------------- accuracy
def test_accuracy_top1_top5():
    logits = torch.tensor([
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 0: top-1 hit
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 4: top-5 hit only
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 5: miss
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # label 2: top-1 hit
    ])
    top1, top5 = accuracy(logits, torch.tensor([0, 4, 5, 2]))
    assert top1 == pytest.approx(50.0) and top5 == pytest.approx(75.0)
    assert accuracy(logits, torch.tensor([1, 1, 1, 1]), topk=(1,)) == pytest.approx((0.0,))
    with pytest.raises(ValueError, match="topk"):
        accuracy(logits, torch.tensor([0, 4, 5, 2]), topk=(1, 10))


# ---------------------------------------------------------------- checkpoints
def _authors_file(path, params_model, ema_model):
    """A BasicSR checkpoint as the authors release it: DataParallel keys, params and params_ema."""
    torch.save({
        "params": {"module." + k: v for k, v in params_model.state_dict().items()},
        "params_ema": {"module." + k: v for k, v in ema_model.state_dict().items()},
    }, path)


def _randomised(seed, queue_size=16, ptr=0):
    torch.manual_seed(seed)
    m = ConStyleMoCo(queue_size=queue_size)
    with torch.no_grad():
        for p in m.encoder_k.parameters():
            p.add_(torch.randn_like(p))
        m.encoder_q.mlp1[1].running_mean.normal_()
        m.queue_ptr[0] = ptr
    return m


def test_from_pretrained_round_trips_the_authors_layout(tmp_path):
    params_model, ema_model = _randomised(10, ptr=4), _randomised(11, ptr=0)
    path = tmp_path / "pretrained_ConStyle_v2.pth"
    _authors_file(path, params_model, ema_model)

    loaded = ConStyleMoCo.from_pretrained(path)  # params_ema preferred
    assert loaded.queue_size == 16 and loaded.queue.shape == (128, 16)
    for k, v in ema_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    resumed = ConStyleMoCo.from_pretrained(path, param_key="params", momentum=0.99)
    for k, v in params_model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert resumed.queue_ptr.item() == 4 and resumed.momentum == 0.99
    assert all(p.requires_grad for p in resumed.encoder_q.parameters())
    assert not any(p.requires_grad for p in resumed.encoder_k.parameters())
    # it trains on: one step from the loaded state
    out = resumed(*images())
    resumed.pretrain_loss()(out, labels(), 0)["total"].backward()
    assert resumed.queue_ptr.item() == 6
    # and the frozen prompter reads the same file
    prompter = ConStyleV2.from_pretrained(path)
    for k, v in prompter.state_dict().items():
        assert torch.equal(v, ema_model.state_dict()["encoder_q." + k])


def test_from_pretrained_mismatches_name_file_and_keys(tmp_path):
    good = _randomised(12).state_dict()
    missing = dict(good)
    del missing["encoder_k.mlp2.0.bias"]
    path = tmp_path / "missing.pth"
    torch.save({"params": missing}, path)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*encoder_k\.mlp2\.0\.bias"):
        ConStyleMoCo.from_pretrained(path)

    misshaped = dict(good)
    misshaped["encoder_q.mlp1.0.weight"] = torch.zeros(64, 256)
    path = tmp_path / "misshaped.pth"
    torch.save({"params": misshaped}, path)
    with pytest.raises(CheckpointError, match=r"misshaped\.pth.*encoder_q\.mlp1\.0\.weight"):
        ConStyleMoCo.from_pretrained(path)

    extra = dict(good, **{"encoder_q.extra.weight": torch.zeros(3)})
    path = tmp_path / "extra.pth"
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected.*encoder_q\.extra\.weight"):
        ConStyleMoCo.from_pretrained(path)

    bad_queue = dict(good, queue=torch.zeros(64, 16))
    path = tmp_path / "queue.pth"
    torch.save(bad_queue, path)
    with pytest.raises(CheckpointError, match=r"queue\.pth.*'queue'"):
        ConStyleMoCo.from_pretrained(path)

    path = tmp_path / "ok.pth"
    torch.save(good, path)
    with pytest.raises(CheckpointError, match=r"ok\.pth.*queue_size=32"):
        ConStyleMoCo.from_pretrained(path, queue_size=32)
    with pytest.raises(CheckpointError, match=r"ok\.pth.*'nope'"):
        ConStyleMoCo.from_pretrained(path, param_key="nope")
    with pytest.raises(FileNotFoundError, match="absent"):
        ConStyleMoCo.from_pretrained(tmp_path / "absent.pth")


def test_from_pretrained_prompter_only_file(tmp_path):
    torch.manual_seed(13)
    source = ConStyleV2()
    path = source.save_pretrained(tmp_path / "prompter.safetensors")
    with pytest.raises(CheckpointError, match=r"prompter\.safetensors.*strict=False"):
        ConStyleMoCo.from_pretrained(path)
    model = ConStyleMoCo.from_pretrained(path, strict=False, queue_size=8)
    assert model.queue.shape == (128, 8)
    for k, v in source.state_dict().items():
        assert torch.equal(model.encoder_q.state_dict()[k], v)
        assert torch.equal(model.encoder_k.state_dict()[k], v)


def test_export_prompter_is_a_frozen_independent_copy(moco, tmp_path):
    out = moco(*images())
    moco.pretrain_loss()(out, labels(), 0)["total"].backward()
    prompter = moco.export_prompter()
    assert type(prompter) is ConStyleV2 and prompter.frozen and not prompter.training
    assert not any(p.requires_grad for p in prompter.parameters())
    for k, v in moco.encoder_q.state_dict().items():
        assert torch.equal(prompter.state_dict()[k], v)
    with torch.no_grad():
        moco.encoder_q.stage1[0][0].weight.add_(1.0)
    assert not torch.equal(prompter.stage1[0][0].weight, moco.encoder_q.stage1[0][0].weight)
    prompter.train()
    assert not prompter.training
    path = prompter.save_pretrained(tmp_path / "exported.safetensors")
    again = ConStyleV2.from_pretrained(path)
    for k, v in prompter.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


# ---------------------------------------------------------------- distributed queue
def _ddp_worker(rank, world, store_path, result_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial queue on every rank
        model = ConStyleMoCo(queue_size=8)
        model.queue_ptr[0] = 6
        model.dequeue_and_enqueue(torch.full((2, 128), float(rank + 1)))
        error = ""
        try:
            ConStyleMoCo(queue_size=6)(*images(b=2))  # 6 is not a multiple of 2 x 2 ranks
        except ValueError as exc:
            error = str(exc)
        torch.save({"queue": model.queue, "ptr": model.queue_ptr, "error": error}, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_enqueue_gathers_across_ranks(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "result")), nprocs=world)
    torch.manual_seed(0)
    initial = ConStyleMoCo(queue_size=8).queue
    for rank in range(world):
        res = torch.load(f"{tmp_path / 'result'}.{rank}")
        queue = res["queue"]
        assert res["ptr"].item() == 2  # advanced by the gathered batch of 4, wrapped
        for col, value in ((6, 1.0), (7, 1.0), (0, 2.0), (1, 2.0)):  # rank 0's, then rank 1's
            assert torch.all(queue[:, col] == value), (rank, col)
        assert torch.equal(queue[:, 2:6], initial[:, 2:6])
        assert "queue_size 6" in res["error"] and "2 rank(s)" in res["error"]


# ---------------------------------------------------------------- collapse diagnostic
def test_latent_spread_is_zero_for_one_prompt_and_near_one_for_varied_prompts():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 128, generator=g).expand(32, 128)
    assert latent_spread(same) == pytest.approx(0.0, abs=1e-6)
    varied = torch.randn(512, 128, generator=g)
    assert latent_spread(varied) == pytest.approx(1.0, abs=0.05)  # zero-mean: std over the batch = rms
    assert latent_spread(varied * 1e-3) == pytest.approx(latent_spread(varied), rel=1e-4)  # scale-free
    offset = varied * 0.01 + 1.0  # large common part, small image-dependent part
    assert latent_spread(offset) == pytest.approx(0.01, rel=0.1)
    assert latent_spread(torch.zeros(4, 128)) == 0.0
    with pytest.raises(ValueError, match="latents"):
        latent_spread(torch.randn(1, 128))


def test_collapse_message_only_below_the_threshold():
    assert collapse_message(0.8) is None
    msg = collapse_message(0.01)
    assert msg is not None and "0.01" in msg and "normalize: true" in msg
