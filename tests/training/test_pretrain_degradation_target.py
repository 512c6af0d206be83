"""Stage-1 options that teach the prompt the degradation: the data's degradation labels and held-out
photos, the dead-leaves content, the MoCo degradation head and its loss, and a ``basicsr train`` run of
``options/constyle_v2_pretrain_degradation.yml`` (tiny overrides, CPU)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from constyle_plugin import ConStyleV2
from constyle_plugin.data import degradations as deg
from constyle_plugin.compat import ensure_basicsr_importable
from constyle_plugin.training.pretrain import ConStyleMoCo
from constyle_plugin.data.samples import dead_leaves, export_dead_leaves

ensure_basicsr_importable()
from constyle_plugin.data.datasets import ConStylePretrainDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
while not (ROOT / "options").is_dir():
    ROOT = ROOT.parent
OPTIONS = ROOT / "options"
NAMES = list(deg.ALL_IN_ONE)


def _tree(tmp_path: Path, classes=("a", "b", "c"), size: int = 48) -> Path:
    """An ImageFolder tree of flat mid-grey-ish pictures (one per class): any texture is degradation."""
    import cv2

    for i, c in enumerate(classes):
        (tmp_path / c).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / c / "0.png"), np.full((size, size, 3), 100 + 20 * i, np.uint8))
    return tmp_path


def _opt(root: Path, **kw):
    return {"dataroot": str(root), "resize": 48, "crop_size": 32, "rrc_scale": [0.5, 1.0], **kw}


def test_query_degradations_label_each_query_with_the_degradation_it_got(tmp_path):
    ds = ConStylePretrainDataset(_opt(_tree(tmp_path), query_degradations={"noise": 1, "low_light": 1},
                                      phase="val", repeat=16))
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        label = s["degradation_label"]
        assert NAMES[label] in ("noise", "low_light") and s["weather"] is True
        seen.add(NAMES[label])
        q = s["query"]
        if NAMES[label] == "low_light":  # darkened: far below the clean key's brightness
            assert float(q.mean()) < 0.6 * float(s["key"].mean())
        else:  # white noise of sigma >= 10 / 255 on a flat picture; the clean key stays flat
            assert float((q[:, :, 1:] - q[:, :, :-1]).abs().mean()) > 0.02
            assert float((s["key"][:, :, 1:] - s["key"][:, :, :-1]).abs().max()) < 1e-5
    assert seen == {"noise", "low_light"}


def _kind(view: torch.Tensor, flat: float) -> str:
    """Which of two easily told apart degradations a view of a flat picture (value ``flat``) shows."""
    mean = float(view.mean())
    if mean < 0.6 * flat:
        return "low_light"  # darkened far below the picture
    if abs(mean - flat) < 0.1 and float((view[:, :, 1:] - view[:, :, :-1]).abs().mean()) > 0.02:
        return "noise"  # as bright as the picture, with white noise on it
    return "clean" if float((view[:, :, 1:] - view[:, :, :-1]).abs().max()) < 1e-5 else "other"


def test_key_degradation_same_gives_the_key_the_querys_degradation_type(tmp_path):
    """Two types told apart view by view: every key has its own query's type (a key type drawn on its
    own would match in about half the samples), and both types occur; with the default the key is clean."""
    root = _tree(tmp_path)
    options = _opt(root, query_degradations={"noise": 1, "low_light": 1}, phase="val", repeat=16)
    same = ConStylePretrainDataset({**options, "key_degradation": "same"})
    clean = ConStylePretrainDataset(options)
    kinds = []
    for i in range(len(same)):
        s = same[i]
        flat = (100 + 20 * s["label"]) / 255  # _tree's picture of this class
        query, key = _kind(s["query"], flat), _kind(s["key"], flat)
        assert query == NAMES[s["degradation_label"]] and key == query, (i, query, key)
        assert _kind(clean[i]["key"], flat) == "clean"
        kinds.append(key)
    assert 8 <= kinds.count("noise") <= len(kinds) - 8


def test_photos_keeps_only_the_named_classes_and_refuses_unknown_names(tmp_path):
    root = _tree(tmp_path)
    ds = ConStylePretrainDataset(_opt(root, photos=["a", "c"]))
    assert ds.classes == ["a", "c"] and {Path(p).parent.name for p in ds.paths} == {"a", "c"}
    with pytest.raises(ValueError, match=r"option `photos` names \['d'\]"):
        ConStylePretrainDataset(_opt(root, photos=["a", "d"]))


@pytest.mark.parametrize("opt, match", [
    ({"key_degradation": "same"}, "needs `query_degradations`"),
    ({"query_degradations": ["noise"], "key_degradation": "other"}, "`key_degradation` must be"),
    ({"query_degradations": ["nosie"]}, r"option `query_degradations` has unknown name\(s\) \['nosie'\]"),
    ({"dead_leaves": 3}, "sample tree only"),
])
def test_bad_degradation_options_name_the_option(tmp_path, opt, match):
    with pytest.raises(ValueError, match=match):
        ConStylePretrainDataset(_opt(_tree(tmp_path), **opt))


def test_dead_leaves_is_seeded_and_looks_like_occluding_disks_of_many_sizes():
    a = dead_leaves(96, np.random.default_rng(3))
    b = dead_leaves(96, np.random.default_rng(3))
    c = dead_leaves(96, np.random.default_rng(4))
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # flat regions (inside disks) and edges (between them): most neighbours equal, many do not
    same = (np.abs(np.diff(a.astype(int), axis=1)).sum(-1) == 0).mean()
    assert 0.5 < same < 0.99
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # many colours, not one flat disk


def test_dead_leaves_classes_join_the_sample_tree(tmp_path):
    export_dead_leaves(tmp_path / "tree", 3, size=32)
    paths = sorted(p.relative_to(tmp_path / "tree").as_posix() for p in (tmp_path / "tree").rglob("*.png"))
    assert paths == ["dead_leaves_0000/0.png", "dead_leaves_0001/0.png", "dead_leaves_0002/0.png"]


# ------------------------------------------------------------------------------------ the model and loss
def test_degradation_head_predicts_from_z2_and_its_loss_is_the_cross_entropy():
    torch.manual_seed(0)
    moco = ConStyleMoCo(queue_size=8, normalize=True, degradation_classes=8)
    q, k = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    out = moco(q, k)
    assert out.q_degradation_logits.shape == (4, 8)
    assert torch.allclose(out.q_degradation_logits, moco.degradation_head(out.q_enc.z2))
    labels = torch.tensor([0, 3, 5, 7])
    losses = moco.pretrain_loss(class_iter=None)(out, torch.zeros(4, dtype=torch.long), 0, labels)
    expected = F.cross_entropy(out.q_degradation_logits, labels)
    assert torch.allclose(losses["degradation"], expected)
    assert torch.allclose(losses["total"], sum(v for n, v in losses.items() if n != "total"))
    losses["degradation"].backward()
    assert moco.encoder_q.mlp2[0].weight.grad.abs().sum() > 0  # the latent prompt itself is taught


def test_without_labels_or_head_the_authors_losses_are_unchanged():
    torch.manual_seed(0)
    moco = ConStyleMoCo(queue_size=8, normalize=True)
    out = moco(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    assert out.q_degradation_logits is None
    names = set(moco.pretrain_loss(class_iter=None)(out, torch.zeros(4, dtype=torch.long), 0)) - {"total"}
    assert names == {"infonce", "content", "style", "class", "kl"}
    with pytest.raises(ValueError, match="no degradation head"):
        moco.pretrain_loss()(out, None, 0, torch.zeros(4, dtype=torch.long))


def test_the_head_stays_out_of_the_exported_prompter_and_survives_a_moco_round_trip(tmp_path):
    torch.manual_seed(0)
    moco = ConStyleMoCo(queue_size=8, degradation_classes=8)
    prompter = moco.export_prompter()
    assert set(prompter.state_dict()) == set(ConStyleV2().state_dict())
    path = tmp_path / "moco.pth"
    torch.save({"params": moco.state_dict()}, path)
    again = ConStyleMoCo.from_pretrained(path)
    assert again.degradation_classes == 8
    assert torch.equal(again.degradation_head.weight, moco.degradation_head.weight)


def test_the_head_ships_beside_the_prompter_with_the_mocos_logits(tmp_path):
    from constyle_plugin.core.degradation_head import load_degradation_head
    from constyle_plugin.training.pretrain import export_prompter_files

    torch.manual_seed(0)
    moco = ConStyleMoCo(queue_size=8, degradation_classes=8)
    torch.nn.init.normal_(moco.degradation_head.weight)
    checkpoint = tmp_path / "net_g_5.pth"
    torch.save({"params": moco.state_dict()}, checkpoint)
    prompter_file, sidecar = export_prompter_files(checkpoint, tmp_path / "out" / "prompter.safetensors")
    assert sidecar == tmp_path / "out" / "prompter.head.safetensors"
    prompter = ConStyleV2.from_pretrained(prompter_file)
    assert set(prompter.state_dict()) == set(ConStyleV2().state_dict())  # the released layout, no head in it
    head = load_degradation_head(prompter_file)
    assert list(head.classes) == NAMES
    x = torch.rand(3, 3, 48, 40)
    moco.eval()
    with torch.no_grad():
        expected = moco.degradation_head(moco.encoder_q.encode(x).z2)
        assert torch.allclose(head(prompter(x).latent), expected, atol=1e-6)
        # a stage-1 checkpoint carries its head itself: inspect can read it without a sidecar
        inside = load_degradation_head(checkpoint, classes=NAMES)
        assert torch.allclose(inside(prompter(x).latent), expected, atol=1e-6) and list(inside.classes) == NAMES


def test_without_a_head_only_the_prompter_is_written(tmp_path):
    torch.manual_seed(0)
    written, sidecar = ConStyleMoCo(queue_size=8).save_prompter(tmp_path / "p.safetensors")
    assert sidecar is None and sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


# ------------------------------------------------------------------------------------ basicsr train
def test_the_degradation_options_file_trains_and_validates_the_head(tmp_path):
    opts = ["train:total_iter=3", "val:val_freq=3", "logger:print_freq=1", "logger:save_checkpoint_freq=3",
            "network_g:queue_size=16", "datasets:train:batch_size_per_gpu=4", "datasets:train:num_worker_per_gpu=0",
            "datasets:train:crop_size=32", "datasets:train:crops_per_photo=1", "datasets:train:dead_leaves=2",
            "datasets:train:sample_crop_size=64", "datasets:train:resize=64",
            "datasets:val:crop_size=32", "datasets:val:resize=64", "datasets:val:crops_per_photo=1",
            "datasets:val:sample_crop_size=64"]
    cmd = [sys.executable, "-c", "import sys; from constyle_plugin.integrations.basicsr.cli import main; sys.exit(main())",
           "train", "-opt", str(OPTIONS / "constyle_v2_pretrain_degradation.yml"), "--force_yml", *opts]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "experiments" / "ConStyle_v2_pretrain_degradation"
    log = next((exp).glob("train_*.log")).read_text()
    assert len(re.findall(r"l_degradation: [\d.e+-]+", log)) == 3
    assert re.search(r"# degradation_top1: \d+\.\d+", log)
    assert (exp / "sample_classes" / "dead_leaves_0001").is_dir()
    prompter = ConStyleV2.from_pretrained(exp / "models" / "prompter_latest.safetensors")
    assert set(prompter.state_dict()) == set(ConStyleV2().state_dict())
    # the EMA head beside the EMA prompter, as the checkpoint holds them
    from constyle_plugin.core.degradation_head import load_degradation_head

    head = load_degradation_head(exp / "models" / "prompter_latest.safetensors")
    ema = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)["params_ema"]
    assert torch.equal(head.weight, ema["degradation_head.weight"]) and list(head.classes) == NAMES


def test_the_degradation_options_file_keeps_the_benchmarks_held_out_photos_out(tmp_path):
    import yaml

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from allinone import parse_args
    finally:
        sys.path.pop(0)
    from constyle_plugin.data.samples import SAMPLE_NAMES, split_by_photo

    args = parse_args([])
    _, held_out = split_by_photo(sorted(SAMPLE_NAMES), val_fraction=args.holdout, seed=args.split_seed)
    opt = yaml.safe_load((OPTIONS / "constyle_v2_pretrain_degradation.yml").read_text())
    for phase in ("train", "val"):
        section = dict(opt["datasets"][phase], sample_dir=None, dataroot=str(tmp_path / "tree"),
                       crops_per_photo=1, dead_leaves=0)
        from constyle_plugin.data.samples import export_sample_classes
        export_sample_classes(tmp_path / "tree", crops_per_photo=1, crop_size=64)
        ds = ConStylePretrainDataset(section)
        assert set(ds.classes).isdisjoint(held_out), (phase, held_out)
        assert len(ds.classes) == len(SAMPLE_NAMES) - len(held_out)
