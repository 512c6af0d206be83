"""What loading errors say: a directory, random bytes, and a key mismatch between a checkpoint's layout
and the options it is read with."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from constyle_plugin import ConStyleV2
from constyle_plugin.tools.restore import load_network
from constyle_plugin.core.prompter import CheckpointError


def test_from_pretrained_on_a_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        ConStyleV2.from_pretrained(tmp_path)


def test_random_bytes_are_not_reported_as_python_objects(tmp_path):
    rng = np.random.default_rng(0)
    for name, head in (("random.pth", b""), ("pickle_opcode.pth", b"\x80")):
        path = tmp_path / name
        path.write_bytes(head + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError) as info:
            ConStyleV2.from_pretrained(path)
        message = str(info.value)
        assert name in message and "Python objects" not in message
        assert "not a PyTorch or safetensors checkpoint" in message or "damaged" in message


def test_key_mismatch_lists_the_first_keys_and_counts(basicsr_experiment, tmp_path):
    # an MMEngine-style dict (the restorer's weights under 'net.') given with a BasicSR options file
    params = torch.load(basicsr_experiment / "models" / "net_g_latest.pth", weights_only=True)["params"]
    checkpoint = tmp_path / "mmengine_style.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in params.items()}}, checkpoint)
    with pytest.raises(CheckpointError) as info:
        load_network(checkpoint, config=basicsr_experiment / "Tiny.yml")
    message = str(info.value)
    assert len(message) < 800, message
    assert "missing key(s), first:" in message and "unexpected key(s), first:" in message
    assert "MMEngine" in message
