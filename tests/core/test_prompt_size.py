"""prompt_size: the prompter sees a downscaled copy of the image; identity at wrap time, the resized input
really reaches the prompter and the output, save / load and ONNX carry the setting, bad values are refused
naming the option. use_prompt / crop_prompt: one prompt for several calls, a tile's window of an image's prompt."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from constyle_plugin import ConStyleError, ConStyleUNet, ConStyleV2, wrap_unet
from constyle_plugin.archs import ConvUNet, NAFNet
from constyle_plugin.core.builder import wrap_from_options
from constyle_plugin.errors import OptionError, PromptError
from constyle_plugin.core.prompter import Prompt
from constyle_plugin.core.promptmaps import crop_prompt, prompter_input_size

from unets import ModuleListUNet, live_adapters


def _nafnet():
    torch.manual_seed(0)
    return NAFNet(width=8, enc_blk_nums=[1, 1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1])


def _prompter():
    torch.manual_seed(1)
    return ConStyleV2().freeze()


def _prompter_inputs(net):
    seen = []
    net.prompter.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    return seen


def test_identity_at_wrap_time_with_a_prompt_size():
    backbone = _nafnet()
    net = wrap_unet(backbone, prompter=_prompter(), prompt_size=32).eval()
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(net(x), backbone(x))


@pytest.mark.parametrize("size, prompt_size, expected", [
    ((96, 64), 32, (32, 21)),   # 64 * 32 / 96 = 21.3
    ((64, 96), 48, (32, 48)),
    ((90, 60), 32, (32, 21)),   # 21.33
    ((33, 96), 64, (22, 64)),   # 33 * 64 / 96 = 22.0
    ((24, 20), 32, (24, 20)),   # smaller than prompt_size: never upscaled
    ((96, 64), None, (96, 64)),
])
def test_the_prompter_sees_the_resized_image(size, prompt_size, expected):
    net = wrap_unet(_nafnet(), prompter=_prompter(), prompt_size=prompt_size).eval()
    seen = _prompter_inputs(net)
    with torch.no_grad():
        net(torch.rand(1, 3, *size))
    assert seen == [expected]
    assert prompter_input_size(*size, prompt_size) == expected


def test_the_resized_prompt_reaches_the_output():
    net = live_adapters(wrap_unet(_nafnet(), prompter=_prompter(), prompt_size=32)).eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        out = net(x)
        # by hand: PyTorch's antialiased bilinear downscale, the prompter, and that prompt given to the net
        small = F.interpolate(x, size=(32, 21), mode="bilinear", align_corners=False, antialias=True)
        with net.use_prompt(net.prompter(small)):
            by_hand = net(x)
        net.prompt_size = None
        full = net(x)
    assert torch.allclose(out, by_hand, atol=1e-6)
    assert (out - full).abs().max() > 1e-3  # the prompt size changes the output: the prompt is live


def test_prompt_size_in_repr_and_settable():
    net = wrap_unet(_nafnet(), prompter=_prompter())
    assert net.prompt_size is None and "prompt_size" not in repr(net)
    net.prompt_size = 256
    assert net.prompt_size == 256 and "prompt_size=256" in repr(net)


@pytest.mark.parametrize("bad", [8, 0, -64, 256.0, "256", True, [256]])
def test_bad_prompt_sizes_are_refused_naming_the_option(bad):
    with pytest.raises(OptionError, match=r"^prompt_size: ") as info:
        wrap_unet(_nafnet(), prompter=_prompter(), prompt_size=bad)
    assert isinstance(info.value, ConStyleError) and isinstance(info.value, ValueError)
    net = wrap_unet(_nafnet(), prompter=_prompter(), prompt_size=64)
    with pytest.raises(OptionError, match=r"^prompt_size: "):
        net.prompt_size = bad
    assert net.prompt_size == 64
    with pytest.raises(OptionError, match=r"^prompt_size: "):
        wrap_from_options(_nafnet(), prompt_size=bad)


def test_options_carry_the_prompt_size():
    net = wrap_from_options(_nafnet(), prompt_size=128)
    assert isinstance(net, ConStyleUNet) and net.prompt_size == 128


def test_save_and_load_carry_the_prompt_size(tmp_path):
    net = live_adapters(wrap_unet(_nafnet(), prompter=_prompter(), prompt_size=48)).eval()
    net.save_pretrained(tmp_path / "run", include_prompter=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prompt_size"] == 48
    loaded = ConStyleUNet.from_pretrained(tmp_path / "run", backbone=_nafnet())
    assert loaded.prompt_size == 48
    seen = _prompter_inputs(loaded)
    x = torch.rand(1, 3, 96, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert seen == [(48, 40)]


def test_a_bad_recorded_prompt_size_names_the_file(tmp_path):
    wrap_unet(_nafnet(), prompter=_prompter()).save_pretrained(tmp_path / "run", include_prompter=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["prompt_size"] = 4
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConStyleError, match=r"config\.json: prompt_size: must be at least 16"):
        ConStyleUNet.from_pretrained(tmp_path / "run", backbone=_nafnet())


def test_onnx_export_carries_the_prompt_size(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from constyle_plugin.tools.export import export_onnx, load_onnx

    torch.manual_seed(0)
    net = wrap_unet(ConvUNet(width=8, depth=3, blocks_per_level=1), prompter=_prompter(), prompt_size=32)
    net = live_adapters(net, scale=0.5).eval()
    path = export_onnx(net, tmp_path / "net.onnx")  # its own check: eager vs onnxruntime at 37x53, 71x46
    runner = load_onnx(path)
    meta = runner.session.get_modelmeta().custom_metadata_map
    assert meta["prompt_size"] == "32"
    with torch.no_grad():
        for size in [(96, 72), (40, 120), (24, 16)]:  # larger than prompt_size, one side only, smaller
            x = torch.rand(1, 3, *size)
            assert (runner(x) - net(x)).abs().max() < 1e-4, size
        x = torch.rand(1, 3, 96, 72)
        net.prompt_size = None
        assert (runner(x) - net(x)).abs().max() > 1e-3  # the graph resizes: not the full-resolution prompt


# ------------------------------------------------------------------------------------------ use_prompt
def test_use_prompt_replaces_the_prompter_and_is_undone_after():
    net = live_adapters(wrap_unet(_nafnet(), prompter=_prompter())).eval()
    seen = _prompter_inputs(net)
    x, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        prompt = net.compute_prompt(other)
        assert len(seen) == 1
        with net.use_prompt(prompt):
            given = net(x)
        assert len(seen) == 1  # the prompter did not run inside the block
        own = net(x)
        assert len(seen) == 2
        with net.use_prompt(prompt):
            assert torch.equal(net(x), given)
        with net.use_prompt(net.compute_prompt(x)):
            assert torch.allclose(net(x), own, atol=1e-6)
    assert (given - own).abs().max() > 1e-3


def test_use_prompt_refuses_a_prompt_of_another_batch_or_type():
    net = wrap_unet(_nafnet(), prompter=_prompter()).eval()
    with torch.no_grad():
        prompt = net.compute_prompt(torch.rand(2, 3, 32, 32))
        with net.use_prompt(prompt), pytest.raises(PromptError, match="batch of 2 but the input x has 1"):
            net(torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="expected a Prompt"):
        with net.use_prompt(torch.zeros(1, 128)):
            pass


def test_crop_prompt_is_the_window_of_the_maps_resized_to_the_whole_image():
    g = torch.Generator().manual_seed(0)
    maps = tuple(torch.rand(2, c, 40 // 2 ** k, 48 // 2 ** k, generator=g, dtype=torch.float64)
                 for k, c in ((0, 3), (1, 4), (2, 5)))  # f1, f2, f3 of a prompt computed on an 80 x 96 copy
    prompt = Prompt(torch.rand(2, 128, generator=g), maps)
    image = (320, 384)  # the image the prompt belongs to (downscaled 4x for the prompter)
    window = crop_prompt(prompt, image, (64, 96, 128, 160))
    assert window.latent is prompt.latent
    for k, (full, cut) in enumerate(zip(maps, window.features), start=1):
        stage = F.interpolate(full, size=(image[0] // 2 ** k, image[1] // 2 ** k), mode="bilinear",
                              align_corners=False)
        expected = stage[..., 64 // 2 ** k:(64 + 128) // 2 ** k, 96 // 2 ** k:(96 + 160) // 2 ** k]
        assert cut.shape == expected.shape
        assert torch.allclose(cut, expected, atol=1e-12)


def test_crop_prompt_continues_the_edge_past_the_image():
    maps = tuple(torch.arange(8.0).repeat(1, 1, 8, 1) for _ in range(3))  # 1 x 1 x 8 x 8, a ramp along x
    window = crop_prompt(Prompt(torch.zeros(1, 128), maps), (16, 16), (0, 8, 16, 16))  # half of it outside
    assert torch.equal(window.features[0][0, 0, 0, 4:], torch.full((4,), 7.0))
    assert window.features[0].shape[-2:] == (8, 8)


# ------------------------------------------------------------------------------------------ tiling
def _two_halves(h=128, w=160):
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, h, w), 0.6)  # plain "sky" on the left, noise on the right
    x[..., w // 2:] = torch.rand(1, 3, h, w - w // 2, generator=g)
    return x


@pytest.mark.parametrize("backbone", [lambda: ConvUNet(width=8, depth=3, blocks_per_level=1), ModuleListUNet])
@pytest.mark.parametrize("prompt_size", [None, 64])
def test_tiles_share_the_image_prompt_and_agree_with_the_whole_image(backbone, prompt_size):
    from constyle_plugin.tools.restore import tiled_forward

    torch.manual_seed(0)
    net = live_adapters(wrap_unet(backbone(), prompt_size=prompt_size), scale=0.5).eval()
    x = _two_halves()
    seen = _prompter_inputs(net)
    with torch.no_grad():
        whole = net(x)
        assert len(seen) == 1
        tiled = tiled_forward(net, x, tile=96, overlap=64, multiple=8)
        assert seen[1:] == [seen[0]]  # one prompter call for the four tiles, on the whole image
        bare = (tiled_forward(net.backbone, x, tile=96, overlap=64, multiple=8) - net.backbone(x)).abs().max()
        each_alone = tiled_forward(lambda tile: net(tile), x, tile=96, overlap=64, multiple=8)
    assert bare < 1e-5  # this backbone tiles exactly: what remains below is the prompt's doing
    assert (tiled - whole).abs().max() < 1e-3
    assert (each_alone - whole).abs().max() > 10 * (tiled - whole).abs().max()


def test_tiled_restore_calls_the_prompter_once_per_image(tmp_path):
    import cv2
    import numpy as np

    from constyle_plugin.tools.restore import find_images, restore_images

    net = live_adapters(wrap_unet(ConvUNet(width=8, depth=3, blocks_per_level=1), prompt_size=64)).eval()
    seen = _prompter_inputs(net)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), rng.integers(0, 255, (150, 200, 3), dtype=np.uint8))
    written = restore_images(net, find_images(tmp_path), tmp_path / "out", tile=64, overlap=16,
                             show_progress=False)
    assert len(written) == 2
    assert seen == [(48, 64), (48, 64)]  # once per image, on the whole image at prompt_size 64
