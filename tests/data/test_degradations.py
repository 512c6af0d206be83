"""Degradations: the Real-ESRGAN batch pipeline, weather, and the all-in-one set."""
import random

import cv2
import numpy as np
import pytest
import torch

from constyle_plugin.data import degradations as D
from constyle_plugin.data.samples import sample_photos


def _photo(name="astronaut", size=96, top=100, left=150):
    img = dict(sample_photos([name]))[name]
    return img[top:top + size, left:left + size].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def photo():
    return _photo()


def _psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(1.0 / mse)


def _hf_energy(img):
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return float(np.mean(cv2.Laplacian(gray, cv2.CV_32F) ** 2))


def _dark_channel(img, patch=15):
    return cv2.erode(img.min(axis=2), np.ones((patch, patch), np.uint8))


# ---------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("radius,angle,one_sided", [(5, 0, False), (7.5, 33, False),
                                                    (10, -100, True), (3, 90, True)])
def test_line_kernel_sums_to_one(radius, angle, one_sided):
    k = D.line_kernel(radius, angle, sigma=None if not one_sided else 3.0, one_sided=one_sided)
    assert k.shape == (2 * int(np.ceil(radius)) + 1,) * 2
    assert k.dtype == np.float32 and (k >= 0).all()
    assert k.sum() == pytest.approx(1.0, abs=1e-5)


def test_horizontal_line_kernel_blurs_vertical_edge_only():
    k = D.line_kernel(6, 0)
    vertical_edge = np.zeros((40, 40, 3), np.float32)
    vertical_edge[:, 20:] = 1.0  # intensity changes along x
    horizontal_edge = np.ascontiguousarray(vertical_edge.transpose(1, 0, 2))  # changes along y
    blur = lambda im: cv2.filter2D(im, -1, k, borderType=cv2.BORDER_REFLECT_101)  # noqa: E731
    out_v, out_h = blur(vertical_edge), blur(horizontal_edge)
    assert np.abs(out_v - vertical_edge).max() > 0.3  # the edge is smeared across columns
    np.testing.assert_allclose(out_h, horizontal_edge, atol=1e-6)  # rows untouched
    # and a vertical kernel does the opposite
    kv = D.line_kernel(6, 90)
    np.testing.assert_allclose(cv2.filter2D(vertical_edge, -1, kv), vertical_edge, atol=1e-6)


def test_one_sided_line_kernel_is_a_trail():
    k = D.line_kernel(8, 0, sigma=3, one_sided=True)
    c = k.shape[0] // 2
    assert k[:, :c].sum() == 0  # nothing behind the centre
    row = k[c]
    assert row[c] > row[c + 4] > row[c + 8] > 0  # Gaussian fall-off along the trail


def test_disk_kernel():
    k = D.disk_kernel(4.5)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1], atol=1e-7)
    assert k[0, 0] == 0 and k[5, 5] > 0


# ---------------------------------------------------------------------------- weather

def test_contrast_matches_formula_by_hand():
    img = np.zeros((1, 2, 3), np.float32)
    img[0, 0] = (0.2, 0.0, 1.0)
    img[0, 1] = (0.6, 0.5, 0.0)
    # severity 1: c = 0.4; per-channel means 0.4, 0.25, 0.5
    expected = np.array([[[0.4 - 0.2 * 0.4, 0.25 - 0.25 * 0.4, 0.5 + 0.5 * 0.4],
                          [0.4 + 0.2 * 0.4, 0.25 + 0.25 * 0.4, 0.5 - 0.5 * 0.4]]], np.float32)
    np.testing.assert_allclose(D.contrast(img, 1), expected, atol=1e-6)
    # severity 5: c = 0.05
    out5 = D.contrast(img, 5)
    assert out5[0, 0, 0] == pytest.approx(0.4 - 0.2 * 0.05, abs=1e-6)


def test_contrast_on_photo_and_bad_severity(photo):
    c = 0.3
    mean = photo.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(D.contrast(photo, 2), np.clip((photo - mean) * c + mean, 0, 1),
                               atol=1e-6)
    for bad in (0, 6, 1.5):
        with pytest.raises(ValueError, match="severity"):
            D.contrast(photo, bad)


def test_snow_adds_bright_streaks(photo):
    out = D.snow(photo, 1, np.random.default_rng(0))
    assert out.shape == photo.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert out.mean() > photo.mean() + 0.05  # whitened and snowed
    # reproducible with the same generator state, different with another
    np.testing.assert_array_equal(out, D.snow(photo, 1, np.random.default_rng(0)))
    assert not np.array_equal(out, D.snow(photo, 1, np.random.default_rng(1)))
    # higher severity (denser snow layer, lower threshold) covers more of the picture
    heavy = D.snow(photo, 5, np.random.default_rng(0))
    assert (heavy > 0.95).mean() > (out > 0.95).mean()


def test_weather_is_contrast_then_two_snows(photo):
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    expected = D.snow(D.snow(D.contrast(photo, 1), 1, rng_b), 2, rng_b)
    np.testing.assert_array_equal(D.weather(photo, rng_a), expected)


# ---------------------------------------------------------------------------- all-in-one

def test_all_in_one_names_are_stable():
    assert list(D.ALL_IN_ONE) == ["noise", "jpeg", "motion_blur", "defocus_blur", "haze", "rain",
                                  "snow", "low_light"]


@pytest.mark.parametrize("name", list(D.ALL_IN_ONE))
def test_all_in_one_shape_range_determinism(name, photo):
    img = np.ascontiguousarray(photo[:40, :56])  # non-square on purpose
    fn = D.ALL_IN_ONE[name]
    out = fn(img, np.random.default_rng(7))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img).mean() > 1e-3, f"{name} left the image unchanged"
    np.testing.assert_array_equal(out, fn(img, np.random.default_rng(7)))
    with pytest.raises(ValueError, match="H x W x 3"):
        fn(img[..., 0], np.random.default_rng(0))


@pytest.mark.parametrize("name", list(D.ALL_IN_ONE))
def test_every_all_in_one_type_degrades_every_photo_at_every_seed(name):
    """Each type really degrades: on four photos (flat and textured 64 x 64 crops) and at each of eight
    seeded draws of its random parameters, the output differs from the input (mean |out - in| > 1e-3 on
    [0, 1]). Seeded, so every run checks the same draws and no type can pass by luck."""
    fn = D.ALL_IN_ONE[name]
    for photo_name, full in sample_photos(["astronaut", "coffee", "brick", "chelsea"]):
        img = np.ascontiguousarray(full[:64, :64]).astype(np.float32) / 255
        for seed in range(8):
            out = fn(img, np.random.default_rng(seed))
            change = float(np.abs(out - img).mean())
            assert change > 1e-3, f"{name} left {photo_name} (seed {seed}) almost unchanged: {change:.2e}"


def test_gaussian_noise_has_the_requested_sigma():
    img = np.full((256, 256, 3), 0.5, np.float32)  # mid-grey: clipping at 0/1 is negligible
    for sigma in (15, 25, 50):
        residual = D.gaussian_noise(img, np.random.default_rng(sigma), sigma=sigma) - img
        assert residual.std() == pytest.approx(sigma / 255, rel=0.03)
        assert abs(residual.mean()) < 0.002
    drawn = [(D.gaussian_noise(img, np.random.default_rng(s)) - img).std() * 255
             for s in range(20)]
    assert 9 < min(drawn) and max(drawn) < 51 and max(drawn) - min(drawn) > 10


def test_jpeg_lowers_psnr_and_is_deterministic(photo):
    q10 = D.jpeg(photo, np.random.default_rng(0), quality=10)
    q50 = D.jpeg(photo, np.random.default_rng(1), quality=50)
    assert _psnr(q10, photo) < _psnr(q50, photo) < 40
    np.testing.assert_array_equal(q10, D.jpeg(photo, np.random.default_rng(99), quality=10))
    # random quality stays in 10..50: never better than quality 50, never worse than 10
    for s in range(5):
        p = _psnr(D.jpeg(photo, np.random.default_rng(s)), photo)
        assert _psnr(q10, photo) - 0.01 <= p <= _psnr(q50, photo) + 0.01


def test_blurs_lower_high_frequency_energy():
    img = _photo("grass", 96, 0, 0)
    rng = np.random.default_rng(0)
    assert _hf_energy(D.motion_blur(img, rng)) < 0.5 * _hf_energy(img)
    assert _hf_energy(D.defocus_blur(img, rng)) < 0.5 * _hf_energy(img)
    # a longer blur removes more
    short = D.motion_blur(img, rng, radius=2, angle=30)
    long = D.motion_blur(img, rng, radius=10, angle=30)
    assert _hf_energy(long) < _hf_energy(short)


def test_haze_raises_dark_channel(photo):
    hazy = D.haze(photo, np.random.default_rng(0))
    assert _dark_channel(hazy).mean() > _dark_channel(photo).mean() + 0.1
    # the model itself: with a fixed beta and airlight the output lies between J and A
    h = D.haze(photo, np.random.default_rng(0), beta=1.0, airlight=0.9)
    lo, hi = np.minimum(photo, 0.9), np.maximum(photo, 0.9)
    assert (h >= lo - 1e-5).all() and (h <= hi + 1e-5).all()


def test_rain_adds_streaks_along_their_direction(photo):
    out = D.rain(photo, np.random.default_rng(0), density=0.01, length=10, angle=90)
    streaks = out - photo
    assert (streaks >= -1e-6).all() and streaks.max() > 0.3
    s = streaks.mean(axis=2)
    # vertical streaks: neighbours along a column agree, neighbours along a row do not
    assert np.abs(np.diff(s, axis=0)).mean() < 0.5 * np.abs(np.diff(s, axis=1)).mean()


def test_low_light_darkens(photo):
    out = D.low_light(photo, np.random.default_rng(0))
    assert out.mean() < 0.6 * photo.mean()
    fixed = D.low_light(photo, np.random.default_rng(0), gamma=2.0, scale=0.3, noise=0.0)
    np.testing.assert_allclose(fixed, 0.3 * photo ** 2, atol=1e-6)


# ---------------------------------------------------------------------------- Real-ESRGAN

def test_realesrgan_batch_shape_range_and_effect():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 0.5 + 0.25
    deg = D.RealESRGANDegradation(seed=0)
    y = deg(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().mean() > 0.01
    assert torch.equal(torch.round(y * 255) / 255, y)  # quantised to 8 bits, as Real-ESRGAN


def test_realesrgan_photo_batch_is_degraded():
    img = _photo("astronaut", 64)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    y = D.RealESRGANDegradation(seed=1)(x)
    assert not torch.equal(y[0], y[1])  # per-sample kernels / noise / quality
    psnr = -10 * torch.log10(((y - x) ** 2).mean(dim=(1, 2, 3)))
    assert (psnr < 35).all()


def test_realesrgan_seed_is_reproducible_and_restores_global_state():
    x = torch.rand(2, 3, 48, 48)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    torch_before = torch.get_rng_state()
    a = D.RealESRGANDegradation(seed=5)
    b = D.RealESRGANDegradation(seed=5)
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    assert not torch.equal(a(x), ya)  # the next call draws anew
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    assert torch.equal(torch.get_rng_state(), torch_before)


def test_realesrgan_unseeded_follows_global_seeds():
    x = torch.rand(1, 3, 40, 40)
    deg = D.RealESRGANDegradation()
    outs = []
    for _ in range(2):
        torch.manual_seed(3), np.random.seed(3), random.seed(3)
        outs.append(deg(x))
    assert torch.equal(outs[0], outs[1])


def test_realesrgan_tiny_and_odd_images():
    deg = D.RealESRGANDegradation(seed=2)
    for shape in [(3, 3, 16, 16), (1, 3, 23, 37)]:
        for _ in range(3):
            y = deg(torch.rand(*shape))
            assert y.shape == shape and 0 <= y.min() and y.max() <= 1


def test_realesrgan_kernels_and_options():
    deg = D.RealESRGANDegradation(seed=0, final_sinc_prob=0.0)
    k = deg.sample_kernels(4)
    assert k["kernel1"].shape == (4, 21, 21) and k["kernel2"].shape == (4, 21, 21)
    torch.testing.assert_close(k["kernel1"].sum(dim=(1, 2)), torch.ones(4), atol=1e-4, rtol=0)
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    assert all(torch.equal(s, pulse) for s in k["sinc_kernel"])  # final_sinc_prob 0: identity
    small = D.RealESRGANDegradation.from_opt({"blur_kernel_size": 11, "blur_kernel_size2": 9})
    assert small.sample_kernels(2)["kernel2"].shape == (2, 9, 9)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="resize_prb"):
        D.RealESRGANDegradation.from_opt({"resize_prb": [0.2, 0.7, 0.1]})
    with pytest.raises(ValueError, match="blur_kernel_size"):
        D.RealESRGANDegradation(blur_kernel_size=8)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        deg(torch.rand(3, 32, 32))
    assert not any(p.requires_grad for p in deg.parameters())


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_realesrgan_external_kernels_are_used(implementation):
    x = torch.rand(2, 3, 32, 32)
    deg = D.RealESRGANDegradation(seed=0)
    kernels = deg.sample_kernels(2)
    make = lambda: D.RealESRGANDegradation(seed=9, implementation=implementation)  # noqa: E731
    a = make()(x, kernels)
    b = make()(x, kernels)
    assert torch.equal(a, b)
    # the kernels passed in are the ones the pipeline filters with, not kernels it draws itself
    seen = []
    spy = make()
    if implementation == "reference":
        real = spy._degrade
        spy._degrade = lambda x_, k1, k2, ks: seen.append((k1, k2, ks)) or real(x_, k1, k2, ks)
    else:
        real = spy._degrade_fast
        spy._degrade_fast = lambda x_, p: seen.append(tuple(p[k] for k in ("kernel1", "kernel2", "sinc_kernel"))) or real(x_, p)
    assert torch.equal(spy(x, kernels), a)
    assert all(torch.equal(got, kernels[name]) for got, name in zip(seen[0], ("kernel1", "kernel2", "sinc_kernel")))
    # and they change the result: the same seed (same noise, resizes, JPEG) with a 21 x 21 box blur
    # instead is blurrier: adjacent pixels differ less
    box = {name: torch.full_like(k, 1 / k[0].numel()) for name, k in kernels.items()}
    blurred = make()(x, box)
    assert not torch.equal(blurred, a)
    tv = lambda y: (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., 1:] - y[..., :-1]).abs().mean()  # noqa: E731
    assert tv(blurred) < tv(a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_realesrgan_on_cuda():
    x = torch.rand(2, 3, 64, 64, device="cuda")
    y = D.RealESRGANDegradation(seed=0)(x)
    assert y.device == x.device and y.shape == x.shape and 0 <= y.min() and y.max() <= 1
