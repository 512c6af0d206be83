"""Mixed precision in stage 2 (``train: amp: bf16 | fp16`` of ``ConStyleSRModel``): bf16 training of a
wrapped NAFNet through the real ``basicsr train`` command on the CPU trains (finite losses, weights
that move, the network's layers in bfloat16 and the prompter's in float32, float32 validation, EMA)
and resumes exactly; the fp16 loss scale travels in the training state; bad values and fp16 on the
CPU are refused in one line before anything is created; the prompt under autocast is the float32
prompt; the MMEngine twin config names ``AmpOptimWrapper``.

Runs are fresh interpreters running the console script's function in a temporary folder, with a
tiny NAFNet, 32 px patches, a few iterations and one thread.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import NAME, OPTIONS, ROOT, basicsr, logs, losses_by_iter, ok, refused_here, tiny

ensure_basicsr_importable()

CUDA = torch.cuda.is_available()


def amp_run(photos: Path, prompter_file: Path, amp: str = "bf16", total_iter: int = 4) -> list:
    # validation at every checkpoint: it must run (in float32) between mixed-precision steps
    return tiny(photos, prompter_file, total_iter=total_iter, ckpt_freq=2) + [f"train:amp={amp}", "val:val_freq=2"]


def weights(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "experiments" / NAME / "models" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, photos, prompter_file) -> Path:
    """A finished 4-iteration bf16 run on the CPU, checkpoints (and validation) at 2 and 4."""
    run_dir = tmp_path_factory.mktemp("bf16")
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *amp_run(photos, prompter_file),
               "num_gpu=0"))
    return run_dir


def test_bf16_trains_a_wrapped_nafnet_on_the_cpu(bf16_run, prompter_file):
    (log,) = logs(bf16_run)
    assert "Mixed precision (train.amp: bf16): forward and loss under torch.autocast(cpu, torch.bfloat16)" in log
    # what autocast really ran in the first step: every layer of the network in bfloat16, the prompter's in float32
    probe = re.search(r"Mixed precision, iteration 1: network layer outputs (\d+) bfloat16; "
                      r"prompter layer outputs (\d+) float32; loss (\w+)\.", log)
    assert probe, log[-3000:]
    assert int(probe.group(1)) > 0 and int(probe.group(2)) > 0
    losses = losses_by_iter(log)
    assert sorted(losses) == [1, 2, 3, 4]
    values = [float(re.search(r"l_pix: (\S+)", line).group(1)) for line in losses.values()]
    assert all(math.isfinite(v) and v > 0 for v in values), losses
    assert len(re.findall(r"# psnr: [\d.]+\tBest", log)) >= 2  # validation ran at 2 and 4

    at2, at4 = weights(bf16_run, "net_g_2.pth"), weights(bf16_run, "net_g_4.pth")
    injections = [k for k in at4["params"] if k.startswith("injections.")]
    assert injections
    assert any(not torch.equal(at2["params"][k], at4["params"][k]) for k in injections)  # trained on
    assert any(at4["params"][k].abs().sum() > 0 for k in injections)  # left their zero initialisation
    backbone = [k for k in at4["params"] if k.startswith("backbone.")]
    assert any(not torch.equal(at2["params"][k], at4["params"][k]) for k in backbone)
    assert all(v.dtype == torch.float32 for v in at4["params"].values() if v.is_floating_point())  # master weights
    # EMA: moved with training, its frozen prompter the file's, exactly
    assert any(not torch.equal(at2["params_ema"][k], at4["params_ema"][k]) for k in injections)
    from constyle_plugin import ConStyleV2

    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    for key in ("params", "params_ema"):
        for name, value in reference.items():
            assert torch.equal(at4[key][f"prompter.{name}"], value), (key, name)


def test_bf16_resumes_exactly(bf16_run, tmp_path, photos, prompter_file):
    """Interrupted after the checkpoint at iteration 2 (the later files removed, as a kill leaves them),
    ``--auto_resume`` trains 3 and 4 to the uninterrupted run's weights, bit for bit: the same data
    and generator states (the command's exact resumption), the same single-threaded CPU kernels, and
    nothing in bf16 mixed precision that depends on the history (no loss scale), so no tolerance."""
    run_dir = tmp_path / "run"
    shutil.copytree(bf16_run, run_dir)
    experiment = run_dir / "experiments" / NAME
    for name in ("models/net_g_4.pth", "models/net_g_latest.pth", "training_states/4.state",
                 "training_states/4.rank0.rng"):
        (experiment / name).unlink()
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml",
               *amp_run(photos, prompter_file), "num_gpu=0"))
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1
    assert "Resuming training from epoch: 0, iter: 2." in resumed[0]
    assert "Mixed precision, iteration 3: network layer outputs" in resumed[0]
    reference = losses_by_iter(next(log for log in logs(bf16_run)))
    again = losses_by_iter(resumed[0])
    assert sorted(again) == [3, 4]
    assert all(again[i] == reference[i] for i in again), (again, reference)
    for name in ("net_g_4.pth", "net_g_latest.pth"):
        a, b = weights(run_dir, name), weights(bf16_run, name)
        for key in ("params", "params_ema"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)


# ------------------------------------------------------------------------------------------------
# Refusals: one line, before anything is created
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, fragments", [
    ("bf17", ("'bf17'", "bf16, fp16 or false", "did you mean 'bf16'")),
    ("true", ("True", "bf16, fp16 or false")),
    ("float16", ("'float16'", "bf16, fp16 or false")),
])
def test_an_unknown_amp_value_is_refused_in_one_line(tmp_path, photos, prompter_file, capsys, monkeypatch, value,
                                                     fragments):
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), f"train:amp={value}", fragments=("train.amp", *fragments))
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path, photos, prompter_file, capsys, monkeypatch):
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), "train:amp=fp16", "num_gpu=0",
                 fragments=("train.amp", "fp16", "CPU", "bf16"))
    assert not (tmp_path / "experiments").exists()


def test_amp_is_a_declared_option_of_stage_2_only():
    from constyle_plugin.integrations.basicsr.models import ConStyleSRModel, ConStyleV2PretrainModel

    assert "amp" in ConStyleSRModel.TRAIN_OPTIONS
    assert "amp" not in ConStyleV2PretrainModel.TRAIN_OPTIONS  # stage 1 refuses it as an unknown key


def test_amp_setting_values():
    from constyle_plugin.errors import OptionError
    from constyle_plugin.integrations.basicsr.models import amp_setting

    for value in (None, False):
        assert amp_setting({"num_gpu": 0, "train": {"amp": value}}) is None
    assert amp_setting({"num_gpu": 0, "train": {}}) is None
    assert amp_setting({"num_gpu": 0, "train": {"amp": "bf16"}}) == "bf16"
    with pytest.raises(OptionError) as info:
        amp_setting({"num_gpu": 0, "train": {"amp": "fp16"}})
    assert info.value.key == "train.amp" and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# The prompt under autocast, and the fp16 loss scale in the training state
# ------------------------------------------------------------------------------------------------
def _model(tmp_path: Path, prompter_file: Path, amp="bf16"):
    from basicsr.models import build_model

    opt = {
        "name": "unit", "model_type": "ConStyleSRModel", "scale": 1, "num_gpu": 0, "dist": False, "rank": 0,
        "world_size": 1, "is_train": True,
        "network_g": {"type": "ConStyleUNet", "backbone": {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1, 1, 1],
                                                          "dec_blk_nums": [1, 1, 1, 1]},
                      "prompter": {"pretrained": str(prompter_file)}},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "models": str(tmp_path / "models"),
                 "training_states": str(tmp_path / "states"), "visualization": str(tmp_path / "vis")},
        "train": {"ema_decay": 0.9, "amp": amp,
                  "optim_g": {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-4, "betas": [0.9, 0.999]},
                  "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [10], "restart_weights": [1],
                                "eta_min": 1e-6},
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}},
        "val": {"save_img": False},
    }
    (tmp_path / "states").mkdir(exist_ok=True)
    return build_model(opt)


def test_the_prompt_under_autocast_is_the_float32_prompt(tmp_path, prompter_file):
    """The wrapped net computes the prompt outside autocast: in a bf16 training forward it equals the
    float32 prompt exactly, where the prompter left to autocast gives another one."""
    from skimage import data

    model = _model(tmp_path, prompter_file)
    net = model.get_bare_model(model.net_g)
    seen = []
    handle = net.prompter.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.from_numpy(data.astronaut()[:96, :96].copy()).permute(2, 0, 1)[None].float() / 255
    try:
        with torch.no_grad():
            net(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x)
                left = net.prompter(x)  # called directly inside the region: autocast applies
    finally:
        handle.remove()
    plain, kept = seen[0], seen[1]
    assert kept.latent.dtype == torch.float32 and torch.equal(kept.latent, plain.latent)
    assert all(torch.equal(a, b) for a, b in zip(kept.features, plain.features))
    assert left.latent.dtype == torch.bfloat16 and not torch.equal(left.latent.float(), plain.latent)


@pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler('cpu'): torch >= 2.3")
def test_the_fp16_loss_scale_travels_in_the_training_state(tmp_path, prompter_file):
    """``save_training_state`` writes the GradScaler's state as ``amp_scaler`` and ``resume_training``
    restores it (the scaler of an fp16 run; fp16 itself needs a GPU, the state handling does not)."""
    from constyle_plugin.integrations.basicsr.cli import load_state_file

    saving = _model(tmp_path, prompter_file)
    saving.scaler = torch.amp.GradScaler("cpu")
    state = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
             "_growth_tracker": 7}
    saving.scaler.load_state_dict(state)
    saving.save_training_state(0, 3)
    saved = load_state_file(str(tmp_path / "states" / "3.state"))  # the command's safe loading reads it
    assert saved["amp_scaler"] == state
    resuming = _model(tmp_path, prompter_file)
    resuming.scaler = torch.amp.GradScaler("cpu")
    resuming.resume_training(saved)
    assert resuming.scaler.state_dict() == state
    plain = _model(tmp_path, prompter_file)  # bf16: no scaler, the saved one is ignored
    plain.resume_training(saved)
    assert plain.scaler is None
    plain.save_training_state(0, 5)
    assert "amp_scaler" not in load_state_file(str(tmp_path / "states" / "5.state"))


@pytest.mark.skipif(not CUDA, reason="fp16 needs a CUDA device")
def test_fp16_on_a_gpu_trains_and_resumes_with_its_loss_scale(tmp_path, photos, prompter_file):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    opts = amp_run(photos, prompter_file, amp="fp16", total_iter=2) + ["num_gpu=1"]
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--force_yml", *opts))
    from constyle_plugin.integrations.basicsr.cli import load_state_file

    saved = load_state_file(str(run_dir / "experiments" / NAME / "training_states" / "2.state"))
    assert saved["amp_scaler"]["scale"] > 0
    ok(basicsr(run_dir, "train", "-opt", str(OPTIONS), "--auto_resume", "--force_yml", *opts, "train:total_iter=4"))
    resumed = [log for log in logs(run_dir) if "Resuming training from" in log]
    assert len(resumed) == 1
    assert f"Resume: fp16 loss scale {saved['amp_scaler']['scale']:g} (from the state)." in resumed[0]
    assert "network layer outputs" in resumed[0] and "float16" in resumed[0]
    assert sorted(losses_by_iter(resumed[0])) == [3, 4]
