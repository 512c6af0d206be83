"""End-to-end ``basicsr train`` / ``basicsr test`` runs of the shipped options files (tiny overrides, CPU),
resume equivalence, and option errors that name their key before anything is built.

Each run is a fresh interpreter running the console script's function, in a temporary folder.
"""
from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import List

import pytest
import torch
import yaml

from constyle_plugin import ConStyleV2
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.data.samples import export_sample_photos

ensure_basicsr_importable()
from basicsr.archs import build_network  # noqa: E402

from constyle_plugin.integrations.basicsr.cli import main  # noqa: E402

from basicsr_runs import STAGE2, apply, losses_by_iter, overrides, run, train_log  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
OPTIONS = ROOT / "options"

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample_photos")
    export_sample_photos(folder)
    return folder


def shared_photos(photos: Path) -> List[str]:
    return [f"datasets:train:sample_dir={photos}", f"datasets:val:sample_dir={photos}"]


@pytest.fixture
def prompter_file(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    p = ConStyleV2()
    with torch.no_grad():
        for bn in (p.mlp1[1], p.mlp2[1]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return p.save_pretrained(tmp_path / "prompter.safetensors")


# ------------------------------------------------------------------------------------------------ the CLI
def test_console_script_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    assert "basicsr = constyle_plugin.integrations.basicsr.cli:main" in scripts


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "basicsr {train,test}" in capsys.readouterr().out
    assert main(["fit", "-opt", "x.yml"]) == 2
    assert "unknown command 'fit'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ stage 2
def test_readme_style_run_trains_validates_saves_and_tests(tmp_path, prompter_file):
    """The main job in miniature: default data (sample photos exported into the experiment folder), a
    prompter file, PSNR / SSIM, checkpoint, side-by-side images; then `basicsr test` on the result."""
    opts = overrides("nafnet_constyle") + [f"network_g:prompter:pretrained={prompter_file}"]
    proc = run(tmp_path, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml", *opts)
    said = [line for line in proc.stderr.splitlines() if "constyle-plugin registered:" in line]
    assert len(said) == 1 and "NAFNet" in said[0] and "kept from the host: none" in said[0], proc.stderr[-2000:]
    exp = tmp_path / "experiments" / "NAFNet_ConStyle_v2"
    log = train_log(exp)
    assert re.search(r"# psnr: \d+\.\d+", log) and re.search(r"# ssim: 0\.\d+", log)
    assert re.search(r"Input \(lq vs gt\) MixDegradation-heldout, for comparison\n\t # psnr: \d+\.\d+", log)
    assert len(list((exp / "sample_photos").glob("*.png"))) >= 18  # exported at first use
    for photo in ("camera", "cell", "gravel", "motorcycle"):  # the held-out photos, nothing else
        assert (exp / "visualization" / photo / f"{photo}_2_lq_out_gt.png").is_file()
    assert sorted(p.name for p in (exp / "visualization").iterdir()) == ["camera", "cell", "gravel", "motorcycle"]

    ckpt = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    for key in ("params", "params_ema"):  # the prompter, BatchNorm buffers included, is bit-identical
        for name, value in reference.items():
            assert torch.equal(ckpt[key][f"prompter.{name}"], value), (key, name)
    first = torch.load(exp / "models" / "net_g_2.pth", weights_only=True)["params"]
    initial = build_network(apply(yaml.safe_load((OPTIONS / "nafnet_constyle.yml").read_text()), opts)["network_g"])
    net = build_network(apply(yaml.safe_load((OPTIONS / "nafnet_constyle.yml").read_text()), opts)["network_g"])
    net.load_state_dict(ckpt["params"], strict=True)
    trained = [k for k, v in first.items() if k.startswith("backbone.") and not torch.equal(v, initial.state_dict()[k])]
    assert trained, "training changed no backbone weight"

    test_opts = [o for o in opts if o.startswith("network_g") or o.startswith("datasets:val")]
    run(tmp_path, "test", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml", *test_opts,
        f"path:pretrain_network_g={exp / 'models' / 'net_g_latest.pth'}")
    results = tmp_path / "results" / "NAFNet_ConStyle_v2"
    test_log = next(results.glob("test_*.log")).read_text()
    psnr_train = re.findall(r"# psnr: (\d+\.\d+)", log)[-1]
    assert f"# psnr: {psnr_train}" in test_log  # the same EMA network on the same held-out crops
    assert (results / "visualization" / "MixDegradation-heldout" / "camera_NAFNet_ConStyle_v2_lq_out_gt.png").is_file()


@pytest.mark.parametrize("name", [n for n in STAGE2 if n != "nafnet_constyle"])
def test_stage2_options_files_train(tmp_path, photos, name):
    opts = overrides(name) + shared_photos(photos)
    run(tmp_path, "train", "-opt", str(OPTIONS / f"{name}.yml"), "--force_yml", *opts)
    opt = apply(yaml.safe_load((OPTIONS / f"{name}.yml").read_text()), opts)
    exp = tmp_path / "experiments" / opt["name"]
    log = train_log(exp)
    assert re.search(r"# psnr: \d+\.\d+", log) and re.search(r"# ssim: 0\.\d+", log)
    assert set(losses_by_iter(log)) == {1, 2}
    assert list((exp / "visualization").glob("*/*_lq_out_gt.png"))
    ckpt = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)
    net = build_network(opt["network_g"])
    net.load_state_dict(ckpt["params_ema"], strict=True)
    assert (type(net).__name__ == "ConStyleUNet") == name.endswith("_constyle")


# ------------------------------------------------------------------------------------------------ stage 1
def test_pretrain_options_file_trains_and_its_checkpoint_is_a_prompter(tmp_path):
    opts = ["train:total_iter=4", "val:val_freq=4", "logger:print_freq=1", "logger:save_checkpoint_freq=4",
            "network_g:queue_size=16", "datasets:train:batch_size_per_gpu=4", "datasets:train:num_worker_per_gpu=0",
            "datasets:train:crop_size=48", "datasets:train:resize=56", "datasets:train:crops_per_photo=1",
            "datasets:val:crop_size=48", "datasets:val:resize=56", "datasets:val:crops_per_photo=1",
            "train:class_iter=3"]
    run(tmp_path, "train", "-opt", str(OPTIONS / "constyle_v2_pretrain.yml"), "--force_yml", *opts)
    exp = tmp_path / "experiments" / "ConStyle_v2_pretrain"
    log = train_log(exp)
    losses = losses_by_iter(log)
    assert set(losses) == {1, 2, 3, 4}
    assert "l_class" in losses[2] and "l_class" not in losses[3]  # class_iter 3
    assert all("l_kl" in losses[i] and "l_infonce" in losses[i] and "l_style" in losses[i] for i in losses)
    assert re.search(r"# top1: \d+\.\d+", log) and re.search(r"# top5: \d+\.\d+", log)
    assert re.search(r"# latent_spread: \d+\.\d+", log)
    assert sorted(p.name for p in (exp / "sample_classes").iterdir())[:2] == ["astronaut", "brick"]
    prompter = ConStyleV2.from_pretrained(exp / "models" / "net_g_latest.pth")  # params_ema -> encoder_q
    exported = ConStyleV2.from_pretrained(exp / "models" / "prompter_latest.safetensors")
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in prompter.state_dict().items())
    assert not torch.equal(prompter.mlp2[1].running_mean, torch.zeros(128))  # EMA copy got the BN statistics


# ------------------------------------------------------------------------------------------------ resume
def test_resume_from_an_interrupted_run_reproduces_its_losses_and_weights(tmp_path, photos):
    """An uninterrupted 8-iteration run versus a run resumed (--auto_resume, on the CPU) from the state the
    first one saved at iteration 4, in the middle of an epoch of 3 iterations; validation at 3 and 6."""
    opts = overrides("nafnet_constyle") + shared_photos(photos) + [
        "train:total_iter=8", "val:val_freq=3", "logger:save_checkpoint_freq=4", "datasets:train:repeat=1",
        "datasets:train:batch_size_per_gpu=4", "val:save_img=false"]
    name = "NAFNet_ConStyle_v2"
    full, resumed, no_rng = tmp_path / "full", tmp_path / "resumed", tmp_path / "no_rng"
    full.mkdir()
    run(full, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--force_yml", *opts, cpu=True)
    reference = losses_by_iter(train_log(full / "experiments" / name))
    assert set(reference) == set(range(1, 9))

    for folder, with_rng in ((resumed, True), (no_rng, False)):
        exp = folder / "experiments" / name
        (exp / "models").mkdir(parents=True)
        (exp / "training_states").mkdir()
        src = full / "experiments" / name
        (exp / "models" / "net_g_4.pth").write_bytes((src / "models" / "net_g_4.pth").read_bytes())
        (exp / "training_states" / "4.state").write_bytes((src / "training_states" / "4.state").read_bytes())
        if with_rng:
            rng = src / "training_states" / "4.rank0.rng"
            (exp / "training_states" / rng.name).write_bytes(rng.read_bytes())
        run(folder, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml"), "--auto_resume", "--force_yml", *opts,
            cpu=True)

    log = train_log(resumed / "experiments" / name)
    assert "Resuming training from epoch: 1, iter: 4." in log
    again = losses_by_iter(log)
    assert set(again) == {5, 6, 7, 8}
    assert all(again[i] == reference[i] for i in again), (again, reference)
    a = torch.load(full / "experiments" / name / "models" / "net_g_latest.pth", weights_only=True)
    b = torch.load(resumed / "experiments" / name / "models" / "net_g_latest.pth", weights_only=True)
    for key in ("params", "params_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key

    # Without the saved generator states the data order still resumes, but the random crops and
    # degradations differ: the comparison above can fail.
    blind = losses_by_iter(train_log(no_rng / "experiments" / name))
    assert set(blind) == {5, 6, 7, 8} and any(blind[i] != reference[i] for i in blind)


# ------------------------------------------------------------------------------------------------ bad options
def _write(tmp_path: Path, source: str, edit) -> Path:
    opt = yaml.safe_load((OPTIONS / source).read_text())
    edit(opt)
    path = tmp_path / f"edited_{source}"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _bad_stage(opt):
    opt["network_g"]["stages"] = {"encoder": ["downs.0", "downs.1", "no_such_module"], "bottleneck": "middle_blks"}


def _bad_inject(opt):
    opt["network_g"]["inject"] = ["encoder", "middle"]


@pytest.mark.parametrize("source, force, edit, key", [
    ("nafnet_constyle.yml", ["network_g:backbone:type=NoSuchNet"], None, "network_g.backbone.type"),
    ("nafnet_origin.yml", ["network_g:type=NoSuchNet"], None, "network_g.type"),
    ("nafnet_constyle.yml", ["datasets:train:dataroot_gt=no/such/folder"], None, "datasets.train.dataroot_gt"),
    ("nafnet_constyle.yml", ["network_g:prompter:pretrained=no/such/prompter.pth"], None,
     "network_g.prompter.pretrained"),
    ("nafnet_constyle.yml", [], _bad_stage, "network_g.stages.encoder[2]"),
    ("nafnet_constyle.yml", [], _bad_inject, "network_g.inject"),
    ("nafnet_constyle.yml", ["network_g:backbone:no_such_arg=1"], None, "network_g.backbone"),
    ("nafnet_constyle.yml", ["path:pretrain_network_g=no/such/net.pth"], None, "path.pretrain_network_g"),
    ("nafnet_constyle.yml", ["train:optim_g:type=Adamw"], None, "train.optim_g.type"),
    ("constyle_v2_pretrain.yml", ["network_g:queue_size=100"], None, "network_g.queue_size"),
])
def test_bad_option_fails_before_training_naming_the_key(tmp_path, monkeypatch, capsys, source, force, edit, key):
    monkeypatch.chdir(tmp_path)
    opt_file = _write(tmp_path, source, edit) if edit else OPTIONS / source
    args = ["train", "-opt", str(opt_file)] + (["--force_yml", *force] if force else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error in the options: {key}: " in err, err
    assert not (tmp_path / "experiments").exists()  # nothing was created


def test_test_command_needs_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["test", "-opt", str(OPTIONS / "nafnet_constyle.yml")]) == 2
    assert "path.pretrain_network_g: set it to the trained checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
