"""MMEngine integration: registration, models, preprocessor, metrics, and `constyle train` end to end."""
from __future__ import annotations

import io
import logging
import math
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import constyle_plugin  # noqa: F401  (registers)
from constyle_plugin import ConStyleV2
from constyle_plugin.archs import NAFNet

from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.registry import Registry
from mmengine.structures import BaseDataElement

from constyle_plugin import cli
from constyle_plugin.integrations import mmengine as cm
from constyle_plugin.integrations.mmengine import HOOKS, MODELS
from constyle_plugin.integrations.mmengine.runner import (ConfigError, check_config, load_config,
                                                          mmengine_checkpoint_globals)

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "options" / "mmengine"
TINY_NAFNET = dict(type="NAFNet", width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])


@pytest.fixture(scope="module", autouse=True)
def sample_cache(tmp_path_factory):
    """Export the sample photos once, into a temporary cache, for every dataset in this module."""
    cache = tmp_path_factory.mktemp("constyle_cache")
    old = os.environ.get("CONSTYLE_PLUGIN_CACHE")
    os.environ["CONSTYLE_PLUGIN_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("CONSTYLE_PLUGIN_CACHE", None)
    else:
        os.environ["CONSTYLE_PLUGIN_CACHE"] = old


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. On a shared, busy 2-core machine two OpenMP threads make
    these runs 30x slower (measured: 3.5 s vs 0.07 s per iteration) for no gain."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _restoration_options(max_iters=4, val_interval=4, ckpt_interval=2):
    return {
        "experiment_name": f"t{uuid.uuid4().hex[:12]}",  # fresh message hub / logger per run
        "train_cfg.max_iters": max_iters, "train_cfg.val_interval": val_interval,
        "default_hooks.checkpoint.interval": ckpt_interval, "default_hooks.logger.interval": 1,
        "model.backbone.width": 8, "model.backbone.enc_blk_nums": [1, 1, 1],
        "model.backbone.dec_blk_nums": [1, 1, 1], "model.probe_size": 64,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "train_dataloader.dataset.gt_size": 32,
        "val_dataloader.num_workers": 0, "val_dataloader.dataset.gt_size": 40,
        "val_dataloader.dataset.repeat": 1,
    }


def _pretrain_options(max_iters=3, val_interval=3, ckpt_interval=3):
    opts = {
        "experiment_name": f"t{uuid.uuid4().hex[:12]}",
        "train_cfg.max_iters": max_iters, "train_cfg.val_interval": val_interval,
        "default_hooks.checkpoint.interval": ckpt_interval, "default_hooks.logger.interval": 1,
        "model.queue_size": 8, "model.class_iter": 2,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "val_dataloader.num_workers": 0,
        "val_dataloader.batch_size": 8,
    }
    for split in ("train", "val"):
        opts.update({f"{split}_dataloader.dataset.resize": 40, f"{split}_dataloader.dataset.crop_size": 32,
                     f"{split}_dataloader.dataset.sample_crop_size": 48,
                     f"{split}_dataloader.dataset.crops_per_photo": 1})
    return opts


def _as_cli(options):
    return [f"{k}={v}".replace(" ", "") for k, v in options.items()]


def _load(path):
    with mmengine_checkpoint_globals():
        return torch.load(path, map_location="cpu", weights_only=True)


def _source_state(ckpt):
    """The trained model's own weights (EMAHook swaps the average into 'state_dict')."""
    if "ema_state_dict" in ckpt:
        return {k[len("module."):]: v for k, v in ckpt["ema_state_dict"].items() if k.startswith("module.")}
    return ckpt["state_dict"]


def _val_scores(work_dir: Path):
    """The metrics of the last validation, from MMEngine's scalars.json."""
    lines = sorted(work_dir.glob("*/vis_data/scalars.json"))
    assert lines, f"no scalars.json under {work_dir}"
    import json

    records = [json.loads(l) for l in lines[-1].read_text().splitlines() if l.strip()]
    vals = [r for r in records if "PSNR" in r or "top1" in r]
    assert vals, f"no validation record in {lines[-1]}"
    return vals[-1]


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def test_import_registers_into_the_constyle_scope():
    from constyle_plugin.integrations.mmengine import DATASETS, METRICS, OPTIM_WRAPPER_CONSTRUCTORS, RUNNERS

    for name in ("ConStyleRestorer", "ConStylePretrainer", "ConStyleDataPreprocessor", "NAFNet", "Restormer",
                 "ConvUNet", "L1Loss", "CharbonnierLoss", "InfoNCELoss", "StyleLoss", "DistillKLLoss"):
        assert name in MODELS.module_dict, name
    from constyle_plugin.training.losses import InfoNCELoss

    assert MODELS.get("InfoNCELoss") is InfoNCELoss  # the same class, registered again
    for name in ("MixDegradationDataset", "ConStylePretrainDataset", "PairedFolderDataset"):
        assert name in DATASETS.module_dict
    for name in ("PSNR", "SSIM", "PretextAccuracy"):
        assert name in METRICS.module_dict
    assert "ConStyleOptimWrapperConstructor" in OPTIM_WRAPPER_CONSTRUCTORS.module_dict
    assert "ConStyleRunner" in RUNNERS.module_dict


def test_root_registries_hold_nothing_of_the_plugin_and_the_scope_builds_it():
    import mmengine.registry as root

    assert MODELS.scope == "constyle" and MODELS.parent is root.MODELS
    for registry, names in ((root.MODELS, ("NAFNet", "ConStyleRestorer", "L1Loss", "InfoNCELoss")),
                            (root.DATASETS, ("MixDegradationDataset",)), (root.METRICS, ("PSNR", "SSIM")),
                            (root.HOOKS, ("PrompterExportHook",)), (root.RUNNERS, ("ConStyleRunner",)),
                            (root.OPTIM_WRAPPER_CONSTRUCTORS, ("ConStyleOptimWrapperConstructor",))):
        for name in names:
            assert name not in registry.module_dict, (registry.name, name)
            assert registry.get(name) is None, (registry.name, name)
    net = root.MODELS.build(dict(type="constyle.NAFNet", **{k: v for k, v in TINY_NAFNET.items() if k != "type"}))
    assert type(net).__name__ == "NAFNet" and type(net).__module__ == "constyle_plugin.archs.nafnet"
    assert root.METRICS.build(dict(type="constyle.PSNR")).__class__.__name__ == "PSNR"
    with root.DefaultScope.overwrite_default_scope("constyle"):  # as a config's default_scope='constyle'
        assert type(root.MODELS.build(dict(TINY_NAFNET))).__name__ == "NAFNet"


def test_register_keeps_a_host_nafnet_and_is_idempotent():
    models = Registry("model")

    class HostNAFNet(torch.nn.Module):
        pass

    models.register_module(name="NAFNet", module=HostNAFNet)
    regs = dict(datasets=Registry("dataset"), metrics=Registry("metric"),
                optim_wrapper_constructors=Registry("ctor"), runners=Registry("runner"), hooks=Registry("hook"))
    added = cm.register(models=models, **regs)
    assert models.get("NAFNet") is HostNAFNet
    assert "NAFNet" not in added["models"] and "ConStyleRestorer" in added["models"]
    assert models.get("Restormer") is not None
    again = cm.register(models=models, **regs)
    assert all(v == [] for v in again.values())
    assert models.get("NAFNet") is HostNAFNet


def test_import_into_a_process_whose_root_registry_has_a_nafnet():
    code = (
        "import torch\n"
        "from mmengine.registry import MODELS\n"
        "class NAFNet(torch.nn.Module):\n    pass\n"
        "MODELS.register_module(name='NAFNet', module=NAFNet)\n"
        "import constyle_plugin\n"
        "from constyle_plugin.integrations.mmengine import register\n"
        "register()\n"
        "assert MODELS.get('NAFNet') is NAFNet, MODELS.get('NAFNet')\n"
        "assert MODELS.get('constyle.ConStyleRestorer') is not None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=_subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


# ------------------------------------------------------------------------------------------------
# Model and preprocessor
# ------------------------------------------------------------------------------------------------
def _tiny_restorer(prompter=dict(pretrained=None), size_multiple=32):
    torch.manual_seed(0)
    return MODELS.build(dict(type="ConStyleRestorer", backbone=TINY_NAFNET, prompter=prompter, probe_size=64,
                             data_preprocessor=dict(type="ConStyleDataPreprocessor", size_multiple=size_multiple)))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_restorer_pads_odd_sizes_and_crops_back():
    model = _tiny_restorer()
    assert model.data_preprocessor.multiple == 32  # lcm(32, NAFNet's 8)
    sizes = [(37, 53), (30, 41)]
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in sizes]
    samples = []
    for h, w in sizes:
        ds = BaseDataElement()
        ds.gt_img = torch.rand(3, h, w, generator=gen)
        samples.append(ds)
    data = model.data_preprocessor({"inputs": inputs, "data_samples": samples})
    assert data["inputs"].shape == (2, 3, 64, 64)
    assert data["inputs"].dtype == torch.float32 and float(data["inputs"].max()) <= 1.0
    # uint8 -> [0, 1], and the image sits unchanged at the top-left of the padded batch
    assert torch.allclose(data["inputs"][0, :, :37, :53], inputs[0].float() / 255)
    model.eval()
    with torch.no_grad():
        preds = model(**data, mode="predict")
        losses = model(**data, mode="loss")
        raw = model(**data, mode="tensor")
    assert [tuple(p.pred_img.shape) for p in preds] == [(3, h, w) for h, w in sizes]
    assert raw.shape == (2, 3, 64, 64)
    assert torch.equal(preds[1].pred_img, raw[1, :, :30, :41].clamp(0, 1))
    assert torch.equal(preds[0].gt_img, samples[0].gt_img)
    expected = torch.stack([(raw[i, :, :h, :w] - samples[i].gt_img).abs().mean() for i, (h, w) in enumerate(sizes)])
    assert torch.allclose(losses["loss_pix"], expected.mean(), atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("backbone, multiple", [
    (dict(type="Restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]), 8),
    (dict(type="ConvUNet", width=8, depth=3, blocks_per_level=1), 8),
])
def test_restorer_wraps_the_other_reference_backbones(backbone, multiple):
    torch.manual_seed(0)
    model = MODELS.build(dict(type="ConStyleRestorer", backbone=backbone, probe_size=64))
    assert model.data_preprocessor.multiple == multiple  # read from the backbone's size_multiple
    assert len(model.net.injections) == 4  # three encoder stages + the bottleneck
    data = model.data_preprocessor({"inputs": [torch.rand(3, 19, 27)]})
    assert data["inputs"].shape == (1, 3, 24, 32)
    with torch.no_grad():
        assert model(**data, mode="predict")[0].pred_img.shape == (3, 19, 27)


def test_origin_twin_is_the_bare_backbone():
    model = _tiny_restorer(prompter=None)
    assert isinstance(model.net, NAFNet) and model.prompter is None
    assert not any("prompter" in k for k in model.state_dict())


def test_preprocessor_rejects_bad_dtypes():
    pre = MODELS.build(dict(type="ConStyleDataPreprocessor"))
    with pytest.raises(TypeError, match="inputs"):
        pre({"inputs": [torch.zeros(3, 8, 8, dtype=torch.int32)]})
    with pytest.raises(ValueError, match="size_multiple"):
        MODELS.build(dict(type="ConStyleDataPreprocessor", size_multiple=0))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_optimiser_sees_only_trainable_parameters():
    from constyle_plugin.integrations.mmengine import OPTIM_WRAPPER_CONSTRUCTORS

    model = _tiny_restorer()
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ConStyleOptimWrapperConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=3e-4, weight_decay=1e-4))))
    optimizer = ctor(model).optimizer
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable
    assert not in_opt & {id(p) for p in model.prompter.parameters()}
    # and with paramwise_cfg (MMEngine's own add_params path)
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="ConStyleOptimWrapperConstructor", paramwise_cfg=dict(norm_decay_mult=0.0),
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=3e-4, weight_decay=1e-4))))
    in_opt = {id(p) for g in ctor(model).optimizer.param_groups for p in g["params"]}
    assert in_opt == trainable


def test_pretrainer_switches_losses_by_the_message_hub_iteration():
    torch.manual_seed(0)
    model = MODELS.build(dict(type="ConStylePretrainer", queue_size=8, num_classes=10, class_iter=3, kl_iter=5,
                              degradation=None))
    inputs = {"query": torch.rand(2, 3, 32, 32), "key": torch.rand(2, 3, 32, 32)}
    samples = []
    for label in (1, 7):
        ds = BaseDataElement(metainfo={"weather": False})
        ds.gt_label = torch.tensor(label)
        samples.append(ds)
    hub = MessageHub.get_current_instance()
    names = {}
    for it in (0, 3, 5):
        hub.update_info("iter", it)
        names[it] = set(model(inputs, samples, mode="loss"))
    hub.update_info("iter", 0)
    base = {"loss_infonce", "loss_content", "loss_style"}
    assert names[0] == base | {"loss_class", "loss_kl"}
    assert names[3] == base | {"loss_kl"}
    assert names[5] == base
    preds = model(inputs["query"], samples, mode="predict")
    assert preds[0].pred_logits.shape == (10,) and int(preds[1].gt_label) == 7


def test_pretrainer_degrades_only_the_non_weather_queries():
    model = MODELS.build(dict(type="ConStylePretrainer", queue_size=8, num_classes=10, degradation=dict(seed=0)))
    query = torch.rand(3, 3, 48, 48)
    samples = [BaseDataElement(metainfo={"weather": w}) for w in (True, False, True)]
    out = model.degrade_queries(query, samples)
    assert torch.equal(out[0], query[0]) and torch.equal(out[2], query[2])
    assert not torch.allclose(out[1], query[1], atol=1e-3)
    assert not any(k.startswith("_degrader") or "jpeger" in k for k in model.state_dict())


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def test_psnr_rgb_and_y_against_an_independent_computation():
    from constyle_plugin.integrations.mmengine import METRICS
    from skimage.color import rgb2ycbcr

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    as_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255  # noqa: E731
    sample = {"pred_img": as_t(pred), "gt_img": as_t(gt)}
    scores = {}
    for cfg in (dict(type="PSNR"), dict(type="PSNR", test_y_channel=True), dict(type="SSIM"),
                dict(type="SSIM", test_y_channel=True)):
        metric = METRICS.build(cfg)
        metric.process({}, [sample])
        scores.update(metric.compute_metrics(metric.results))
    assert scores["PSNR"] == pytest.approx(_psnr(pred, gt), abs=1e-6)
    y_pred, y_gt = rgb2ycbcr(pred)[..., 0], rgb2ycbcr(gt)[..., 0]  # ITU-R BT.601, from RGB
    assert scores["PSNR_Y"] == pytest.approx(_psnr(y_pred, y_gt), abs=1e-3)
    assert 0 < scores["SSIM"] < 1 and 0 < scores["SSIM_Y"] < 1


def test_pretext_accuracy_metric():
    from constyle_plugin.integrations.mmengine import METRICS

    metric = METRICS.build(dict(type="PretextAccuracy", topk=(1, 2)))
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.7], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = [1, 2, 0, 2]  # top-1 hit, top-2 hit, miss, miss
    metric.process({}, [{"pred_logits": l, "gt_label": torch.tensor(y)} for l, y in zip(logits, labels)])
    assert metric.compute_metrics(metric.results) == {"top1": 25.0, "top2": 50.0}


def test_pretext_accuracy_reports_latent_spread_and_warns_on_collapse(monkeypatch):
    from constyle_plugin.integrations.mmengine import METRICS
    from constyle_plugin.integrations.mmengine import data as mmengine_data

    logged = []
    monkeypatch.setattr(mmengine_data, "print_log", lambda msg, **kw: logged.append((msg, kw.get("level"))))
    logits, labels = torch.eye(3)[[0, 1, 2, 0]], [0, 1, 2, 0]
    varied = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    results = {}
    for name, latents in (("varied", varied), ("collapsed", torch.ones(4, 128))):
        metric = METRICS.build(dict(type="PretextAccuracy", topk=(1,)))
        metric.process({}, [{"pred_logits": l, "gt_label": torch.tensor(y), "pred_latent": z}
                            for l, y, z in zip(logits, labels, latents)])
        logged.clear()
        results[name] = (metric.compute_metrics(metric.results), list(logged))
    assert results["varied"][0]["top1"] == 100.0 and results["varied"][0]["latent_spread"] > 0.5
    assert results["varied"][1] == []
    assert results["collapsed"][0]["latent_spread"] == 0.0
    ((msg, level),) = results["collapsed"][1]
    assert "normalize: true" in msg and level == logging.WARNING


# ------------------------------------------------------------------------------------------------
# Config checks and safe loading
# ------------------------------------------------------------------------------------------------
def test_unknown_type_fails_before_training_naming_the_key(tmp_path, capsys):
    work = tmp_path / "bad_type"
    code = cli.main(["train", str(CONFIGS / "nafnet_constyle.py"), "--work-dir", str(work), "--cfg-options",
                     "model.backbone.type=NAFNett", "val_evaluator.0.type=PSNRR"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.backbone.type: 'NAFNett'" in err and "did you mean 'NAFNet'" in err
    assert "val_evaluator[0].type: 'PSNRR'" in err
    assert not work.exists()  # nothing was built


def test_misspelt_argument_fails_naming_the_key():
    cfg = load_config(str(CONFIGS / "nafnet_constyle.py"), {"model.backbone.widht": 8,
                                                             "val_dataloader.dataset.gt_sise": 8})
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert "model.backbone.widht: NAFNet takes no argument 'widht'; did you mean 'width'?" in str(info.value)
    assert ("val_dataloader.dataset.gt_sise: MixDegradationDataset has no option 'gt_sise'; "
            "did you mean 'gt_size'?") in str(info.value)
    for name in ("nafnet_constyle.py", "nafnet_origin.py", "constyle_v2_pretrain.py"):  # shipped configs pass
        check_config(load_config(str(CONFIGS / name)))


def test_bad_paths_fail_naming_the_key(tmp_path):
    cfg = load_config(str(CONFIGS / "nafnet_constyle.py"), {
        "model.prompter.pretrained": str(tmp_path / "missing.safetensors"),
        "train_dataloader.dataset.dataroot_gt": str(tmp_path / "no_such_folder")})
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert "model.prompter.pretrained:" in str(info.value)
    assert "train_dataloader.dataset.dataroot_gt:" in str(info.value)
    with pytest.raises(ConfigError, match="--resume"):
        cm.train(str(CONFIGS / "nafnet_constyle.py"), work_dir=str(tmp_path / "w"),
                 resume=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="CONFIG"):
        cm.train(str(tmp_path / "no_config.py"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--amp"):
            cm.train(str(CONFIGS / "nafnet_constyle.py"), work_dir=str(tmp_path / "w"), amp=True)


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------
def test_mix_degradation_dataset_holds_out_validation_photos():
    from constyle_plugin.integrations.mmengine import DATASETS

    train = DATASETS.build(dict(type="MixDegradationDataset", photos="train", gt_size=32, phase="train"))
    val = DATASETS.build(dict(type="MixDegradationDataset", photos="val", gt_size=40, phase="val"))
    a, b = set(train.metainfo["photos"]), set(val.metainfo["photos"])
    assert a and b and not a & b
    item = val[0]
    assert item["inputs"].shape == (3, 40, 40) and item["data_samples"].gt_img.shape == (3, 40, 40)
    assert item["data_samples"].key in b
    again = val[0]  # validation samples are deterministic
    assert torch.equal(item["inputs"], again["inputs"])
    with pytest.raises(TypeError, match="'gt_sise' \\(did you mean 'gt_size'\\?\\)"):
        DATASETS.build(dict(type="MixDegradationDataset", gt_sise=32))


def test_paired_folder_dataset(tmp_path):
    import cv2
    from constyle_plugin.integrations.mmengine import DATASETS

    rng = np.random.default_rng(0)
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    lq.mkdir()
    gt.mkdir()
    for name, (h, w) in (("a", (21, 30)), ("b", (40, 33))):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(gt / f"{name}.png"), img)
        cv2.imwrite(str(lq / f"{name}.png"), 255 - img)
    ds = DATASETS.build(dict(type="PairedFolderDataset", lq_folder=str(lq), gt_folder=str(gt)))
    assert len(ds) == 2
    item = ds[1]
    assert item["inputs"].shape == (3, 40, 33) and item["data_samples"].key == "b"
    bgr = cv2.imread(str(gt / "b.png"))
    assert torch.allclose(item["data_samples"].gt_img, torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1) / 255)
    assert torch.allclose(item["inputs"] + item["data_samples"].gt_img, torch.ones_like(item["inputs"]), atol=1e-6)
    train = DATASETS.build(dict(type="PairedFolderDataset", lq_folder=str(lq), gt_folder=str(gt), phase="train",
                                gt_size=16))
    assert train[0]["inputs"].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="lq_folder"):
        DATASETS.build(dict(type="PairedFolderDataset", lq_folder=str(tmp_path / "x"), gt_folder=str(gt)))
    (gt / "c.png").write_bytes((gt / "a.png").read_bytes())
    with pytest.raises(ValueError, match="lq_folder / gt_folder"):
        DATASETS.build(dict(type="PairedFolderDataset", lq_folder=str(lq), gt_folder=str(gt)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_allow_list_still_refuses_other_globals(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    evil = tmp_path / "evil.pth"
    torch.save({"meta": {}, "x": _Evil()}, evil)
    sneaky = tmp_path / "sneaky.pth"
    torch.save({"f": getattr(HistoryBuffer, "__init__")}, sneaky)  # pickled as getattr(HistoryBuffer, ...)
    with mmengine_checkpoint_globals():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(evil, weights_only=True)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(sneaky, weights_only=True)
        buf = io.BytesIO()
        hb = HistoryBuffer()
        hb.update(1.5)
        torch.save({"hb": hb, "n": np.float64(2.0), "a": np.arange(3)}, buf)
        buf.seek(0)
        back = torch.load(buf, weights_only=True)
    assert back["hb"].current() == 1.5 and back["n"] == 2.0 and back["a"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------
# End to end: constyle train on every shipped config
# ------------------------------------------------------------------------------------------------
@HOOKS.register_module(name="_RecordPrompterState", force=True)
class _RecordPrompterState(Hook):
    """Records, at every training iteration, what the Runner did to the model and optimiser."""

    records: list = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model
        prompter = model.prompter
        opt_ids = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}
        type(self).records.append(dict(
            model_training=model.training, prompter_training=prompter.training,
            any_prompter_training=any(m.training for m in prompter.modules()),
            prompter_grad=any(p.requires_grad for p in prompter.parameters()),
            prompter_in_opt=bool(opt_ids & {id(p) for p in prompter.parameters()}),
            n_opt=len(opt_ids), n_trainable=sum(p.requires_grad for p in model.parameters())))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nafnet_constyle_trains_validates_and_resumes_exactly(tmp_path):
    config = str(CONFIGS / "nafnet_constyle.py")
    torch.manual_seed(123)
    prompter_file = ConStyleV2().freeze().save_pretrained(tmp_path / "prompter.safetensors")
    first = tmp_path / "first"
    opts = _restoration_options()
    opts["model.prompter.pretrained"] = str(prompter_file)
    _RecordPrompterState.records = []
    cm.train(config, work_dir=str(first), cfg_options={**opts, "custom_hooks": [
        dict(type="EMAHook", momentum=0.001, priority="ABOVE_NORMAL"), dict(type="_RecordPrompterState")]})

    # validation ran, with finite scores; checkpoints and the best-PSNR checkpoint exist
    scores = _val_scores(first)
    for key in ("PSNR", "SSIM", "PSNR_Y", "SSIM_Y"):
        assert math.isfinite(scores[key]), (key, scores)
    assert (first / "iter_2.pth").is_file() and (first / "iter_4.pth").is_file()
    assert list(first.glob("best_PSNR_iter_*.pth"))

    # the prompter stayed frozen, in eval mode and out of the optimiser under the Runner
    recs = _RecordPrompterState.records
    assert len(recs) == 4
    for r in recs:
        assert r["model_training"] and not r["prompter_training"] and not r["any_prompter_training"]
        assert not r["prompter_grad"] and not r["prompter_in_opt"]
        assert r["n_opt"] == r["n_trainable"] > 0
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    final = _load(first / "iter_4.pth")
    state = _source_state(final)
    for k, v in reference.items():  # weights and BatchNorm statistics untouched
        assert torch.equal(state[f"net.prompter.{k}"], v), k
    assert len(final["optimizer"]["state"]) == recs[-1]["n_trainable"]

    # resume from iteration 2 in a fresh work dir, through the command line
    second = tmp_path / "second"
    args = ["train", config, "--work-dir", str(second), "--resume", str(first / "iter_2.pth"),
            "--cfg-options", *_as_cli({**opts, "experiment_name": f"t{uuid.uuid4().hex[:12]}"})]
    assert cli.main(args) == 0
    logs = "\n".join(p.read_text() for p in second.glob("*/*.log"))
    assert "resumed epoch: 0, iter: 2" in logs
    assert "Iter(train) [3/4]" in logs and "Iter(train) [1/4]" not in logs
    resumed = _load(second / "iter_4.pth")
    assert resumed["meta"]["iter"] == 4
    halfway = _load(first / "iter_2.pth")
    assert any(not torch.allclose(halfway["optimizer"]["state"][pid]["exp_avg"], st["exp_avg"])
               for pid, st in final["optimizer"]["state"].items())  # the comparison below is not trivial
    # same optimiser state (AdamW moments, step), LR scheduler and weights as the uninterrupted run
    for pid, st in final["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.allclose(resumed["optimizer"]["state"][pid][name], value, atol=1e-6), (pid, name)
    assert resumed["param_schedulers"] == final["param_schedulers"]
    for k, v in final["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][k], v, atol=1e-5), k


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nafnet_origin_trains_and_validates(tmp_path):
    work = tmp_path / "origin"
    opts = _restoration_options(max_iters=2, val_interval=2, ckpt_interval=2)
    opts.pop("model.probe_size")
    assert cli.main(["train", str(CONFIGS / "nafnet_origin.py"), "--work-dir", str(work),
                     "--cfg-options", *_as_cli(opts)]) == 0
    assert math.isfinite(_val_scores(work)["PSNR"])
    ckpt = _load(work / "iter_2.pth")
    assert ckpt["state_dict"] and not any("prompter" in k or "injections" in k for k in ckpt["state_dict"])


def test_pretrain_then_stage_two_loads_the_exported_prompter(tmp_path):
    stage1 = tmp_path / "stage1"
    assert cli.main(["train", str(CONFIGS / "constyle_v2_pretrain.py"), "--work-dir", str(stage1),
                     "--cfg-options", *_as_cli(_pretrain_options())]) == 0
    scores = _val_scores(stage1)
    assert 0.0 <= scores["top1"] <= scores["top5"] <= 100.0
    assert scores["latent_spread"] >= 0.0  # the collapse diagnostic reaches the scalar log
    exported = stage1 / "constyle_v2_prompter.safetensors"
    prompter = ConStyleV2.from_pretrained(exported)
    assert not (stage1 / "constyle_v2_prompter.head.safetensors").exists()  # no degradation head, no sidecar
    ckpt = _load(stage1 / "iter_3.pth")
    assert int(ckpt["meta"]["iter"]) == 3
    # the export is the EMA query encoder (EMAHook swaps the average into 'state_dict')
    ema_q = {k[len("moco.encoder_q."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("moco.encoder_q.")}
    for k, v in prompter.state_dict().items():
        assert torch.allclose(v, ema_q[k]), k
    # the queue moved: 3 iterations of batch 2 enqueued 6 latents
    assert int(_source_state(ckpt)["moco.queue_ptr"]) == 6

    stage2 = tmp_path / "stage2"
    opts = _restoration_options(max_iters=1, val_interval=1, ckpt_interval=1)
    opts["model.prompter.pretrained"] = str(exported)
    assert cli.main(["train", str(CONFIGS / "nafnet_constyle.py"), "--work-dir", str(stage2),
                     "--cfg-options", *_as_cli(opts)]) == 0
    state = _source_state(_load(stage2 / "iter_1.pth"))
    assert torch.equal(state["net.prompter.stage1.0.0.weight"], prompter.state_dict()["stage1.0.0.weight"])


def test_console_script_module_help():
    out = subprocess.run([sys.executable, "-m", "constyle_plugin.cli", "train", "--help"], capture_output=True,
                         text=True, timeout=120, env=_subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--work-dir", "--cfg-options", "--resume", "--amp", "--launcher"):
        assert flag in out.stdout
