"""``basicsr train|test`` option checks: runs that would never train are refused before they save
anything; option keys that nothing reads are reported (with a did-you-mean) before anything is
created on disk; command-line mistakes are one line; and ``check_options`` names the one broken key
of a shipped options file (hypothesis).

Each run is a fresh interpreter (or the console script's function in this process, for refusals
that come before anything is built) in a temporary folder, with a tiny NAFNet and one thread.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import (NAME, OPTIONS, ROOT, OPTIONS_DIR, basicsr, logs, losses_by_iter, ok, options_file, refused,
                          refused_here, tiny)

ensure_basicsr_importable()


# ------------------------------------------------------------------------------------------------
# 2. Runs that would never train
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total_iter", ["0", "-5"])
def test_a_run_of_no_iterations_is_refused_before_anything_is_created(tmp_path, photos, prompter_file, capsys,
                                                                     monkeypatch, total_iter):
    opts = tiny(photos, prompter_file) + [f"train:total_iter={total_iter}"]
    line = refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml", *opts,
                        fragments=("train.total_iter",))
    assert total_iter in line
    assert not (tmp_path / "experiments").exists()


def test_a_batch_larger_than_the_dataset_is_refused_and_its_folder_taken_back(tmp_path, photos, prompter_file):
    """15 training photos, batch 16 and BasicSR's drop_last: an epoch has no batch. The experiment folder
    BasicSR made is removed, and an earlier run's folder of the same name gets its name back."""
    earlier = tmp_path / "experiments" / NAME
    (earlier / "models").mkdir(parents=True)
    (earlier / "models" / "net_g_8.pth").write_bytes(b"an earlier run")
    opts = tiny(photos, prompter_file) + ["datasets:train:batch_size_per_gpu=16"]
    proc = basicsr(tmp_path, "train", "-opt", str(OPTIONS), "--force_yml", *opts)
    refused(proc, "datasets.train.batch_size_per_gpu", "16", "15 training samples")
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == [NAME]  # no *_archived_* left
    assert sorted(str(p.relative_to(earlier)) for p in earlier.rglob("*")) == ["models", "models/net_g_8.pth"]
    assert (earlier / "models" / "net_g_8.pth").read_bytes() == b"an earlier run"

    shutil.rmtree(tmp_path / "experiments")
    refused(basicsr(tmp_path, "train", "-opt", str(OPTIONS), "--force_yml", *opts), "batch_size_per_gpu")
    assert not (tmp_path / "experiments").exists()


# ------------------------------------------------------------------------------------------------
# 7. Option keys that nothing reads; the command line itself
# ------------------------------------------------------------------------------------------------
def _rename(section, old, new):
    def edit(opt):
        node = opt
        for key in section:
            node = node[key]
        node[new] = node.pop(old)
    return edit


TYPOS = [
    (_rename(["train"], "ema_decay", "ema_decy"), "train.ema_decy", "ema_decay"),
    (_rename(["datasets", "train"], "use_hflip", "use_hflp"), "datasets.train.use_hflp", "use_hflip"),
    (_rename(["datasets", "val"], "gt_size", "gt_szie"), "datasets.val.gt_szie", "gt_size"),
    (_rename([], "network_g", "netwrok_g"), "netwrok_g", "network_g"),
    (_rename(["train"], "pixel_opt", "pixel_optt"), "train.pixel_optt", "pixel_opt"),
    (_rename(["val"], "pad_multiple", "pad_mutliple"), "val.pad_mutliple", "pad_multiple"),
    (_rename(["datasets"], "val", "vall"), "datasets.vall", "val"),
]


@pytest.mark.parametrize("edit, key, meant", TYPOS, ids=[t[1] for t in TYPOS])
def test_a_misspelt_option_is_refused_with_a_did_you_mean_before_anything_is_created(tmp_path, photos, prompter_file,
                                                                                     capsys, monkeypatch, edit, key,
                                                                                     meant):
    path = options_file(tmp_path, edit)
    opts = tiny(photos, prompter_file)
    if key == "netwrok_g":
        opts = [o for o in opts if not o.startswith("network_g:")]
    if key == "datasets.vall":
        opts = [o for o in opts if not o.startswith("datasets:val:")]
    line = refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(path), "--force_yml", *opts,
                        fragments=(f"{key}: ", f"did you mean {meant!r}"))
    assert not (tmp_path / "experiments").exists(), line


def test_a_misspelt_force_yml_key_is_refused_naming_the_item(tmp_path, photos, prompter_file, capsys, monkeypatch):
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), "train:total_iters=3",
                 fragments=("train.total_iters", "did you mean 'total_iter'", "--force_yml train:total_iters=3"))
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("item, fix", [("train:optim_g:lr=1e-3", "train:optim_g:lr=0.001"),
                                       ("train:optim_g:lr=2E-4", "train:optim_g:lr=0.0002"),
                                       ("train:total_iter=2e3", "train:total_iter=2000")],
                         ids=["exponent", "capital-exponent", "whole-number"])
def test_a_number_force_yml_would_pass_as_text_is_refused_with_the_spelling_that_works(
        tmp_path, photos, prompter_file, capsys, monkeypatch, item, fix):
    """BasicSR's --force_yml reads only plain digits as numbers: `lr=1e-3` would reach AdamW as the text
    '1e-3' and fail deep inside it. The command names the item and the spelling BasicSR reads."""
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                 *tiny(photos, prompter_file), item, fragments=(f"--force_yml: {item!r}", f"write {fix}"))
    assert not (tmp_path / "experiments").exists()


def test_manual_seed_set_by_force_yml_seeds_the_run(tmp_path, photos, prompter_file):
    """BasicSR seeds its generators before it applies --force_yml, so `manual_seed=N` there was recorded but
    not used; the command seeds with it: the run equals one whose options file says N, and differs from
    the file's own seed."""
    def run(name: str, options: Path, *extra: str) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        ok(basicsr(folder, "train", "-opt", str(options), "--force_yml", *tiny(photos, prompter_file, total_iter=2),
                   *extra))
        return losses_by_iter(logs(folder)[0])

    seeded_file = options_file(tmp_path, lambda opt: opt.update(manual_seed=5))
    forced = run("forced", OPTIONS, "manual_seed=5")
    assert forced and forced == run("file", seeded_file)
    assert forced != run("default", OPTIONS)  # the options file's own seed (10)


ARGUMENTS = [
    ("nafnet_origin.yml", "network_g:widht=8", "network_g.widht", "width"),
    ("nafnet_constyle.yml", "train:pixel_opt:loss_wieght=1", "train.pixel_opt.loss_wieght", "loss_weight"),
    ("nafnet_constyle.yml", "train:optim_g:weight_decy=0", "train.optim_g.weight_decy", "weight_decay"),
    ("nafnet_constyle.yml", "train:scheduler:period=[4]", "train.scheduler.period", "periods"),
    ("nafnet_constyle.yml", "train:scheduler:type=CosineAnnealingRestart", "train.scheduler.type",
     "CosineAnnealingRestartLR"),
    ("constyle_v2_pretrain.yml", "network_g:queue_sise=16", "network_g.queue_sise", "queue_size"),
]


@pytest.mark.parametrize("source, item, key, meant", ARGUMENTS, ids=[a[2] for a in ARGUMENTS])
def test_a_misspelt_argument_of_a_network_loss_optimiser_or_scheduler_is_refused_before_anything_is_created(
        tmp_path, capsys, monkeypatch, source, item, key, meant):
    """These options are passed as keyword arguments once BasicSR builds the model (after the experiment
    folder exists); a misspelt one was a TypeError there."""
    refused_here(capsys, tmp_path, monkeypatch, "train", "-opt", str(ROOT / "options" / source), "--force_yml",
                 item, fragments=(f"{key}: ", f"did you mean {meant!r}"))
    assert not (tmp_path / "experiments").exists()


@pytest.mark.parametrize("case", ["missing", "folder", "broken_yaml", "not_a_mapping", "no_equals", "two_equals",
                                  "no_section", "bad_list", "bare_word_list"])
def test_command_line_mistakes_are_one_line(tmp_path, capsys, monkeypatch, case):
    opt_file = str(OPTIONS)
    extra: List[str] = []
    fragments = []
    if case == "missing":
        opt_file, fragments = str(tmp_path / "nope.yml"), ["-opt", "not found", "nope.yml"]
    elif case == "folder":
        opt_file, fragments = str(tmp_path), ["-opt", "is a folder"]
    elif case == "broken_yaml":
        (tmp_path / "broken.yml").write_text("name: x\ntrain:\n  total_iter: [1, 2\nval: 3\n")
        opt_file, fragments = str(tmp_path / "broken.yml"), ["-opt", "broken.yml", "not valid YAML", "line"]
    elif case == "not_a_mapping":
        (tmp_path / "list.yml").write_text("- a\n- b\n")
        opt_file, fragments = str(tmp_path / "list.yml"), ["-opt", "expected a mapping"]
    elif case == "no_equals":
        extra, fragments = ["train:total_iter"], ["--force_yml", "'train:total_iter'", "key:sub=value"]
    elif case == "two_equals":
        extra, fragments = ["name=a=b"], ["--force_yml", "'name=a=b'"]
    elif case == "no_section":
        extra, fragments = ["trian:total_iter=3"], ["--force_yml", "`trian`", "did you mean 'train'"]
    elif case == "bad_list":
        extra, fragments = ["train:scheduler:periods=[6"], ["--force_yml", "not a list"]
    else:  # BasicSR evaluates lists as Python: NameError
        extra, fragments = ["datasets:val:photos=[camera]"], ["--force_yml", "strings quoted"]
    args = ["train", "-opt", opt_file] + (["--force_yml", *extra] if extra else [])
    refused_here(capsys, tmp_path, monkeypatch, *args, fragments=fragments)
    assert not (tmp_path / "experiments").exists()


def test_unread_keys_where_basicsr_allows_extras_are_warnings():
    """logger / path keys and far-off top-level keys: a warning each (the run goes on); the shipped
    options files give neither error nor warning (the control)."""
    from constyle_plugin.integrations.basicsr import check_option_keys, register

    register()
    for name in ("nafnet_constyle", "nafnet_origin", "restormer_constyle", "convunet_constyle",
                 "constyle_v2_pretrain"):
        opt = yaml.safe_load((ROOT / "options" / f"{name}.yml").read_text())
        opt["is_train"] = True
        said: List[str] = []
        check_option_keys(opt, warn=said.append)
        assert said == [], (name, said)
    opt = yaml.safe_load(OPTIONS.read_text())
    opt["logger"]["save_chekpoint_freq"] = 5
    opt["path"]["pretrain_netwrk_g"] = "x.pth"
    opt["my_notes"] = "hello"
    said = []
    check_option_keys(opt, warn=said.append)
    assert len(said) == 3, said
    assert any(s.startswith("logger.save_chekpoint_freq:") and "did you mean 'save_checkpoint_freq'" in s
               for s in said), said
    assert any(s.startswith("path.pretrain_netwrk_g:") and "did you mean 'pretrain_network_g'" in s for s in said)
    assert any(s.startswith("my_notes:") for s in said), said


def test_amp_under_a_model_that_does_not_read_it_is_a_warning():
    """`train.amp` with BasicSR's SRModel would silently train in float32: the check says so (and says
    nothing for ConStyleSRModel, which reads it, or for SRModel without it)."""
    from constyle_plugin.integrations.basicsr import check_option_keys, register

    register()
    opt = yaml.safe_load(OPTIONS.read_text())
    opt["is_train"] = True
    opt["train"]["amp"] = "bf16"
    said: List[str] = []
    check_option_keys(opt, warn=said.append)
    assert said == []
    opt["model_type"] = "SRModel"
    check_option_keys(opt, warn=said.append)
    assert len(said) == 1 and said[0].startswith("train.amp: SRModel does not read it"), said
    del opt["train"]["amp"]
    said.clear()
    check_option_keys(opt, warn=said.append)
    assert said == []


def test_plugin_classes_declare_the_keys_they_read():
    """A dataset given exactly its declared keys builds; one undeclared key is refused by the check (the
    declaration is what the check uses, so a key the class reads must be declared to be accepted)."""
    from constyle_plugin.data.datasets import ConStylePretrainDataset, MixDegradationDataset
    from constyle_plugin.integrations.basicsr import OptionError, check_option_keys, register
    from constyle_plugin.integrations.basicsr.models import ConStyleSRModel, ConStyleV2PretrainModel

    register()
    assert {"gt_size", "use_hflip", "use_rot", "photos", "degradations"} <= MixDegradationDataset.OPTIONS
    assert {"dataroot", "crop_size", "weather_prob"} <= ConStylePretrainDataset.OPTIONS
    assert {"ema_decay", "pixel_opt", "total_iter", "optim_g", "scheduler"} <= ConStyleSRModel.TRAIN_OPTIONS
    assert {"class_iter", "kl_iter", "loss_weights"} <= ConStyleV2PretrainModel.TRAIN_OPTIONS
    opt = yaml.safe_load(OPTIONS.read_text())
    opt["datasets"]["train"]["dataroot_lq"] = "lq"  # read by PairedImageDataset, not by MixDegradationDataset
    with pytest.raises(OptionError) as info:
        check_option_keys(opt, warn=lambda m: None)
    assert info.value.key == "datasets.train.dataroot_lq"
    assert "MixDegradationDataset" in str(info.value)
    opt["datasets"]["train"]["type"] = "PairedImageDataset"  # BasicSR's own datasets are not checked
    check_option_keys(opt, warn=lambda m: None)


# ------------------------------------------------------------------------------------------------
# check_options (hypothesis): one broken key of a shipped options file, and the error names it
# ------------------------------------------------------------------------------------------------
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

    opt = yaml.safe_load((OPTIONS_DIR / f"{family}_constyle.yml").read_text())
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
        opt = yaml.safe_load((OPTIONS_DIR / f"{family}_constyle.yml").read_text())
        opt["network_g"]["backbone"].update(TINY[family])
        encoder, bottleneck = READY_STAGES[family]
        check_options(opt)
        opt["network_g"]["stages"] = {"encoder": list(encoder), "bottleneck": bottleneck}
        check_options(opt)
