"""The plugin inside BasicSR forks (issue: "Inside the real code bases").

- 1.2-era forks (NAFNet, Restormer): ``tests/forks/mini_fork`` is a miniature of their layout (a
  ``basicsr`` namespace package without registries, module scans, ``basicsr/train.py`` with
  ``parse_options`` / ``main``). Each test copies it into a temporary folder and runs a fresh Python
  in which ``basicsr`` resolves to that copy only (the PyPI basicsr of the test environment is
  hidden), as it would in a venv where the fork is installed with ``python setup.py develop``.
- Vendored registries (the authors' release): BasicSR-style ``Registry`` objects under another name.
- The light import: ``import constyle_plugin`` imports no trainer, and registration still happens.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from constyle_plugin import ConStyleUNet, ConStyleV2, wrap_unet

FORK = Path(__file__).resolve().parents[2] / "forks" / "mini_fork"
TINY = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1, 1], "dec_blk_nums": [1, 1, 1]}

# A fresh interpreter whose `basicsr` is the fork in the current folder (PyPI's basicsr is hidden).
BOOT = textwrap.dedent("""
    import importlib.machinery, os, sys
    class OnlyTheFork:
        def find_spec(self, name, path=None, target=None):
            if name == "basicsr":
                return importlib.machinery.PathFinder.find_spec(name, [os.getcwd()])
    sys.meta_path.insert(0, OnlyTheFork())
    sys.path.insert(0, os.getcwd())
""")
CLI = BOOT + "from constyle_plugin.integrations.basicsr.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def python(code: str, cwd: Path, *args: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra_env}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _write_pairs(folder: Path, count: int, seed: int) -> None:
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    photo = data.astronaut()
    for sub in ("gt", "lq"):
        (folder / sub).mkdir(parents=True)
    for i in range(count):
        top, left = rng.integers(0, 400, size=2)
        gt = photo[top:top + 40, left:left + 40].astype(np.float32)
        lq = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255)
        cv2.imwrite(str(folder / "gt" / f"{i}.png"), gt[:, :, ::-1].astype(np.uint8))
        cv2.imwrite(str(folder / "lq" / f"{i}.png"), lq[:, :, ::-1].astype(np.uint8))


@pytest.fixture
def fork(tmp_path: Path) -> Path:
    root = tmp_path / "fork"
    shutil.copytree(FORK, root)
    _write_pairs(root / "datasets" / "train", 6, 0)
    _write_pairs(root / "datasets" / "val", 2, 1)
    return root


def options(root: Path, name: str, model_type: str = "ImageRestorationModel", **train: object) -> Path:
    opt = {
        "name": name, "model_type": model_type, "num_gpu": 0, "manual_seed": 10,
        "datasets": {
            "train": {"name": "train", "type": "PairedImageDataset", "dataroot_gt": "datasets/train/gt",
                      "dataroot_lq": "datasets/train/lq", "gt_size": 32, "batch_size_per_gpu": 2},
            "val": {"name": "val", "type": "PairedImageDataset", "dataroot_gt": "datasets/val/gt",
                    "dataroot_lq": "datasets/val/lq"},
        },
        "network_g": {"type": "ConStyleUNet", "backbone": dict(TINY), "prompter": {"pretrained": None}},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {"total_iter": 4, "optim_g": {"type": "AdamW", "lr": 1e-2},
                  "pixel_opt": {"type": "PSNRLoss", "loss_weight": 1.0}, **train},
        "val": {"val_freq": 2},
        "logger": {"save_checkpoint_freq": 2},
    }
    path = root / "options" / f"{name}.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def packaged_prompter_state() -> dict:
    return ConStyleV2.from_pretrained().state_dict()


def assert_prompter_bit_identical_and_adapters_trained(params: dict) -> None:
    packaged = packaged_prompter_state()
    prompter = {k[len("prompter."):]: v for k, v in params.items() if k.startswith("prompter.")}
    assert prompter.keys() == packaged.keys()
    for key, value in packaged.items():
        assert torch.equal(prompter[key], value), f"prompter.{key} changed"
    adapters = {k: v for k, v in params.items() if k.startswith("injections.")}
    assert adapters, "no adapter weights saved"
    # Every adapter ends in a zero-initialised projection: trained ones have moved off zero.
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "proj" in k or k.endswith("weight")), \
        "the adapters did not train"


# ------------------------------------------------------------------------------------ registration
REGISTRATION = BOOT + textwrap.dedent("""
    import json
    ORDER = sys.argv[1]
    if ORDER == "plugin-first":
        import constyle_plugin
    import basicsr.models.archs as archs, basicsr.models as models, basicsr.data as data
    import basicsr.models.losses as losses
    if ORDER == "plugin-after":
        import constyle_plugin
    net = archs.define_network({"type": "ConStyleUNet", "backbone": %r})
    ref = archs.define_network({"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1],
                                "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]})
    out = {"wrapped": type(net).__name__, "backbone": type(net.backbone).__module__,
           "restormer": type(ref).__module__,
           "psnr_loss": losses.PSNRLoss.__module__, "infonce": getattr(losses, "InfoNCELoss").__module__,
           "dataset": data.create_dataset.__globals__["_dataset_modules"][-1].MixDegradationDataset.__module__,
           "user_arch": archs.define_network({"type": "MyUNet"}).__class__.__module__,
           "heavy": sorted(m for m in ("mmengine", "basicsr.utils.registry") if m in sys.modules)}
    try:
        models.create_model({"model_type": "ConStyleSRModel"})
    except ImportError as exc:
        out["model_error"] = str(exc)
    try:
        archs.define_network({"type": "NoSuchNet"})
    except ValueError as exc:
        out["unknown"] = str(exc)
    print(json.dumps(out))
""") % (TINY,)

USER_ARCH = '''
import constyle_plugin  # a user's arch file that imports the plugin while the fork scans its archs
from torch import nn


class MyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
'''


@pytest.mark.parametrize("order", ["plugin-first", "plugin-after", "from-an-arch-file"])
def test_fork_finds_the_plugins_names_and_keeps_its_own(fork, order):
    import json

    (fork / "basicsr" / "models" / "archs" / "zz_user_arch.py").write_text(USER_ARCH)
    proc = python(REGISTRATION, fork, order)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["wrapped"] == "ConStyleUNet"
    assert out["backbone"] == "basicsr.models.archs.NAFNet_arch"  # the fork's own NAFNet is wrapped
    assert out["restormer"] == "constyle_plugin.archs.restormer"  # the fork has none: ours
    assert out["psnr_loss"] == "basicsr.models.losses.losses"  # the fork's loss stays the fork's
    assert out["infonce"] == "constyle_plugin.training.losses"
    assert out["dataset"] == "constyle_plugin.data.datasets"
    assert out["user_arch"] == "basicsr.models.archs.zz_user_arch"
    assert out["heavy"] == []  # nothing of PyPI BasicSR or MMEngine was imported
    assert "ImageRestorationModel" in out["model_error"] and "ConStyleUNet" in out["model_error"]
    assert out["unknown"] == "NoSuchNet is not found."  # the fork's own error, for names nobody has


# --------------------------------------------------------------------------- the fork's own pipeline
def test_basicsr_train_runs_the_forks_pipeline_with_validation_and_resume_on_cpu(fork):
    opt = options(fork, "nafnet_like")
    # --force_yml reaches the fork before it derives its folders from the options (name included)
    proc = python(CLI, fork, "train", "-opt", str(opt), "--force_yml", "name=renamed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = fork / "experiments" / "renamed"
    log = (exp / "train.log").read_text()
    assert "Model [ImageRestorationModel] is created." in log  # the fork's model class, not ours
    assert log.count("Validation psnr") == 3  # NAFNet-style validation (torch.distributed.reduce) ran
    params = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params"]
    assert_prompter_bit_identical_and_adapters_trained(params)
    assert any(k.startswith("backbone.encoders.") for k in params)  # the fork's module names

    # Extending the run: the fork resumes by itself from its newest state (mapped onto the CPU here).
    proc = python(CLI, fork, "train", "-opt", str(opt), "--force_yml", "name=renamed", "train:total_iter=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (exp / "train.log").read_text()
    assert "Resuming training from epoch: 1, iter: 4." in log
    assert "iter: 6 l_pix" in log and "iter: 5 l_pix" in log
    params = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params"]
    assert_prompter_bit_identical_and_adapters_trained(params)

    # The fork's test entry point, loading the trained network through the fork's load_network.
    test_opt = yaml.safe_load(opt.read_text())
    test_opt["datasets"] = {"test_1": {**test_opt["datasets"]["val"], "name": "held-out"}}
    test_opt["path"]["pretrain_network_g"] = str(exp / "models" / "net_g_latest.pth")
    test_file = fork / "options" / "test.yml"
    test_file.write_text(yaml.safe_dump(test_opt))
    proc = python(CLI, fork, "test", "-opt", str(test_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Test held-out psnr" in (fork / "results" / "nafnet_like" / "test.log").read_text()

    # constyle restore builds the network through the fork's own archs (forks keep no options copy:
    # --config names the file trained with)
    restore = BOOT + "from constyle_plugin.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = python(restore, fork, "restore", "--checkpoint", str(exp / "models" / "net_g_latest.pth"),
                  "--config", str(opt), "--input", "datasets/val/lq", "--output", "restored")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (fork / "restored").iterdir()) == ["0.png", "1.png"]


def test_forks_ema_keeps_the_frozen_prompter_bit_identical(fork):
    opt = options(fork, "restormer_like", model_type="ImageCleanModel", ema_decay=0.9)
    proc = python(CLI, fork, "train", "-opt", str(opt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(fork / "experiments" / "restormer_like" / "models" / "net_g_latest.pth", weights_only=True)
    assert_prompter_bit_identical_and_adapters_trained(saved["params"])
    assert_prompter_bit_identical_and_adapters_trained(saved["params_ema"])
    trained = [k for k in saved["params"] if k.startswith("injections.")]
    assert any(not torch.equal(saved["params"][k], saved["params_ema"][k]) for k in trained)  # EMA averaged


@pytest.mark.parametrize("change, message", [
    ({"network_g": {"type": "ConStyleUNet", "backbone": {**TINY, "type": "NAFNett"}}},
     "network_g.backbone.type: 'NAFNett' is not a registered architecture (BasicSR 1.2-era fork); did you mean 'NAFNet'"),
    ({"network_g": {"type": "ConStyleUNet", "backbone": TINY, "promter": None}},
     "network_g.promter: unknown option of ConStyleUNet; did you mean 'prompter'?"),
    ({"num_gpu": 2}, "num_gpu: 2 GPU(s) asked for but CUDA is not available here"),
    ({"path": {"pretrain_network_g": "nowhere.pth"}}, "path.pretrain_network_g: checkpoint not found: 'nowhere.pth'"),
])
def test_bad_options_in_a_fork_fail_before_anything_is_created(fork, change, message):
    opt = options(fork, "bad")
    data = yaml.safe_load(opt.read_text())
    data.update(change)
    opt.write_text(yaml.safe_dump(data))
    proc = python(CLI, fork, "train", "-opt", str(opt), CUDA_VISIBLE_DEVICES="")  # a machine without CUDA
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (fork / "experiments").exists()


def test_force_yml_syntax_errors_are_one_line(fork):
    opt = options(fork, "bad")
    proc = python(CLI, fork, "train", "-opt", str(opt), "--force_yml", "train:total_iter")
    assert proc.returncode == 2 and "--force_yml: 'train:total_iter' is not key:sub=value" in proc.stderr
    proc = python(CLI, fork, "train", "-opt", "options/missing.yml")
    assert proc.returncode == 2 and "-opt: options file not found: 'options/missing.yml'" in proc.stderr


def test_constyle_evaluate_in_a_fork_without_cuda_runs_the_forks_metrics(fork, tmp_path):
    """In a fork, `constyle evaluate` measures with the fork's own calculate_psnr / calculate_ssim; on a
    machine without CUDA their hard-coded .cuda() (NAFNet's SSIM window; the miniature fork's too) stays on
    the CPU, and the numbers are BasicSR's definitions (PyPI's functions agree on the restored images)."""
    import json

    from constyle_plugin.archs import NAFNet
    from constyle_plugin.compat import ensure_basicsr_importable
    from constyle_plugin.data.imageio import read_image

    torch.manual_seed(0)
    net = wrap_unet(NAFNet(**{k: v for k, v in TINY.items() if k != "type"}))
    net.save_pretrained(tmp_path / "run")
    out = tmp_path / "eval"
    code = BOOT + "from constyle_plugin.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = python(code, fork, "evaluate", "--checkpoint", str(tmp_path / "run"), "--lq", "datasets/val/lq",
                  "--gt", "datasets/val/gt", "--name", "val", "--output", str(out), "--device", "cpu", "--save-images",
                  CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())["tasks"]["val"]["images"]
    assert len(rows) == 2

    ensure_basicsr_importable()
    from basicsr.metrics import calculate_psnr, calculate_ssim  # PyPI BasicSR's, in this process

    for row in rows:
        restored = (read_image(out / "restored" / "val" / f"{row['name']}.png") * 255).round().astype(np.uint8)
        gt = (read_image(fork / "datasets" / "val" / "gt" / f"{row['name']}.png") * 255).round().astype(np.uint8)
        restored, gt = restored[..., ::-1], gt[..., ::-1]
        assert abs(row["psnr"] - calculate_psnr(restored, gt, 0)) < 1e-6
        assert abs(row["ssim"] - calculate_ssim(restored, gt, 0)) < 1e-6


def test_force_yml_numbers_in_exponent_form_are_numbers_in_a_fork():
    """The fork path reads --force_yml values as YAML, where 1e-3 (no dot) is text under YAML 1.1: the
    command makes it the number meant; other values keep their YAML meaning."""
    from constyle_plugin.integrations.basicsr.fork import apply_overrides

    opt = {"train": {"optim_g": {}}}
    apply_overrides(opt, ["train:optim_g:lr=1e-3", "train:warmup_iter=-1", "train:optim_g:betas=[0.9, 0.99]",
                          "train:note=1e-3x", "train:eta=2.5E+1"])
    assert opt["train"]["optim_g"]["lr"] == 0.001 and isinstance(opt["train"]["optim_g"]["lr"], float)
    assert opt["train"]["warmup_iter"] == -1 and opt["train"]["optim_g"]["betas"] == [0.9, 0.99]
    assert opt["train"]["note"] == "1e-3x" and opt["train"]["eta"] == 25.0


# ------------------------------------------------------------------------------ vendored registries
class VendoredRegistry:
    """BasicSR's registry interface, as a code base that copies it under another name has it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict = {}

    def register(self, obj=None):
        if obj is None:
            return self.register
        assert obj.__name__ not in self._obj_map, f"{obj.__name__} already registered in {self._name}"
        self._obj_map[obj.__name__] = obj
        return obj

    def get(self, name):
        return self._obj_map[name]

    def __contains__(self, name) -> bool:
        return name in self._obj_map


def test_register_into_vendored_registries_builds_backbones_from_them():
    from constyle_plugin.archs import NAFNet as ReferenceNAFNet
    from constyle_plugin.integrations.basicsr import register_into

    arch, model, loss, dataset = (VendoredRegistry(n) for n in ("arch", "model", "loss", "dataset"))

    @arch.register()
    class NAFNet(ReferenceNAFNet):  # the release's own NAFNet
        pass

    report = register_into(arch=arch, model=model, loss=loss, dataset=dataset)
    assert report["ARCH"]["kept"] == ["NAFNet"]
    assert {"ConStyleUNet", "ConStyleV2", "Restormer", "ConvUNet"} <= set(report["ARCH"]["added"])
    assert set(report["LOSS"]["added"]) == {"InfoNCELoss", "ContentLoss", "StyleLoss", "DistillKLLoss"}
    assert "MixDegradationDataset" in report["DATASET"]["added"]
    net = arch.get("ConStyleUNet")(backbone={"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1, 1, 1],
                                             "dec_blk_nums": [1, 1, 1, 1]})
    assert isinstance(net, ConStyleUNet) and type(net.backbone) is NAFNet
    again = register_into(arch=arch, model=model, loss=loss, dataset=dataset)  # idempotent
    assert not any(r["added"] for r in again.values())
    assert sorted(again["ARCH"]["already"]) == sorted(report["ARCH"]["added"])
    with pytest.raises(TypeError, match="arch= must be a BasicSR-style Registry"):
        register_into(arch={"NAFNet": NAFNet})


# --------------------------------------------------------------------------------------- light import
LIGHT = textwrap.dedent("""
    import json, sys
    import constyle_plugin
    heavy = sorted(m for m in ("basicsr", "mmengine", "cv2", "torchvision", "timm", "einops", "skimage")
                   if m in sys.modules)
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
    from mmengine.registry import MODELS
    print(json.dumps({"heavy": heavy, "arch": "ConStyleUNet" in ARCH_REGISTRY,
                      "model": "ConStyleSRModel" in MODEL_REGISTRY,
                      "mmengine": MODELS.get("constyle.ConStyleRestorer") is not None}))
""")


def test_import_is_light_and_registration_happens_when_the_trainers_are_imported(tmp_path):
    import json

    proc = python(LIGHT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"heavy": [], "arch": True, "model": True, "mmengine": True}


def test_mmengine_custom_imports_registers_with_mmengine_already_imported(tmp_path):
    code = textwrap.dedent("""
        from mmengine.registry import MODELS, DATASETS
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(["constyle_plugin"])
        print(MODELS.get("constyle.ConStyleRestorer").__name__, DATASETS.get("constyle.MixDegradationDataset").__name__)
    """)
    proc = python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ConStyleRestorer", "MixDegradationDataset"]


# ---------------------------------------------------------------------------------- safe loading
def _code_running_checkpoint(path: Path, marker: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from payloads import RunsCodeOnLoad

    torch.save({"params": {"x": torch.zeros(1)}, "payload": RunsCodeOnLoad(marker)}, path)


@pytest.mark.parametrize("flavour", ["pypi", "fork"])
def test_a_code_running_checkpoint_runs_nothing_even_where_torch_defaults_to_unsafe_loading(
        fork, tmp_path, flavour):
    """``pretrain_network_g`` -> the host's ``load_network`` -> ``torch.load`` without weights_only.
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 gives torch 2.14 the unsafe default of torch < 2.6, which
    setup.cfg allows: the command must pass weights_only=True itself."""
    import os

    marker = tmp_path / "ran"
    evil = tmp_path / "net_g_evil.pth"
    _code_running_checkpoint(evil, marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if flavour == "fork":
        opt = options(fork, "evil")
        cmd, cwd = [sys.executable, "-c", CLI, "test", "-opt", str(opt)], fork
    else:
        from basicsr_runs import COMMAND, OPTIONS_DIR as OPTIONS, overrides

        cmd, cwd = COMMAND + ["test", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml",
                              *overrides("nafnet_constyle")], tmp_path
    cmd += ["--force_yml", f"path:pretrain_network_g={evil}"] if flavour == "fork" else [
        f"path:pretrain_network_g={evil}"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert not marker.exists(), "the checkpoint's code ran"
    assert proc.returncode != 0
    assert "Weights only load failed" in proc.stderr or "weights_only" in proc.stderr, proc.stderr[-2000:]


def test_a_fork_trains_on_the_plugins_all_in_one_data_from_the_sample_photos(fork):
    """MixDegradationDataset (no BasicSR >= 1.3 utilities needed) inside a fork, on the offline sample
    photos exported into the run's own folder, as options/forks/nafnet/NAFNet-AllInOne-*.yml does."""
    opt = options(fork, "all_in_one")
    data = yaml.safe_load(opt.read_text())
    data["datasets"] = {
        "train": {"name": "mix", "type": "MixDegradationDataset", "dataroot_gt": "sample_photos",
                  "photos": ["astronaut", "coffee"], "gt_size": 32, "batch_size_per_gpu": 2},
        "val": {"name": "held-out", "type": "MixDegradationDataset", "dataroot_gt": "sample_photos",
                "photos": ["camera"], "gt_size": 32, "val_crop": "center", "seed": 0},
    }
    opt.write_text(yaml.safe_dump(data))
    proc = python(CLI, fork, "train", "-opt", str(opt))
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = fork / "experiments" / "all_in_one"
    assert {"astronaut", "coffee", "camera"} <= {p.stem for p in (exp / "sample_photos").iterdir()}
    assert (exp / "train.log").read_text().count("Validation psnr") == 3
    assert (exp / "models" / "net_g_latest.pth").is_file()
