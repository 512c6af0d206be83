"""The degradation head's sidecar (``<stem>.head.safetensors``): written beside a prompter file without
touching it, read back only for the prompter weights it was trained with, absent for the authors' layout."""
from __future__ import annotations

import pytest
import torch

from constyle_plugin import ConStyleV2
from constyle_plugin.core.degradation_head import DegradationHead, head_path, load_degradation_head, save_degradation_head
from constyle_plugin.errors import CheckpointError, ConStyleError

CLASSES = ["noise", "jpeg", "rain"]


def _head(seed: int = 0) -> DegradationHead:
    torch.manual_seed(seed)
    head = DegradationHead(CLASSES)
    torch.nn.init.normal_(head.weight)
    torch.nn.init.normal_(head.bias)
    return head


def _prompter(seed: int) -> ConStyleV2:
    torch.manual_seed(seed)
    return ConStyleV2().freeze()


def test_the_sidecar_leaves_the_prompter_file_and_from_pretrained_as_they_were(tmp_path):
    prompter = _prompter(1)
    path = prompter.save_pretrained(tmp_path / "p.safetensors")
    before = path.read_bytes()
    x = torch.rand(2, 3, 40, 56)
    alone = ConStyleV2.from_pretrained(path)
    sidecar = save_degradation_head(_head(), path, prompter)
    assert sidecar == tmp_path / "p.head.safetensors" and sidecar.is_file()
    assert path.read_bytes() == before  # the prompter file is not rewritten
    beside = ConStyleV2.from_pretrained(path)
    assert beside.state_dict().keys() == alone.state_dict().keys() == ConStyleV2().state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(), beside.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(alone(x).latent, beside(x).latent)


def test_a_head_read_back_gives_the_same_logits_and_names(tmp_path):
    prompter = _prompter(1)
    path = prompter.save_pretrained(tmp_path / "p.pth")  # any prompter file: .pth too
    head = _head()
    save_degradation_head(head, path, prompter)
    assert head_path(path).name == "p.head.safetensors"
    loaded = load_degradation_head(path)
    z2 = torch.randn(5, 128)
    assert loaded.classes == tuple(CLASSES)
    assert torch.equal(loaded(z2), head(z2).detach())
    probs = loaded.probabilities(z2)
    assert torch.allclose(probs.sum(1), torch.ones(5)) and torch.equal(probs.argmax(1), head(z2).argmax(1))


def test_no_sidecar_no_head(tmp_path):
    prompter = _prompter(1)
    assert load_degradation_head(prompter.save_pretrained(tmp_path / "p.safetensors")) is None
    # the authors' layout: a MoCo checkpoint without degradation_head.*
    state = {f"encoder_q.{k}": v for k, v in prompter.state_dict().items()}
    state.update({f"encoder_k.{k}": v for k, v in prompter.state_dict().items()})
    state.update(queue=torch.randn(128, 8), queue_ptr=torch.zeros(1, dtype=torch.long))
    torch.save({"params_ema": state}, tmp_path / "authors.pth")
    assert load_degradation_head(tmp_path / "authors.pth") is None


def test_a_head_of_other_prompter_weights_is_refused_naming_both_files(tmp_path):
    path = _prompter(1).save_pretrained(tmp_path / "p.safetensors")
    save_degradation_head(_head(), path, _prompter(2))
    with pytest.raises(CheckpointError, match=r"p\.head\.safetensors: this head was trained with other prompter "
                                              r"weights than .*p\.safetensors"):
        load_degradation_head(path)


def test_a_damaged_or_foreign_sidecar_is_named(tmp_path):
    prompter = _prompter(1)
    path = prompter.save_pretrained(tmp_path / "p.safetensors")
    head_path(path).write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match=r"p\.head\.safetensors: not a readable safetensors file"):
        load_degradation_head(path)
    prompter.save_pretrained(head_path(path))  # a prompter where the head should be
    with pytest.raises(CheckpointError, match=r"p\.head\.safetensors: not a degradation head file"):
        load_degradation_head(path)


def test_head_names_must_be_distinct():
    with pytest.raises(ConStyleError, match="distinct class names"):
        DegradationHead(["noise", "noise"])


def test_the_packaged_prompter_is_the_default(tmp_path, monkeypatch):
    import constyle_plugin.core.prompter as prompter_module

    prompter = _prompter(3)
    path = prompter.save_pretrained(tmp_path / "constyle_v2_prompter.safetensors")
    monkeypatch.setattr(prompter_module, "PACKAGED_WEIGHTS", path)
    assert load_degradation_head() is None
    save_degradation_head(_head(4), path, prompter)
    assert torch.equal(load_degradation_head().weight, _head(4).weight.detach())
