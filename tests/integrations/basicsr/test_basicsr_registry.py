"""BasicSR integration, in process: registration (also inside a simulated fork), the ConStyleUNet /
ConStyleV2 / ConStyleMoCo builders and their option errors, and the two model types."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from constyle_plugin.compat import ensure_basicsr_importable

ensure_basicsr_importable()
from basicsr.archs import build_network  # noqa: E402
from basicsr.losses import build_loss  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY  # noqa: E402

from constyle_plugin import ConStyleUNet, ConStyleV2  # noqa: E402
from constyle_plugin import archs as ref_archs  # noqa: E402
from constyle_plugin.training import losses as plugin_losses  # noqa: E402
from constyle_plugin.integrations import basicsr as bsr  # noqa: E402
from constyle_plugin.integrations import register_all  # noqa: E402

TINY_NAFNET = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1, 1, 1], "dec_blk_nums": [1, 1, 1, 1]}
OURS = {
    "ARCH": ["ConStyleUNet", "ConStyleV2", "ConStyleMoCo", "NAFNet", "Restormer", "ConvUNet", "MAXIM"],
    "MODEL": ["ConStyleV2PretrainModel", "ConStyleSRModel"],
    "LOSS": ["InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss"],
    "DATASET": ["MixDegradationDataset", "ConStylePretrainDataset", "AllInOneTrainDataset", "AllInOneTestDataset"],
}
REGISTRIES = {"ARCH": ARCH_REGISTRY, "MODEL": MODEL_REGISTRY, "LOSS": LOSS_REGISTRY, "DATASET": DATASET_REGISTRY}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is as fast, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def prompter_file(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    p = ConStyleV2()
    with torch.no_grad():  # non-default BatchNorm statistics, so a reset would show
        for bn in (p.mlp1[1], p.mlp2[1]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(7)
    return p.save_pretrained(tmp_path / "prompter.safetensors")


# ------------------------------------------------------------------------------------------- registration
def test_import_registers_everything_and_register_is_idempotent():
    for kind, names in OURS.items():
        for name in names:
            assert name in REGISTRIES[kind], f"{name} missing from {kind}"
    before = {kind: dict(REGISTRIES[kind]._obj_map) for kind in OURS}
    report = bsr.register()
    assert all(not r["added"] and not r["kept"] for r in report.values()), report
    assert sorted(report["ARCH"]["already"]) == sorted(OURS["ARCH"])
    said = bsr.registration_report()
    assert all(not r["kept"] for r in said.values()), said
    assert {kind: sorted(said[kind]["registered"]) for kind in OURS} == {k: sorted(v) for k, v in OURS.items()}
    register_all()  # what `import constyle_plugin` runs; a second time changes nothing
    assert {kind: dict(REGISTRIES[kind]._obj_map) for kind in OURS} == before
    assert ARCH_REGISTRY.get("NAFNet") is ref_archs.NAFNet
    assert LOSS_REGISTRY.get("InfoNCELoss") is plugin_losses.InfoNCELoss  # the class itself, not a copy


class HostNAFNet(ref_archs.NAFNet):
    """Stands in for a BasicSR fork's own NAFNet (same module layout, a different class)."""


HostNAFNet.__name__ = "NAFNet"


def test_simulated_fork_keeps_its_nafnet_and_conststyleunet_wraps_it(monkeypatch):
    # A fork's registries: BasicSR's own entries plus the fork's NAFNet, none of the plugin's.
    for kind, registry in REGISTRIES.items():
        fork = {k: v for k, v in registry._obj_map.items() if k not in OURS[kind]}
        monkeypatch.setattr(registry, "_obj_map", fork)
    ARCH_REGISTRY.register(HostNAFNet)

    report = bsr.register()
    assert report["ARCH"]["kept"] == ["NAFNet"]
    assert "NAFNet" not in report["ARCH"]["added"] and "Restormer" in report["ARCH"]["added"]
    assert ARCH_REGISTRY.get("NAFNet") is HostNAFNet
    again = bsr.register()  # idempotent inside the fork too, and BasicSR's duplicate assert never fires
    assert again["ARCH"]["kept"] == ["NAFNet"] and not again["ARCH"]["added"]

    said = bsr.registration_report()  # the same, as the `basicsr` command logs it at the start of a run
    assert said["ARCH"]["kept"] == ["NAFNet"] and "Restormer" in said["ARCH"]["registered"]
    assert "NAFNet" not in said["ARCH"]["registered"] and "InfoNCELoss" in said["LOSS"]["registered"]
    line = bsr.format_registration_report(said)
    assert "kept from the host: arch NAFNet" in line and "\n" not in line

    net = build_network({"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET),
                         "prompter": {"pretrained": None}})
    assert isinstance(net, ConStyleUNet)
    assert type(net.backbone) is HostNAFNet
    assert net.stages.encoder == ("downs.0", "downs.1", "downs.2")


def test_losses_build_from_the_registry_with_loss_weight():
    torch.manual_seed(0)
    q, k, queue = torch.randn(4, 128), torch.randn(4, 128), torch.randn(128, 16)
    loss = build_loss({"type": "InfoNCELoss", "temperature": 0.07, "loss_weight": 0.5})
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.07
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(loss(q, k, queue), expected, atol=1e-5)
    content = build_loss({"type": "ContentLoss", "loss_weight": 2.0})
    assert torch.allclose(content(q, k), 2.0 * ((q - k) ** 2).mean())
    assert isinstance(build_loss({"type": "StyleLoss"}), plugin_losses.StyleLoss)
    assert isinstance(build_loss({"type": "DistillKLLoss"}), plugin_losses.DistillKLLoss)


# ------------------------------------------------------------------------------------------- builders
def test_constyle_unet_arch_loads_the_prompter_file_and_is_identity_at_start(prompter_file):
    opt = {"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET), "prompter": {"pretrained": str(prompter_file)},
           "inject": ["encoder", "bottleneck", "decoder"]}
    net = build_network(opt)
    ref = ConStyleV2.from_pretrained(prompter_file)
    for (name, a), (_, b) in zip(net.prompter.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    assert net.prompter.frozen and not any(p.requires_grad for p in net.prompter.parameters())
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(net(x), net.backbone(x))  # zero-initialised adapters
    assert set(net.injections) >= {"encoder1", "encoder2", "encoder3", "bottleneck", "decoder1"}


@pytest.mark.parametrize("change, key", [
    ({"backbone": {"type": "NoSuchNet"}}, "backbone.type"),
    ({"backbone": {"type": "NAFNet", "no_such_arg": 1}}, "backbone"),
    ({"prompter": {"pretrained": "/no/such/prompter.pth"}}, "prompter.pretrained"),
    ({"prompter": {"pretrained": None, "frozen": True}}, "prompter.frozen"),
    ({"inject": ["encoder", "sideways"]}, "inject"),
    ({"stages": {"encoder": ["downs.0", "downs.9"], "bottleneck": "middle_blks"}}, "stages.encoder[1]"),
    ({"stages": {"encoder": ["downs.0"], "bottleneck": "middle_blks.0.beta"}}, "stages.bottleneck"),
    ({"prompt_size": 8}, "prompt_size"),
    ({"prompt_size": "256"}, "prompt_size"),
])
def test_constyle_unet_bad_options_name_the_key(change, key):
    opt = {"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET)}
    opt.update(change)
    with pytest.raises(bsr.OptionError) as info:
        build_network(opt)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    with pytest.raises(bsr.OptionError) as info:  # the options check names it under the network's key
        bsr.check_network_options(opt, "network_g")
    assert info.value.key == f"network_g.{key}"


def test_constyle_unet_prompt_size_option():
    net = build_network({"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET), "prompt_size": 64})
    assert isinstance(net, ConStyleUNet) and net.prompt_size == 64
    assert build_network({"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET), "prompt_size": None}).prompt_size is None


def test_prompter_and_moco_archs(prompter_file):
    prompter = build_network({"type": "ConStyleV2", "pretrained": str(prompter_file)})
    assert isinstance(prompter, ConStyleV2) and prompter.frozen
    fresh = build_network({"type": "ConStyleV2", "frozen": False})
    assert not fresh.frozen and all(p.requires_grad for p in fresh.parameters())
    moco = build_network({"type": "ConStyleMoCo", "queue_size": 32})
    assert moco.queue.shape == (128, 32)
    started = build_network({"type": "ConStyleMoCo", "queue_size": 16, "pretrained": str(prompter_file)})
    assert torch.equal(started.encoder_q.mlp1[1].running_mean, prompter.mlp1[1].running_mean)
    assert started.queue.shape == (128, 16)


# ------------------------------------------------------------------------------------------- models
def _sr_opt(tmp_path: Path, prompter_file: Path, model_type: str = "ConStyleSRModel") -> dict:
    return {
        "name": "unit", "model_type": model_type, "scale": 1, "num_gpu": 0, "dist": False, "rank": 0,
        "world_size": 1, "is_train": True,
        "network_g": {"type": "ConStyleUNet", "backbone": dict(TINY_NAFNET),
                      "prompter": {"pretrained": str(prompter_file)}},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "models": str(tmp_path / "models"),
                 "training_states": str(tmp_path / "states"), "visualization": str(tmp_path / "vis")},
        "train": {"ema_decay": 0.9,
                  "optim_g": {"type": "AdamW" if model_type != "SRModel" else "Adam", "lr": 1e-3,
                              "weight_decay": 1e-4, "betas": [0.9, 0.999]},
                  "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [10], "restart_weights": [1],
                                "eta_min": 1e-6},
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}},
        "val": {"save_img": False},
    }


def _train_steps(model, steps: int = 3) -> None:
    torch.manual_seed(0)
    for it in range(1, steps + 1):
        gt = torch.rand(2, 3, 32, 32)
        model.feed_data({"lq": (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1), "gt": gt})
        model.optimize_parameters(it)


def test_constyle_sr_model_ema_copy_is_a_hooked_wrapper_with_an_exact_prompter(tmp_path, prompter_file):
    from basicsr.models import build_model

    model = build_model(_sr_opt(tmp_path, prompter_file))
    assert isinstance(model.optimizer_g, torch.optim.AdamW)
    prompter_ids = {id(p) for p in model.net_g.prompter.parameters()}
    assert not any(id(p) in prompter_ids for g in model.optimizer_g.param_groups for p in g["params"])
    ema = model.net_g_ema
    assert isinstance(ema, ConStyleUNet) and ema.prompter.frozen and not ema.prompter.training

    _train_steps(model)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    for net in (model.net_g, model.net_g_ema):
        for name, value in net.prompter.state_dict().items():
            assert torch.equal(value, reference[name]), name
    # The EMA copy's adapters moved (hooks live on the copy): nudging them changes its output only.
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before_ema, before_g = ema(x), model.net_g(x)
        ema.injections["bottleneck"].fuse.weight.add_(0.5)
        assert not torch.equal(ema(x), before_ema)
        assert torch.equal(model.net_g(x), before_g)


def test_basicsr_srmodel_trains_the_wrapper_but_its_ema_perturbs_the_frozen_prompter(tmp_path, prompter_file):
    """Why ConStyleSRModel exists: SRModel (Adam only in 1.4.2) averages the frozen prompter too."""
    from basicsr.models import build_model

    model = build_model(_sr_opt(tmp_path, prompter_file, model_type="SRModel"))
    _train_steps(model)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.net_g.prompter.state_dict().items())
    drifted = [k for k, v in model.net_g_ema.prompter.state_dict().items() if not torch.equal(v, reference[k])]
    assert drifted  # rounding of x * d + x * (1 - d)


def test_pretrain_model_losses_switches_ema_and_checkpoint_layout(tmp_path):
    from basicsr.models import build_model

    opt = {
        "name": "unit_pretrain", "model_type": "ConStyleV2PretrainModel", "num_gpu": 0, "dist": False, "rank": 0,
        "world_size": 1, "is_train": True,
        "network_g": {"type": "ConStyleMoCo", "queue_size": 16},
        "path": {"pretrain_network_g": None, "models": str(tmp_path / "models"),
                 "training_states": str(tmp_path / "states")},
        "train": {"ema_decay": 0.5, "class_iter": 2, "kl_iter": 4,
                  "optim_g": {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-4},
                  "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [10], "restart_weights": [1]}},
    }
    (tmp_path / "models").mkdir()
    (tmp_path / "states").mkdir()
    model = build_model(opt)
    torch.manual_seed(0)
    seen = []
    for it in range(1, 5):
        model.feed_data({"query": torch.rand(4, 3, 48, 48), "key": torch.rand(4, 3, 48, 48),
                         "label": torch.tensor([0, 1, 2, 3]), "weather": torch.tensor([True, False, False, True])})
        model.optimize_parameters(it)
        seen.append(set(model.get_current_log()))
    base = {"l_infonce", "l_content", "l_style", "l_total"}
    assert seen[0] == base | {"l_class", "l_kl"}
    assert seen[2] == base | {"l_kl"}  # iter 3: class_iter 2 is over
    assert seen[3] == base  # iter 4: kl_iter 4 is over
    bare, ema = model.net_g, model.net_g_ema
    assert torch.equal(bare.queue, ema.queue) and torch.equal(bare.queue_ptr, ema.queue_ptr)
    assert torch.equal(bare.encoder_q.mlp1[1].running_mean, ema.encoder_q.mlp1[1].running_mean)
    assert not torch.equal(ema.encoder_q.mlp1[1].running_mean, torch.zeros(128))

    model.save(0, 4)
    ckpt = torch.load(tmp_path / "models" / "net_g_4.pth", weights_only=True)
    assert set(ckpt) == {"params", "params_ema"}
    assert {"queue", "queue_ptr", "encoder_q.stage1.0.0.weight", "encoder_k.mlp2.1.running_var"} <= set(ckpt["params"])
    loaded = ConStyleV2.from_pretrained(tmp_path / "models" / "net_g_4.pth")  # reads params_ema
    for name, value in ema.encoder_q.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    exported = ConStyleV2.from_pretrained(tmp_path / "models" / "prompter_4.safetensors")
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in loaded.state_dict().items())
    assert (tmp_path / "states" / "4.state").is_file()
