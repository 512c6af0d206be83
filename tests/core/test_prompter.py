"""ConStyleV2 against SPEC section 1, and its checkpoint loading."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from constyle_plugin import CheckpointError, ConStyleV2, Prompt
from constyle_plugin.core.prompter import read_state_dict

from payloads import RunsCodeOnLoad

# SPEC section 1, written out: name -> shape of the released query encoder (without "encoder_q.").
SPEC_SHAPES = {
    "stage1.0.0.weight": (16, 3, 3, 3), "stage1.1.0.weight": (16, 16, 3, 3), "stage1.2.0.weight": (32, 16, 3, 3),
    "stage2.0.0.weight": (32, 32, 3, 3), "stage2.1.0.weight": (64, 32, 3, 3),
    "stage3.0.0.weight": (128, 64, 3, 3), "stage3.1.0.weight": (128, 128, 3, 3),
    "stage4.0.0.weight": (256, 128, 3, 3), "stage4.1.0.weight": (256, 256, 3, 3),
    "mlp1.0.weight": (128, 256), "mlp1.0.bias": (128,),
    "mlp1.1.weight": (128,), "mlp1.1.bias": (128,), "mlp1.1.running_mean": (128,), "mlp1.1.running_var": (128,),
    "mlp1.1.num_batches_tracked": (),
    "mlp2.0.weight": (128, 128), "mlp2.0.bias": (128,),
    "mlp2.1.weight": (128,), "mlp2.1.bias": (128,), "mlp2.1.running_mean": (128,), "mlp2.1.running_var": (128,),
    "mlp2.1.num_batches_tracked": (),
    "classifier.0.weight": (512, 256), "classifier.0.bias": (512,),
    "classifier.3.weight": (1000, 512), "classifier.3.bias": (1000,),
}
STRIDES = {"stage1.2.0.weight": 2, "stage2.1.0.weight": 2, "stage3.1.0.weight": 2, "stage4.1.0.weight": 2}


def randomised_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in SPEC_SHAPES.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g) * 0.1
    return state


def reference_forward(state: dict, x: torch.Tensor):
    """The SPEC's network as plain functional ops, independent of the module code."""
    feats = []
    y = x
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        for name in [n for n in SPEC_SHAPES if n.startswith(stage + ".")]:
            y = F.leaky_relu(F.conv2d(y, state[name], stride=STRIDES.get(name, 1), padding=1), 0.1)
        feats.append(y)
    v = feats[-1].mean(dim=(2, 3))

    def mlp(prefix, h):
        h = F.linear(h, state[prefix + ".0.weight"], state[prefix + ".0.bias"])
        h = F.batch_norm(h, state[prefix + ".1.running_mean"], state[prefix + ".1.running_var"],
                         state[prefix + ".1.weight"], state[prefix + ".1.bias"], training=False, eps=1e-5)
        return F.gelu(h)

    z2 = mlp("mlp2", mlp("mlp1", v))
    logits = F.linear(F.relu(F.linear(v, state["classifier.0.weight"], state["classifier.0.bias"])),
                      state["classifier.3.weight"], state["classifier.3.bias"])
    return z2, feats[:3], logits


def test_parameter_count_and_key_names_match_spec():
    model = ConStyleV2()
    assert sum(p.numel() for p in model.parameters()) == 1_835_416
    no_head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
    assert no_head == 1_190_832  # "1.19 M parameters without the classifier"
    state = model.state_dict()
    assert list(state) == list(SPEC_SHAPES)
    assert {k: tuple(v.shape) for k, v in state.items()} == SPEC_SHAPES


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (33, 17)])
def test_forward_matches_spec_numerically(size):
    state = randomised_state(seed=1)
    model = ConStyleV2()
    model.load_state_dict(state)
    model.eval()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        prompt = model(x)
        logits = model.classify(x)
        z2, feats, ref_logits = reference_forward(state, x)
    assert isinstance(prompt, Prompt)
    assert prompt.latent.shape == (2, 128)
    h, w = size
    for i, (f, c) in enumerate(zip(prompt.features, (32, 64, 128))):
        h, w = -(-h // 2), -(-w // 2)  # ceil(n / 2) per stride-2 conv
        assert f.shape == (2, c, h, w)
        torch.testing.assert_close(f, feats[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(prompt.latent, z2, atol=1e-5, rtol=0)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_frozen_prompter_stays_in_eval_mode():
    model = ConStyleV2().freeze()
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    # batch size 1 works in a frozen prompter (BatchNorm uses its running statistics)
    assert model(torch.rand(1, 3, 16, 16)).latent.shape == (1, 128)


def test_input_forms():
    model = ConStyleV2().freeze()
    rgb = torch.rand(2, 3, 20, 20)
    grey = rgb[:, :1]
    torch.testing.assert_close(model(grey).latent, model(grey.expand(-1, 3, -1, -1)).latent)
    rgba = torch.cat([rgb, torch.ones(2, 1, 20, 20)], 1)
    torch.testing.assert_close(model(rgba).latent, model(rgb).latent)
    as_uint8 = (rgb * 255).round().to(torch.uint8)
    torch.testing.assert_close(model(as_uint8).latent, model(as_uint8.float() / 255).latent)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="at least 2 x 2"):
        model(torch.rand(1, 3, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(1, 5, 8, 8))
    with pytest.raises(ValueError, match="B x C x H x W"):
        model(torch.rand(3, 8, 8))


def authors_checkpoint(path: Path, params_seed: int, ema_seed: int, queue_len: int = 65760) -> dict:
    """A file laid out as the authors' pretrained_ConStyle_v2.pth: BasicSR params/params_ema of the
    DataParallel-wrapped MoCo model."""
    def moco(seed):
        state = {}
        for name, value in randomised_state(seed).items():
            state[f"module.encoder_q.{name}"] = value
            state[f"module.encoder_k.{name}"] = value + 1
        state["module.queue"] = torch.randn(128, queue_len)
        state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        return state

    torch.save({"params": moco(params_seed), "params_ema": moco(ema_seed)}, path)
    return randomised_state(ema_seed)


def test_loads_authors_layout_preferring_ema(tmp_path):
    path = tmp_path / "pretrained_ConStyle_v2.pth"
    expected = authors_checkpoint(path, params_seed=3, ema_seed=4)
    model = ConStyleV2.from_pretrained(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    only_params = tmp_path / "params_only.pth"
    torch.save({"params": {f"encoder_q.{k}": v for k, v in randomised_state(9).items()}}, only_params)
    assert torch.equal(ConStyleV2.from_pretrained(only_params).stage1[0][0].weight,
                       randomised_state(9)["stage1.0.0.weight"])


def test_export_round_trips_as_safetensors_and_pth(tmp_path):
    model = ConStyleV2()
    model.load_state_dict(randomised_state(5))
    for name in ("prompter.safetensors", "prompter.pth"):
        path = model.save_pretrained(tmp_path / name)
        loaded = ConStyleV2.from_pretrained(path)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "prompter.safetensors"), "pt") as f:
        assert f.metadata()["format"].startswith("constyle_plugin.ConStyleV2")
    with pytest.raises(ValueError, match="safetensors or .pth"):
        model.save_pretrained(tmp_path / "prompter.bin")


def test_bare_and_wrapped_state_dicts_load(tmp_path):
    state = randomised_state(6)
    torch.save(state, tmp_path / "bare.pth")
    torch.save({f"prompter.{k}": v for k, v in state.items()} | {"backbone.w": torch.ones(1)}, tmp_path / "net.pth")
    for name in ("bare.pth", "net.pth"):
        assert torch.equal(ConStyleV2.from_pretrained(tmp_path / name).mlp2[0].bias, state["mlp2.0.bias"])


def test_bad_files_fail_with_the_file_named(tmp_path):
    good = tmp_path / "good.pth"
    authors_checkpoint(good, 1, 2, queue_len=64)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    bad_safetensors = tmp_path / "broken.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    for path in (truncated, empty, text, bad_safetensors):
        with pytest.raises(CheckpointError, match=path.name):
            ConStyleV2.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ConStyleV2.from_pretrained(tmp_path / "missing.pth")


def test_wrong_shapes_and_missing_keys_name_the_keys(tmp_path):
    state = randomised_state(1)
    state["stage2.1.0.weight"] = torch.zeros(64, 16, 3, 3)
    torch.save(state, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError, match=r"shapes.pth.*stage2\.1\.0\.weight \(64, 16, 3, 3\)"):
        ConStyleV2.from_pretrained(tmp_path / "shapes.pth")
    state = randomised_state(1)
    del state["mlp1.0.bias"], state["classifier.3.weight"]
    torch.save(state, tmp_path / "missing_keys.pth")
    with pytest.raises(CheckpointError, match=r"missing_keys.pth.*2 missing key\(s\).*mlp1\.0\.bias"):
        ConStyleV2.from_pretrained(tmp_path / "missing_keys.pth")


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"params": {"encoder_q.stage1.0.0.weight": torch.zeros(1)}, "payload": RunsCodeOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth.*refused.*Nothing in it was run"):
        ConStyleV2.from_pretrained(path)
    assert not marker.exists()
    plain = tmp_path / "evil_plain.pkl"
    plain.write_bytes(pickle.dumps(RunsCodeOnLoad(marker)))
    with pytest.raises(CheckpointError, match="evil_plain.pkl"):
        read_state_dict(plain)
    assert not marker.exists()


def test_pretext_head_of_another_size_loads(tmp_path):
    model = ConStyleV2(num_classes=20)
    path = model.save_pretrained(tmp_path / "small_head.safetensors")
    loaded = ConStyleV2.from_pretrained(path)
    assert loaded.classify(torch.rand(2, 3, 16, 16)).shape == (2, 20)
    assert torch.equal(loaded.classifier[3].weight, model.classifier[3].weight)


def test_export_has_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = ConStyleV2().save_pretrained(tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_packaged_prompter_matches_its_card():
    import hashlib
    import json

    from constyle_plugin.core.prompter import PACKAGED_WEIGHTS, default_prompter_path

    assert default_prompter_path() == PACKAGED_WEIGHTS
    card = json.loads(PACKAGED_WEIGHTS.with_suffix(".json").read_text())
    assert hashlib.sha256(PACKAGED_WEIGHTS.read_bytes()).hexdigest() == card["sha256"]
    for key in ("data", "iterations", "losses_at_end", "wall_time", "command"):
        assert card[key], key
    prompter = ConStyleV2.from_pretrained()  # safe loading (safetensors), frozen
    assert prompter.frozen and not prompter.training
    assert prompter(torch.rand(2, 3, 32, 32)).latent.shape == (2, 128)


def test_packaged_prompter_gives_different_photos_different_prompts():
    """A collapsed prompter (one prompt for every image) is useless however well it loads."""
    from constyle_plugin.training.pretrain import COLLAPSE_SPREAD, latent_spread
    from constyle_plugin.data.samples import sample_photos

    crops = [torch.from_numpy(img[:96, :96].copy()).permute(2, 0, 1).float() / 255
             for _, img in sample_photos(["astronaut", "coffee", "chelsea", "rocket", "brick", "moon",
                                          "retina", "grace_hopper"])]
    x = torch.stack(crops)
    with torch.no_grad():
        packaged = ConStyleV2.from_pretrained()(x).latent
        torch.manual_seed(0)
        untrained = ConStyleV2().eval()(x).latent
    assert latent_spread(untrained) < COLLAPSE_SPREAD  # the measure can fail: a random prompter does
    assert latent_spread(packaged) > COLLAPSE_SPREAD
