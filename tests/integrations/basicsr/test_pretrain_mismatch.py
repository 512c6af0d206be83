"""``basicsr train`` with ``path.pretrain_network_g`` pointing to a checkpoint of another network (another
architecture, or the same one at another width): refused in one line naming the file and the first
mismatched keys and shapes, before anything is created; a checkpoint of the same network passes."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

from constyle_plugin.compat import ensure_basicsr_importable

from basicsr_runs import OPTIONS, apply, refused_here, tiny

ensure_basicsr_importable()


def network(photos, prompter_file, **change):
    from basicsr.utils.registry import ARCH_REGISTRY

    import constyle_plugin.integrations.basicsr  # noqa: F401  (registers the plugin's archs)

    opt = apply(yaml.safe_load(OPTIONS.read_text()), tiny(photos, prompter_file))
    options = copy.deepcopy(opt["network_g"])
    options["backbone"].update(change)
    return opt, ARCH_REGISTRY.get(options.pop("type"))(**options)


@pytest.mark.parametrize("other, says", [
    ("plain NAFNet", "missing key(s), first: backbone."),
    ("width 16", "mis-shaped (file vs options)"),
])
def test_a_checkpoint_of_another_network_is_refused_in_one_line(other, says, tmp_path, photos, prompter_file, capsys,
                                                               monkeypatch):
    if other == "plain NAFNet":
        from basicsr.utils.registry import ARCH_REGISTRY

        net = ARCH_REGISTRY.get("NAFNet")(img_channel=3, width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1])
    else:
        _, net = network(photos, prompter_file, width=16)
    checkpoint = tmp_path / "other.pth"
    torch.save({"params": net.state_dict()}, checkpoint)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    line = refused_here(capsys, run_dir, monkeypatch, "train", "-opt", str(OPTIONS), "--force_yml",
                        *tiny(photos, prompter_file), f"path:pretrain_network_g={checkpoint}",
                        fragments=("path.pretrain_network_g", str(checkpoint), "does not fit network_g", says))
    if other == "width 16":
        assert "[16, " in line and "[8, " in line  # the two shapes of the first mis-shaped key
    assert list(run_dir.iterdir()) == []


def test_a_checkpoint_of_the_same_network_passes_the_check(tmp_path, photos, prompter_file):
    from constyle_plugin.integrations.basicsr.cli import RunFixes

    opt, net = network(photos, prompter_file)
    checkpoint = tmp_path / "same.pth"
    torch.save({"params": {f"module.{k}": v for k, v in net.state_dict().items()}}, checkpoint)
    opt["path"]["pretrain_network_g"] = str(checkpoint)
    RunFixes("train")._check_pretrained_fit(opt)  # raises nothing
    opt["path"]["strict_load_g"] = False  # BasicSR then loads only the tensors that fit: not checked
    _, wider = network(photos, prompter_file, width=16)
    torch.save({"params": wider.state_dict()}, checkpoint)
    RunFixes("train")._check_pretrained_fit(opt)
