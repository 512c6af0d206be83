"""save_pretrained / from_pretrained of a wrapped U-Net: what the folder holds, exact output after loading
(also onto a user's own class in a fresh process), the prompter's SHA-256 check, the one-line key
mismatch messages, damaged files, the EMA variant, and the docs page's snippets run as written."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from constyle_plugin import CheckpointError, ConStyleError, ConStyleUNet, ConStyleV2, wrap_unet
from constyle_plugin.archs import NAFNet
from constyle_plugin.core.pretrained import PrompterMismatchError, prompter_sha256

from unets import as_trained

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "checkpoints.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

USER_UNET = textwrap.dedent('''
    import torch
    from torch import nn


    class MyUNet(nn.Module):
        """A user's own three-level U-Net (not a reference arch, not registered anywhere)."""

        def __init__(self, width: int = 8) -> None:
            super().__init__()
            self.head = nn.Conv2d(3, width, 3, padding=1)
            self.down1 = nn.Conv2d(width, 2 * width, 2, stride=2)
            self.down2 = nn.Conv2d(2 * width, 4 * width, 2, stride=2)
            self.down3 = nn.Conv2d(4 * width, 8 * width, 2, stride=2)
            self.middle = nn.Sequential(nn.Conv2d(8 * width, 8 * width, 3, padding=1), nn.ReLU())
            self.up3 = nn.ConvTranspose2d(8 * width, 4 * width, 2, stride=2)
            self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
            self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
            self.tail = nn.Conv2d(width, 3, 3, padding=1)

        def forward(self, x):
            s0 = self.head(x)
            s1 = self.down1(s0)
            s2 = self.down2(s1)
            y = self.middle(self.down3(s2))
            y = self.up1(self.up2(self.up3(y) + s2) + s1) + s0
            return self.tail(y) + x
''')


def _tiny_nafnet() -> NAFNet:
    return NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1])


def test_user_unet_saved_and_loaded_onto_a_fresh_instance_in_a_fresh_process(tmp_path):
    """The folder holds config.json (class, StageSpec, inject, prompter SHA-256) and model.safetensors
    without the prompter; a fresh interpreter that has only the user's class gets the same output, bit
    for bit."""
    (tmp_path / "my_unet.py").write_text(USER_UNET)
    sys.path.insert(0, str(tmp_path))
    try:
        from my_unet import MyUNet
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    net = as_trained(wrap_unet(MyUNet(), inject=("encoder", "bottleneck", "decoder")))
    net.save_pretrained(tmp_path / "run")

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"]["class"] == "MyUNet" and config["backbone"]["kwargs"] is None
    assert "stages" not in config  # the hook points are stage_info; the StageSpec is derived from it
    assert [(i["role"], i["name"]) for i in config["stage_info"]] == [(i.role, i.name) for i in net.stage_info]
    assert config["inject"] == ["encoder", "bottleneck", "decoder"]
    assert config["prompter"]["sha256"] == prompter_sha256(net.prompter)
    assert config["prompter"]["source"] == "packaged" and config["prompter"]["stored"] is False
    stored = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert not any(k.startswith("prompter.") for k in stored)
    assert set(stored) == {k for k in net.state_dict() if not k.startswith("prompter.")}

    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        expected = net(x)
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f'''
        import sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from my_unet import MyUNet
        from constyle_plugin import ConStyleUNet
        net = ConStyleUNet.from_pretrained({str(tmp_path / "run")!r}, backbone=MyUNet())
        with torch.no_grad():
            torch.save(net(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
    ''')
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_reference_arch_rebuilt_from_the_config_and_the_ema_variant(tmp_path):
    """backbone=None rebuilds a reference arch from its recorded constructor arguments; the EMA copy is
    model_ema.safetensors, loaded by default, the raw weights with ema=False."""
    torch.manual_seed(0)
    net = as_trained(wrap_unet(_tiny_nafnet()), seed=1)
    ema = as_trained(wrap_unet(_tiny_nafnet()), seed=2)
    net.save_pretrained(tmp_path / "run", ema=ema)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["backbone"]["kwargs"]["width"] == 8
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        loaded_ema = ConStyleUNet.from_pretrained(tmp_path / "run")
        loaded = ConStyleUNet.from_pretrained(tmp_path / "run", ema=False)
        assert isinstance(loaded.backbone, NAFNet) and not loaded.training
        assert torch.equal(loaded(x), net(x))
        assert torch.equal(loaded_ema(x), ema(x))
        assert not torch.equal(loaded(x), loaded_ema(x))
    net.save_pretrained(tmp_path / "run")  # saved again without an EMA copy: the old one goes
    assert not (tmp_path / "run" / "model_ema.safetensors").exists()
    with pytest.raises(CheckpointError, match="no EMA weights"):
        ConStyleUNet.from_pretrained(tmp_path / "run", ema=True)


def test_prompter_hash_mismatch_is_refused_and_the_right_prompter_loads(tmp_path):
    torch.manual_seed(3)
    own = ConStyleV2().freeze()
    own_file = own.save_pretrained(tmp_path / "own_prompter.safetensors")
    net = as_trained(wrap_unet(_tiny_nafnet(), prompter=ConStyleV2.from_pretrained(own_file)))
    with pytest.warns(UserWarning, match=r"records only its SHA-256, and loading it needs that prompter passed"):
        net.save_pretrained(tmp_path / "run", include_prompter=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["prompter"]["source"] == str(own_file) and config["prompter"]["stored"] is False

    with pytest.raises(PrompterMismatchError) as info:  # the default: the packaged prompter
        ConStyleUNet.from_pretrained(tmp_path / "run", backbone=_tiny_nafnet())
    message = str(info.value)
    assert isinstance(info.value, ConStyleError) and "\n" not in message
    assert config["prompter"]["sha256"][:16] in message and "the packaged prompter" in message
    assert prompter_sha256(ConStyleV2.from_pretrained())[:16] in message

    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(ConStyleUNet.from_pretrained(tmp_path / "run", prompter=own_file)(x), expected)
        net.save_pretrained(tmp_path / "with_prompter")  # not the packaged prompter: stored by default
        assert torch.equal(ConStyleUNet.from_pretrained(tmp_path / "with_prompter")(x), expected)
        forced = ConStyleUNet.from_pretrained(tmp_path / "run", prompter="packaged", check_prompter=False)
        assert not torch.equal(forced(x), expected)


def test_key_mismatch_messages_name_the_difference_in_one_line(tmp_path):
    torch.manual_seed(0)
    net = as_trained(wrap_unet(_tiny_nafnet()))
    net.save_pretrained(tmp_path / "run")

    with pytest.raises(CheckpointError) as info:  # another width
        ConStyleUNet.from_pretrained(tmp_path / "run",
                                     backbone=NAFNet(width=16, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]))
    assert "\n" not in str(info.value)
    assert re.search(r"other width or channel counts: backbone\.intro\.weight is \(8, 3, 3, 3\) in the file, "
                     r"\(16, 3, 3, 3\) in the net", str(info.value)), info.value

    with pytest.raises(CheckpointError) as info:  # another backbone: other block counts
        ConStyleUNet.from_pretrained(tmp_path / "run",
                                     backbone=NAFNet(width=8, enc_blk_nums=[1, 1, 1, 2], dec_blk_nums=[1, 1, 1, 1]))
    assert "\n" not in str(info.value) and "another backbone: 0 key(s) missing" not in str(info.value)
    assert "another backbone" in str(info.value) and "backbone.encoders.3.1" in str(info.value)

    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "inject": ["encoder"]}))  # other inject targets
    with pytest.raises(CheckpointError) as info:
        ConStyleUNet.from_pretrained(tmp_path / "run")
    assert "\n" not in str(info.value)
    assert "other inject targets or StageSpec" in str(info.value) and "injections.bottleneck" in str(info.value)

    infos = [dict(i, name="middle_blk") if i["role"] == "bottleneck" else i for i in config["stage_info"]]
    config_path.write_text(json.dumps({**config, "stage_info": infos}))  # a hook point naming no module
    with pytest.raises(CheckpointError, match="config.json: stage_info: 'middle_blk' is not a module of NAFNet; "
                                              "did you mean 'middle_blks'"):
        ConStyleUNet.from_pretrained(tmp_path / "run")


def test_truncated_or_damaged_model_safetensors_is_named(tmp_path):
    torch.manual_seed(0)
    net = as_trained(wrap_unet(_tiny_nafnet()))
    weights = net.save_pretrained(tmp_path / "run") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, but config\.json records \d+: "
                                              r"truncated"):
        ConStyleUNet.from_pretrained(tmp_path / "run")
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF  # same size, one weight changed
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="SHA-256 differs from the one config.json records"):
        ConStyleUNet.from_pretrained(tmp_path / "run")
    weights.unlink()
    with pytest.raises(CheckpointError, match="not found, but config.json records it"):
        ConStyleUNet.from_pretrained(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        ConStyleUNet.from_pretrained(tmp_path)


def test_a_save_that_fails_midway_leaves_the_previous_save_loadable(tmp_path, monkeypatch):
    """The files are written into a folder beside and swapped in as a whole: a failure while writing the
    weights leaves the previous folder as it was."""
    torch.manual_seed(0)
    first = as_trained(wrap_unet(_tiny_nafnet()), seed=1)
    first.save_pretrained(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}

    import safetensors.torch

    def broken(state, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        as_trained(wrap_unet(_tiny_nafnet()), seed=2).save_pretrained(tmp_path / "run")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ConStyleUNet.from_pretrained(tmp_path / "run")(x), first(x))


# ---------------------------------------------------------------------------- the docs page's snippets
def _doc_blocks(marker: str):
    """The python blocks of docs/checkpoints.md marked ``<!-- run: ...::marker -->``."""
    text = DOC.read_text()
    pattern = re.compile(r"<!--\s*run:\s*tests/core/test_pretrained\.py::" + marker
                         + r"\s*-->\s*\n```python\n(.*?)\n```", re.S)
    return pattern.findall(text)


def test_docs_own_loop_snippet_then_load_in_a_fresh_process(tmp_path):
    """docs/checkpoints.md, as written: a file block (first line ``# NAME.py``) is saved,
    the others run, each in a fresh interpreter: the own-loop training that ends with
    net.save_pretrained(...), then loading onto the user's class and restoring an image."""
    import cv2
    import numpy as np

    blocks = _doc_blocks("test_docs_own_loop_snippet_then_load_in_a_fresh_process")
    assert len(blocks) >= 3, "the page lost its snippets"
    assert "net.save_pretrained(" in blocks[1].strip().splitlines()[-1]
    photo = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    for n, body in enumerate(blocks):
        named = re.fullmatch(r"#\s*([\w.-]+\.py)\s*", body.splitlines()[0])
        if named:
            (tmp_path / named.group(1)).write_text(body + "\n")
            continue
        script = tmp_path / f"snippet_{n}.py"
        script.write_text(body + "\n")
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"snippet {n} failed:\n{body}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    restored = cv2.imread(str(tmp_path / "photo_restored.png"))
    assert restored is not None and restored.shape == photo.shape


def test_a_backbone_of_a_trainer_registry_is_rebuilt_from_its_recorded_options(tmp_path):
    """backbone_config={type, registry: basicsr, ...}: from_pretrained builds the backbone through the
    BasicSR registry importable here (as constyle convert records it for a fork's own arch)."""
    pytest.importorskip("basicsr")
    options = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 1],
               "dec_blk_nums": [1, 1, 1, 1]}
    torch.manual_seed(0)
    net = as_trained(wrap_unet(NAFNet(**options)))
    net.save_pretrained(tmp_path / "run", backbone_config={"type": "NAFNet", "registry": "basicsr", **options})
    record = json.loads((tmp_path / "run" / "config.json").read_text())["backbone"]
    assert record["registry"] == "basicsr" and record["type"] == "NAFNet" and record["kwargs"] == options
    loaded = ConStyleUNet.from_pretrained(tmp_path / "run")
    assert type(loaded.backbone).__name__ == "NAFNet"
    x = torch.rand(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
