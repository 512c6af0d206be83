"""Reliability through the trainers: checkpoints survive a kill mid-write, ``--auto_resume`` after a
SIGKILL, distributed runs on the CPU (gloo, 2 processes), and option checks that name the broken key.

Every trainer run is a fresh interpreter (one OpenMP thread: the machine is small and shared).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest
import torch

from payloads import RunsCodeOnLoad
from processes import kill_when, visible

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ROOT / "options"


def _env(**extra: str):
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


# What the CPU launches test, on any machine: with one GPU visible, two ranks would both take it.
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}


# ------------------------------------------------------------------------------------------------
# 1. Atomic checkpoints: kill a save mid-write
# ------------------------------------------------------------------------------------------------
# The child saves once, keeps a copy of that file, then starts a second save whose write stops half
# way (the first half flushed to disk) until the parent kills it. It runs BasicSR's own
# BaseModel.save_network / save_training_state, or MMEngine's save_checkpoint through
# ConStyleRunner.save_checkpoint, with ("atomic") or without ("plain") the plugin's atomic writes.
BASICSR_CHILD = textwrap.dedent(r'''
    import contextlib, io, os, shutil, sys, time, torch
    from constyle_plugin.compat import ensure_basicsr_importable
    ensure_basicsr_importable()
    from basicsr.models.base_model import BaseModel
    from constyle_plugin.integrations.basicsr.cli import atomic_torch_save

    folder, mode, target = sys.argv[1:4]
    model = BaseModel.__new__(BaseModel)
    model.opt = {"path": {"models": folder, "training_states": folder}, "dist": False, "rank": 0}
    net = torch.nn.Linear(64, 64)
    optim = torch.optim.Adam(net.parameters())
    net(torch.ones(2, 64)).sum().backward()
    optim.step()
    model.optimizers, model.schedulers = [optim], []
    ctx = atomic_torch_save if mode == "atomic" else contextlib.nullcontext

    def save(it):
        with ctx():
            if target == "network":
                model.save_network(net, "net_g", -1)
            else:
                model.save_training_state(0, it)

    save(1)
    first = os.path.join(folder, "net_g_latest.pth" if target == "network" else "1.state")
    shutil.copy(first, os.path.join(os.path.dirname(folder), "first.bak"))
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            print("WRITING", flush=True)
            time.sleep(300)
            fh.write(data[len(data) // 2:])

    torch.save = slow_save
    with torch.no_grad():
        net.weight.add_(1.0)
    optim.step()
    save(2)
''')

MMENGINE_CHILD = textwrap.dedent(r'''
    import builtins, os, shutil, sys, time, torch
    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import save_checkpoint
    from constyle_plugin.integrations.mmengine.runner import ConStyleRunner

    folder, mode = sys.argv[1:3]

    def runner_save(self, out_dir, filename, **kwargs):  # Runner.save_checkpoint's writing part
        save_checkpoint({"state_dict": self.state, "meta": {"iter": self.step}}, os.path.join(out_dir, filename))

    Runner.save_checkpoint = runner_save
    runner = ConStyleRunner.__new__(ConStyleRunner)
    runner.state, runner.step = {"w": torch.randn(256, 256)}, 1
    save = runner.save_checkpoint if mode == "atomic" else lambda *a: Runner.save_checkpoint(runner, *a)
    save(folder, "latest.pth")
    shutil.copy(os.path.join(folder, "latest.pth"), os.path.join(os.path.dirname(folder), "first.bak"))
    real_open = builtins.open

    class SlowFile:
        def __init__(self, fh):
            self.fh = fh
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            print("WRITING", flush=True)
            time.sleep(300)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.fh.close()
        def __getattr__(self, name):
            return getattr(self.fh, name)

    def slow_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return SlowFile(fh) if str(file).startswith(folder) and "w" in mode else fh

    builtins.open = slow_open
    runner.state, runner.step = {"w": torch.randn(256, 256)}, 2
    save(folder, "latest.pth")
''')


def _run_killed_save(tmp_path: Path, child: str, *args: str) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    script = tmp_path / "child.py"
    script.write_text(child)
    kill_when([sys.executable, str(script), str(folder), *args], tmp_path, lambda out: "WRITING" in out)
    return folder


def _load(path: Path):
    from constyle_plugin.integrations.mmengine.runner import mmengine_checkpoint_globals

    with mmengine_checkpoint_globals():
        return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("target", ["network", "state"])
def test_basicsr_save_killed_mid_write_keeps_the_previous_checkpoint(tmp_path, target):
    folder = _run_killed_save(tmp_path, BASICSR_CHILD, "atomic", target)
    first = tmp_path / "first.bak"
    if target == "network":  # net_g_latest.pth is overwritten in place by each save
        assert visible(folder) == ["net_g_latest.pth"]
        assert (folder / "net_g_latest.pth").read_bytes() == first.read_bytes()
        assert _load(folder / "net_g_latest.pth")["params"]["weight"].shape == (64, 64)
    else:  # a new <iter>.state: no partial 2.state that --auto_resume would pick as the latest
        assert visible(folder) == ["1.state"]
        assert (folder / "1.state").read_bytes() == first.read_bytes()
        assert _load(folder / "1.state")["iter"] == 1
    assert all(p.name.endswith(".tmp") for p in folder.iterdir() if p.name.startswith("."))


def test_basicsr_plain_save_killed_mid_write_corrupts_the_file(tmp_path):
    """The hazard the atomic writes remove: BasicSR's own torch.save to the final path."""
    folder = _run_killed_save(tmp_path, BASICSR_CHILD, "plain", "network")
    assert (folder / "net_g_latest.pth").read_bytes() != (tmp_path / "first.bak").read_bytes()
    with pytest.raises(Exception):
        _load(folder / "net_g_latest.pth")


@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_mmengine_save_killed_mid_write(tmp_path, mode):
    folder = _run_killed_save(tmp_path, MMENGINE_CHILD, mode)
    assert visible(folder) == ["latest.pth"]
    if mode == "atomic":  # ConStyleRunner.save_checkpoint
        assert (folder / "latest.pth").read_bytes() == (tmp_path / "first.bak").read_bytes()
        assert _load(folder / "latest.pth")["meta"]["iter"] == 1
    else:  # MMEngine's LocalBackend.put writes in place
        with pytest.raises(Exception):
            _load(folder / "latest.pth")


# ------------------------------------------------------------------------------------------------
# BasicSR runs (tiny NAFNet + ConStyle v2 on the sample photos)
# ------------------------------------------------------------------------------------------------
BASICSR_MAIN = "import sys; from constyle_plugin.integrations.basicsr.cli import main; sys.exit(main())"
NAME = "NAFNet_ConStyle_v2"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from constyle_plugin.samples import export_sample_photos

    folder = tmp_path_factory.mktemp("sample_photos")
    export_sample_photos(folder)
    return folder


@pytest.fixture(scope="module")
def prompter_file(tmp_path_factory) -> Path:
    from constyle_plugin import ConStyleV2

    torch.manual_seed(5)
    return ConStyleV2().freeze().save_pretrained(tmp_path_factory.mktemp("prompter") / "prompter.safetensors")


def _tiny(photos: Path, prompter_file: Path, total_iter: int, ckpt_freq: int) -> List[str]:
    return [f"train:total_iter={total_iter}", f"val:val_freq={10 * total_iter}", "logger:print_freq=1",
            f"logger:save_checkpoint_freq={ckpt_freq}", "datasets:train:batch_size_per_gpu=2",
            "datasets:train:gt_size=32", "datasets:train:num_worker_per_gpu=0", "datasets:val:gt_size=32",
            f"datasets:train:sample_dir={photos}", f"datasets:val:sample_dir={photos}",
            "network_g:backbone:width=8", "network_g:backbone:enc_blk_nums=[1,1,1,1]",
            f"network_g:prompter:pretrained={prompter_file}"]


def _losses(log: str):
    """``{iter: 'l_pix: ...'}`` from BasicSR's log lines."""
    return {int(m.group(1).replace(",", "")): m.group(2).strip()
            for m in re.finditer(r"iter:\s*([\d,]+), lr:.*?\] (l_.*)$", log, flags=re.M)}


def test_auto_resume_after_sigkill_resumes_from_the_last_complete_state(tmp_path, photos, prompter_file):
    opts = _tiny(photos, prompter_file, total_iter=10, ckpt_freq=4)
    cmd = [sys.executable, "-c", BASICSR_MAIN, "train", "-opt", str(OPTIONS / "nafnet_constyle.yml")]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    states = run_dir / "experiments" / NAME / "training_states"
    # killed once iteration 7 is logged: the state of iteration 4 is complete, 5..7 were trained after it
    killed = kill_when(cmd + ["--force_yml", *opts], run_dir, lambda out: bool(re.search(r"iter:\s+7, lr", out)))
    saved = sorted(int(p.name.split(".")[0]) for p in states.glob("*.state"))
    assert saved == [4], saved
    assert not (run_dir / "experiments" / NAME / "models" / "net_g_latest.pth").exists()  # it did not finish

    proc = subprocess.run(cmd + ["--auto_resume", "--force_yml", *opts], cwd=run_dir, capture_output=True,
                          text=True, env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = sorted((run_dir / "experiments").glob(f"{NAME}*/train_*.log"))
    resumed = [p.read_text() for p in log if "Resuming training from" in p.read_text()]
    assert len(resumed) == 1
    assert "Resuming training from epoch: 0, iter: 4." in resumed[0]
    again = _losses(resumed[0])
    assert set(again) == set(range(5, 11))
    before = _losses(killed)
    both = sorted(set(before) & set(again))
    # iterations trained by both runs: 5 (weights and data of the state) and 6, 7 (also the optimiser's state)
    assert both == [5, 6, 7], both
    for i in both:
        assert before[i] == again[i], (i, before[i], again[i])
    # the log has 4 digits; the weights are exact: the resumed run ends where an uninterrupted one does
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref = subprocess.run(cmd + ["--force_yml", *opts], cwd=ref_dir, capture_output=True, text=True, env=_env(),
                         timeout=400)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = _losses(next((ref_dir / "experiments" / NAME).glob("train_*.log")).read_text())
    assert all(again[i] == reference[i] for i in again), (again, reference)
    for name in ("net_g_8.pth", "net_g_latest.pth"):
        a = torch.load(run_dir / "experiments" / NAME / "models" / name, weights_only=True)
        b = torch.load(ref_dir / "experiments" / NAME / "models" / name, weights_only=True)
        for key in ("params", "params_ema"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (name, key)


# ------------------------------------------------------------------------------------------------
# 3. Distributed through the trainers: 2 processes, gloo, on the CPU
# ------------------------------------------------------------------------------------------------
def _torchrun(*args: str) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def test_basicsr_launcher_pytorch_on_cpu_two_processes(tmp_path, photos, prompter_file):
    from constyle_plugin import ConStyleV2

    opts = _tiny(photos, prompter_file, total_iter=2, ckpt_freq=2)
    proc = subprocess.run(_torchrun("-m", "constyle_plugin.integrations.basicsr.cli", "train", "-opt",
                                    str(OPTIONS / "nafnet_constyle.yml"), "--launcher", "pytorch",
                                    "--force_yml", *opts),
                          cwd=tmp_path, capture_output=True, text=True, env=_env(**NO_CUDA), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # both ranks exited 0
    assert "unused parameters" not in proc.stderr
    exp = tmp_path / "experiments" / NAME
    log = next(exp.glob("train_*.log")).read_text()
    assert re.search(r"^\s*dist: True$", log, re.M) and re.search(r"^\s*world_size: 2$", log, re.M)
    losses = _losses(log)
    assert set(losses) == {1, 2}
    assert all(float(v) == float(v) and abs(float(v)) < 1e6
               for line in losses.values() for v in re.findall(r"l_\w+: ([-\d.e+]+)", line))
    # each rank saved its generator state; the networks and the training state were written once,
    # by rank 0 (BasicSR's @master_only), and load
    assert visible(exp / "training_states") == ["2.rank0.rng", "2.rank1.rng", "2.state"]
    assert visible(exp / "models") == ["net_g_2.pth", "net_g_latest.pth"]
    ckpt = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    for key in ("params", "params_ema"):  # the prompter stayed frozen (BatchNorm buffers included)
        assert all(torch.equal(ckpt[key][f"prompter.{n}"], v) for n, v in reference.items()), key
    assert not any(k.startswith("module.") for k in ckpt["params"])


def test_mmengine_launcher_pytorch_on_cpu_two_processes(tmp_path, prompter_file):
    import uuid

    from constyle_plugin import ConStyleV2

    work = tmp_path / "work"
    opts = {
        "experiment_name": f"t{uuid.uuid4().hex[:12]}",
        "train_cfg.max_iters": 2, "train_cfg.val_interval": 100, "default_hooks.checkpoint.interval": 2,
        "default_hooks.logger.interval": 1, "model.backbone.width": 8, "model.backbone.enc_blk_nums": [1, 1, 1],
        "model.backbone.dec_blk_nums": [1, 1, 1], "model.probe_size": 64, "model.prompter.pretrained": prompter_file,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "train_dataloader.dataset.gt_size": 32,
    }
    cli_opts = [f"{k}={v}".replace(" ", "") for k, v in opts.items()]
    proc = subprocess.run(_torchrun("-m", "constyle_plugin.cli", "train", str(ROOT / "options" / "mmengine" /
                                    "nafnet_constyle.py"), "--launcher", "pytorch", "--work-dir", str(work),
                                    "--cfg-options", *cli_opts),
                          cwd=tmp_path, capture_output=True, text=True, env=_env(**NO_CUDA), timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "unused parameters" not in out
    logs = list(work.glob("*/*.log"))
    assert logs, out[-2000:]
    log = logs[0].read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log, log[:3000]  # world size 2
    losses = [float(v) for v in re.findall(r"Iter\(train\) \[\s*\d+/2\].*?\bloss: ([-\d.e+]+)", log)]
    assert len(losses) == 2 and all(abs(v) < 1e6 for v in losses), log[-2000:]
    assert visible(work).count("iter_2.pth") == 1
    from constyle_plugin.integrations.mmengine.runner import mmengine_checkpoint_globals

    with mmengine_checkpoint_globals():
        ckpt = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)
    reference = ConStyleV2.from_pretrained(prompter_file).state_dict()
    state = ckpt["state_dict"]
    names = {n: [k for k in state if k.endswith("prompter." + n)] for n in reference}
    assert all(names.values()), [n for n, v in names.items() if not v][:5]
    assert all(torch.equal(state[k], reference[n]) for n, ks in names.items() for k in ks)


# ------------------------------------------------------------------------------------------------
# 4. Option checks (hypothesis): one broken key, and the error names it
# ------------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TINY = {"nafnet": {"width": 8, "enc_blk_nums": [1, 1, 1, 1]},
        "restormer": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]},
        "convunet": {"width": 8, "blocks_per_level": 1}}
READY_STAGES = {"nafnet": (["downs.0", "downs.1", "downs.2"], "middle_blks"),
                "restormer": (["down1_2", "down2_3", "down3_4"], "latent"),
                "convunet": (["downs.0", "downs.1", "downs.2"], "bottleneck")}
BREAKS = ("model_type", "backbone_type", "data_folder", "prompter_file", "inject_target", "stage_name",
          "dataset_type")
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).map(lambda s: "No" + s)


def _bad_basicsr_options(family: str, widths: int, phase: str, kind: str, name: str, position: int, tmp: Path):
    """A shipped options file (tiny, randomly widened) with ONE key broken; returns (opt, key path)."""
    import yaml

    opt = yaml.safe_load((OPTIONS / f"{family}_constyle.yml").read_text())
    opt["network_g"]["backbone"].update(TINY[family])
    opt["network_g"]["backbone"]["width" if family != "restormer" else "dim"] = widths
    encoder, bottleneck = READY_STAGES[family]
    if position % 2:  # an explicit (valid) stage spec instead of the ready one
        opt["network_g"]["stages"] = {"encoder": list(encoder), "bottleneck": bottleneck}
    missing = str(tmp / name)
    if kind == "model_type":
        opt["model_type"] = name
        return opt, "model_type"
    if kind == "backbone_type":
        opt["network_g"]["backbone"]["type"] = name
        return opt, "network_g.backbone.type"
    if kind == "data_folder":
        opt["datasets"][phase]["dataroot_gt"] = missing
        return opt, f"datasets.{phase}.dataroot_gt"
    if kind == "prompter_file":
        opt["network_g"]["prompter"]["pretrained"] = missing + ".pth"
        return opt, "network_g.prompter.pretrained"
    if kind == "inject_target":
        inject = ["encoder", "bottleneck"]
        inject.insert(position % 3, name)
        opt["network_g"]["inject"] = inject
        return opt, "network_g.inject"
    if kind == "stage_name":
        stages = {"encoder": list(encoder), "bottleneck": bottleneck}
        if position % 4 == 3:
            stages["bottleneck"] = name
            opt["network_g"]["stages"] = stages
            return opt, "network_g.stages.bottleneck"
        stages["encoder"][position % 3] = name
        opt["network_g"]["stages"] = stages
        return opt, f"network_g.stages.encoder[{position % 3}]"
    opt["datasets"][phase]["type"] = name  # dataset_type
    return opt, f"datasets.{phase}.type"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(family=st.sampled_from(sorted(TINY)), widths=st.sampled_from([8, 16]), phase=st.sampled_from(["train", "val"]),
       kind=st.sampled_from(BREAKS), name=names, position=st.integers(0, 11))
def test_basicsr_check_options_names_the_broken_key(tmp_path, family, widths, phase, kind, name, position):
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    from constyle_plugin.integrations.basicsr import OptionError, check_options, register

    register()
    opt, key = _bad_basicsr_options(family, widths, phase, kind, name, position, tmp_path)
    with pytest.raises(OptionError) as info:
        check_options(opt)
    assert info.value.key == key, (kind, str(info.value))
    assert str(info.value).startswith(f"{key}: ")


def test_basicsr_check_options_accepts_the_unbroken_options(tmp_path):
    """The control for the property above: the same dicts without the break pass."""
    import yaml

    from constyle_plugin.integrations.basicsr import check_options, register

    register()
    for family in sorted(TINY):
        opt = yaml.safe_load((OPTIONS / f"{family}_constyle.yml").read_text())
        opt["network_g"]["backbone"].update(TINY[family])
        encoder, bottleneck = READY_STAGES[family]
        check_options(opt)
        opt["network_g"]["stages"] = {"encoder": list(encoder), "bottleneck": bottleneck}
        check_options(opt)


MM_BREAKS = ("backbone_type", "prompter_file", "dataset_type", "metric_type", "load_from", "loss_type")


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(MM_BREAKS), name=names, split=st.sampled_from(["train", "val"]))
def test_mmengine_check_config_names_the_broken_key(kind, name, split):
    import constyle_plugin  # noqa: F401  (registers)
    from mmengine.config import Config

    from constyle_plugin.integrations.mmengine.runner import ConfigError, check_config

    cfg = _mm_config()
    if kind == "backbone_type":
        cfg.model.backbone.type, key = name, "model.backbone.type"
    elif kind == "prompter_file":
        cfg.model.prompter.pretrained, key = f"/nonexistent/{name}.pth", "model.prompter.pretrained"
    elif kind == "dataset_type":
        cfg[f"{split}_dataloader"].dataset.type, key = name, f"{split}_dataloader.dataset.type"
    elif kind == "metric_type":
        ev = cfg.val_evaluator
        metrics = ev["metrics"] if isinstance(ev, dict) and "metrics" in ev else ev
        first = metrics[0] if isinstance(metrics, (list, tuple)) else metrics
        first["type"] = name
        key = "val_evaluator" + (".metrics" if isinstance(ev, dict) and "metrics" in ev else "") + \
              ("[0]" if isinstance(metrics, (list, tuple)) else "") + ".type"
    elif kind == "load_from":
        cfg.load_from, key = f"/nonexistent/{name}.pth", "load_from"
    else:
        cfg.model.pixel_loss.type, key = name, "model.pixel_loss.type"
    assert isinstance(cfg, Config)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert str(info.value).startswith(f"{key}: "), (kind, str(info.value))


_MM_CFG = []


def _mm_config():
    from mmengine.config import Config

    if not _MM_CFG:
        import constyle_plugin  # noqa: F401
        from constyle_plugin.integrations.mmengine.runner import check_config

        _MM_CFG.append(Config.fromfile(str(ROOT / "options" / "mmengine" / "nafnet_constyle.py")))
        check_config(_MM_CFG[0])  # the unbroken config passes
    return Config(_MM_CFG[0].to_dict())


# ------------------------------------------------------------------------------------------------
# 5. Export paths: what works, and what a graph capture leaves out
# ------------------------------------------------------------------------------------------------
def _tiny_wrapped_nafnet():
    import warnings

    from constyle_plugin import ConStyleV2, wrap_unet
    from constyle_plugin.archs import NAFNet

    torch.manual_seed(0)
    net = wrap_unet(NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1], middle_blk_num=1),
                    prompter=ConStyleV2()).eval()
    with torch.no_grad():
        for p in net.injections.parameters():  # away from the zero-initialised identity
            p.normal_(0, 0.05)
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
    return net


def test_torch_export_and_jit_trace_of_a_wrapped_nafnet_match_eager():
    import warnings

    torch.set_num_threads(1)
    net = _tiny_wrapped_nafnet()
    x, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        eager, eager_other = net(x), net(other)
        exported = torch.export.export(net, (x,)).module()  # static shapes
        torch.testing.assert_close(exported(x), eager, rtol=1e-5, atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(traced(other), eager_other, rtol=1e-5, atol=1e-6)
        # documented limits: a captured graph drops the eager NaN/Inf refusal, and TorchScript
        # scripting does not compile the wrapper's forward(*args, **kwargs)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError):
            net(bad)
        assert torch.isnan(exported(bad)).any() and torch.isnan(traced(bad)).any()
    with pytest.raises(Exception, match="variable number of arguments"):
        torch.jit.script(net)


# ------------------------------------------------------------------------------------------------
# Untrusted training states (BasicSR resume)
# ------------------------------------------------------------------------------------------------
def test_basicsr_resume_state_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    from constyle_plugin.compat import ensure_basicsr_importable

    ensure_basicsr_importable()
    from constyle_plugin.integrations.basicsr.cli import load_state_file

    marker, path = tmp_path / "pwned", tmp_path / "4.state"
    torch.save({"epoch": 0, "iter": 4, "optimizers": [], "schedulers": [], "x": RunsCodeOnLoad(marker)}, path)
    with pytest.raises(RuntimeError, match=re.escape(str(path))):
        load_state_file(str(path))
    assert not marker.exists()
    good = tmp_path / "2.state"
    torch.save({"epoch": 0, "iter": 2, "optimizers": [], "schedulers": [{"milestones": __import__("collections").Counter({1: 1})}]}, good)
    assert load_state_file(str(good))["iter"] == 2
