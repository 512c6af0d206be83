"""Stage 1 fast: the Real-ESRGAN degradation with its parameters drawn on the CPU (dataset workers)
and run batched on the device without host round-trips, against the reference (original) path.

Three kinds of checks:

* each fast component equals BasicSR's own function given the same random values (level counts,
  Poisson and Gaussian noise, DiffJPEG, USM sharpening) and a batch equals its samples run alone;
* the fast path reads nothing back from the device: it runs on PyTorch's ``meta`` device, where any
  ``.item()`` / ``bool()`` / ``torch.unique`` of a tensor raises (the reference path does raise
  there), and, on a CUDA machine, under ``torch.cuda.set_sync_debug_mode('error')``;
* seeded statistics of the old and the new path on real photos (scikit-image) agree: per stage
  (noise levels, grey noise, JPEG) and for the whole pipeline (PSNR vs clean, mean, contrast,
  high-frequency energy).
"""
import random

import numpy as np
import pytest
import torch
from scipy import stats

from constyle_plugin.data import realesrgan as D
from constyle_plugin.data.realesrgan import _bsr
from constyle_plugin.data.samples import sample_photos

torch.set_num_threads(1)

# Significance for the two-sample tests below. The runs are seeded, so each test is deterministic;
# for a correct implementation a KS p-value is a uniform draw, so 0.01 leaves a 1 % chance that a
# seed picked blindly would fail. The power checks show the same statistics do flag a real change.
ALPHA = 0.01


@pytest.fixture(scope="module")
def photo_crops():
    """Eight 64 x 64 crops (3 x 64 x 64 in [0, 1]) of four real photos."""
    crops = []
    for _, img in sample_photos(("astronaut", "coffee", "chelsea", "rocket")):
        img = img.astype(np.float32) / 255.0
        h, w = img.shape[:2]
        for top, left in ((0.2, 0.3), (0.5, 0.5)):
            y0, x0 = int((h - 64) * top), int((w - 64) * left)
            crops.append(torch.from_numpy(img[y0:y0 + 64, x0:x0 + 64].copy()).permute(2, 0, 1))
    return torch.stack(crops)


def _batch(crops, n, offset=0):
    return crops[[(offset + i) % len(crops) for i in range(n)]]


# ------------------------------------------------------------------------- parameters

def test_sample_params_shapes_ranges_and_collation():
    deg = D.RealESRGANDegradation()
    rng = np.random.default_rng(0)
    one = deg.sample_params(rng=rng)
    assert set(one) == set(D.PARAM_SAMPLE_KEYS + D.PARAM_BATCH_KEYS)
    assert one["kernel1"].shape == (21, 21) and one["sigma1"].shape == ()
    batch = torch.utils.data.default_collate([deg.sample_params(rng=rng) for _ in range(64)])
    assert batch["kernel2"].shape == (64, 21, 21) and batch["jpeg2"].shape == (64,)
    for key in D.PARAM_SAMPLE_KEYS[:3]:
        torch.testing.assert_close(batch[key].sum(dim=(1, 2)), torch.ones(64), atol=1e-4, rtol=0)
    assert ((batch["sigma1"] >= 1) & (batch["sigma1"] <= 30)).all()
    assert ((batch["sigma2"] >= 1) & (batch["sigma2"] <= 25)).all()
    assert ((batch["jpeg1"] >= 30) & (batch["jpeg1"] <= 95)).all()
    assert ((batch["scale1"] >= 0.15) & (batch["scale1"] <= 1.5)).all()
    assert set(batch["mode3"].tolist()) <= {0.0, 1.0, 2.0}
    assert set(batch["gray1"].tolist()) == {0.0, 1.0}


def test_sample_params_from_a_generator_is_reproducible_and_leaves_global_state():
    deg = D.RealESRGANDegradation()
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    a = deg.sample_params(4, rng=np.random.default_rng(7))
    b = deg.sample_params(4, rng=np.random.default_rng(7))
    c = deg.sample_params(4, rng=np.random.default_rng(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["kernel1"], c["kernel1"])
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before


def test_bad_params_are_named():
    deg = D.RealESRGANDegradation(seed=0)
    x = torch.rand(2, 3, 32, 32)
    p = deg.sample_params(2)
    with pytest.raises(ValueError, match=r"params\['sigma1'\].*leading batch dimension 2"):
        deg(x, {**p, "sigma1": p["sigma1"][:1]})
    with pytest.raises(KeyError, match="kernel2"):
        deg(x, {k: v for k, v in p.items() if k != "kernel2"})
    with pytest.raises(KeyError, match="sigma9"):
        deg(x, {**p, "sigma9": p["sigma1"]})
    with pytest.raises(ValueError, match="implementation"):
        D.RealESRGANDegradation(implementation="quick")


# ------------------------------------------------------------------------- components equal BasicSR's

def test_level_count_equals_torch_unique():
    torch.manual_seed(0)
    x = torch.cat([torch.rand(2, 3, 20, 24),
                   torch.randint(0, 7, (2, 3, 20, 24)) / 255.0,  # 7 levels
                   torch.randint(40, 140, (2, 3, 20, 24)) / 255.0])
    levels = torch.clamp((x * 255).round(), 0, 255)
    expected = [len(torch.unique(levels[i] / 255.0)) for i in range(len(x))]
    assert D._count_levels(levels).tolist() == expected


def test_poisson_noise_equals_basicsr(photo_crops):
    x = _batch(photo_crops, 4)
    scale = torch.tensor([0.05, 1.0, 2.0, 3.0])
    torch.manual_seed(1)
    ref = _bsr_poisson(x, scale)
    torch.manual_seed(1)
    assert torch.equal(D._poisson_noise(x, scale, None), ref)


def _bsr_poisson(x, scale):
    from basicsr.data.degradations import generate_poisson_noise_pt

    return generate_poisson_noise_pt(x, scale=scale, gray_noise=torch.zeros(len(x)))


def test_grey_poisson_and_gaussian_noise_are_grey_per_sample(photo_crops):
    x = _batch(photo_crops, 4)
    gray = torch.tensor([1.0, 0.0, 1.0, 0.0])
    for noise in (D._poisson_noise(x, torch.full((4,), 2.0), gray),
                  D._gaussian_noise(x, torch.full((4,), 20.0), gray)):
        same = ((noise[:, 0] == noise[:, 1]) & (noise[:, 1] == noise[:, 2])).float().mean(dim=(1, 2))
        assert (same[gray == 1] == 1).all() and (same[gray == 0] < 0.5).all()
    # one grey field per sample (BasicSR shares one field across the batch: the one departure)
    g = D._gaussian_noise(x, torch.full((4,), 20.0), torch.ones(4))
    assert abs(float(torch.corrcoef(g[:2, 0].reshape(2, -1))[0, 1])) < 0.1


def test_gaussian_noise_equals_basicsr(photo_crops):
    from basicsr.data.degradations import generate_gaussian_noise_pt

    x = _batch(photo_crops, 4)
    sigma = torch.tensor([1.0, 5.0, 17.0, 30.0])
    torch.manual_seed(2)
    ref = generate_gaussian_noise_pt(x, sigma, 0)
    torch.manual_seed(2)
    torch.testing.assert_close(D._gaussian_noise(x, sigma, None), ref, atol=1e-6, rtol=1e-5)


def test_jpeg_equals_diffjpeg_with_per_sample_qualities(photo_crops):
    deg = D.RealESRGANDegradation()
    x = _batch(photo_crops, 4)[..., :60, :52]  # not a multiple of 16: the padding path too
    quality = torch.tensor([30.0, 49.5, 50.0, 95.0])
    ref = deg.jpeger(x, quality=quality.clone())  # DiffJPEG rewrites the tensor it is given
    assert torch.equal(deg._jpeg_fast(x, quality), ref)


def test_separable_usm_matches_usmsharp(photo_crops):
    deg = D.RealESRGANDegradation()
    x = _batch(photo_crops, 4)
    ref = deg.usm(x)
    # Separable passes round differently (~1e-7); a pixel whose |residual| * 255 sits at the
    # threshold 10 can flip in the hard mask, which moves the soft mask by at most the 51 x 51
    # Gaussian's centre weight (~0.0025) times |sharp - img| <= 0.5: bounded well below 2e-3.
    torch.testing.assert_close(deg._usm_fast(x), ref, atol=2e-3, rtol=0)
    assert (deg._usm_fast(x) - ref).abs().mean() < 1e-6


def test_a_batch_equals_its_samples_run_alone(photo_crops):
    """Per-sample kernels, qualities and noise levels go to their own sample (noise switched off so
    the outputs are deterministic: Gaussian with sigma 0)."""
    deg = D.RealESRGANDegradation(seed=0)
    x = _batch(photo_crops, 5)
    p = deg.sample_params(5)
    for i in (1, 2):
        p[f"gaussian{i}"][:] = 1.0
        p[f"sigma{i}"][:] = 0.0
    p["second_blur"][:] = 1.0
    batch = deg(x, p)
    assert len({float(v) for v in p["jpeg1"]}) == 5  # the samples do differ
    for i in range(5):
        alone = {k: (v[i:i + 1] if k in D.PARAM_SAMPLE_KEYS else v[:1]) for k, v in p.items()}
        single = deg(x[i:i + 1], alone)
        # grouped vs single convolution round differently; the final 8-bit rounding can then move a
        # pixel by one level
        assert (single - batch[i:i + 1]).abs().max() <= 1 / 255 + 1e-6
        assert (single - batch[i:i + 1]).abs().mean() < 1e-3


def test_fast_path_seeded_and_deterministic(photo_crops):
    x = _batch(photo_crops, 3)
    a, b = D.RealESRGANDegradation(seed=4)(x), D.RealESRGANDegradation(seed=4)(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.round(a * 255) / 255, a)
    p = D.RealESRGANDegradation().sample_params(3, rng=np.random.default_rng(1))
    torch.manual_seed(0)
    c = D.RealESRGANDegradation()(x, p)
    torch.manual_seed(0)
    assert torch.equal(D.RealESRGANDegradation()(x, p), c)  # given params: only torch's noise draws


# ------------------------------------------------------------------------- no host round-trips

@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_fast_path_reads_nothing_back_from_the_device(noise):
    """On the meta device a tensor has no values: any read-back (``.item()``, ``bool(t)``,
    ``torch.unique``, ``.tolist()``) raises. The per-batch choices come from the CPU params."""
    g = 1.0 if noise == "gaussian" else 0.0
    x = torch.empty(4, 3, 48, 40, device="meta")
    for impl in ("fast", "reference"):
        deg = D.RealESRGANDegradation(seed=0, implementation=impl)
        p = deg.sample_params(4)
        p["gaussian1"][:] = g
        p["gaussian2"][:] = g
        if impl == "fast":
            out = deg(x, p)
            assert out.shape == x.shape and out.device.type == "meta"
        else:  # the original pipeline does read values back (DiffJPEG's loop, torch.unique)
            with pytest.raises(RuntimeError, match="meta"):
                deg(x, p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_on_cuda_makes_no_synchronisation():
    deg = D.RealESRGANDegradation(seed=0)
    p = deg.sample_params(8)
    x = torch.rand(8, 3, 96, 96, device="cuda")
    deg(x, p)  # first call: moves the constants (a synchronising copy)
    for g in (0.0, 1.0):
        p["gaussian1"][:] = g
        p["gaussian2"][:] = g
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = deg(x, p)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------- same statistics

def _ks(a, b):
    return stats.ks_2samp(np.asarray(a), np.asarray(b)).pvalue


def _mean_close(a, b, z=4.0):
    """|mean(a) - mean(b)| below z standard errors (z = 4: a 6e-5 two-sided false-alarm rate)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return abs(a.mean() - b.mean()) < z * se


def _noise_stats(x, y):
    """Per image: the noise level (std of y - x, on 0-255) and whether the noise is grey (equal in
    the channels nearly everywhere: clipping at 0 and 1 makes a few pixels differ)."""
    r = (y - x) * 255
    level = r.std(dim=(1, 2, 3))
    grey = ((r[:, 0] - r[:, 1]).abs() < 1e-3).float().mean(dim=(1, 2)) > 0.9
    return level.tolist(), grey.float().tolist()


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_noise_stage_statistics_match_the_reference(photo_crops, kind):
    """BasicSR's random noise function (the reference path's stage) vs the fast stage with its
    values from sample_params, 320 images each: the noise level distribution and grey fraction."""
    torch.manual_seed(0)
    n, reps = len(photo_crops), 40
    deg = D.RealESRGANDegradation()
    params = deg.sample_params(n * reps, rng=np.random.default_rng(0))

    def fast(sigma_scale=1.0):
        out = []
        for r in range(reps):
            sl = slice(r * n, (r + 1) * n)
            vals = {"sigma1": params["sigma1"][sl] * sigma_scale, "poisson1": params["poisson1"][sl] * sigma_scale,
                    "gray1": params["gray1"][sl]}
            out.append(_noise_stats(photo_crops, deg._noise_fast(photo_crops, kind == "gaussian", vals, 1, deg.first)))
        return [sum((o[i] for o in out), []) for i in (0, 1)]

    ref = [[], []]
    for _ in range(reps):
        if kind == "gaussian":
            y = _bsr.random_add_gaussian_noise_pt(photo_crops, sigma_range=(1, 30), clip=True, rounds=False,
                                                  gray_prob=0.4)
        else:
            y = _bsr.random_add_poisson_noise_pt(photo_crops, scale_range=(0.05, 3), gray_prob=0.4, clip=True,
                                                 rounds=False)
        level, grey = _noise_stats(photo_crops, y)
        ref[0] += level
        ref[1] += grey
    new = fast()
    assert _ks(ref[0], new[0]) > ALPHA and _mean_close(ref[0], new[0])
    assert _mean_close(ref[1], new[1])  # grey-noise fraction, about 0.4
    assert 0.3 < np.mean(new[1]) < 0.5
    # power: noise levels a quarter higher are flagged by the same statistics
    louder = fast(1.25)
    assert _ks(ref[0], louder[0]) < ALPHA and not _mean_close(ref[0], louder[0])


def test_jpeg_stage_statistics_match_the_reference(photo_crops):
    """DiffJPEG at qualities drawn as the reference path does (uniform_ on the device) vs at the
    qualities of sample_params: PSNR to the input, 320 images each."""
    deg = D.RealESRGANDegradation()
    torch.manual_seed(0)
    n, reps = len(photo_crops), 40
    params = deg.sample_params(n * reps, rng=np.random.default_rng(1))
    psnr = lambda y: (-10 * torch.log10(((y - photo_crops) ** 2).mean(dim=(1, 2, 3)))).tolist()  # noqa: E731
    ref, new, worse = [], [], []
    for r in range(reps):
        ref += psnr(deg._jpeg(photo_crops, deg.first))
        q = params["jpeg1"][r * n:(r + 1) * n]
        new += psnr(deg._jpeg_fast(photo_crops, q))
        worse += psnr(deg._jpeg_fast(photo_crops, q - 10))  # power: qualities 10 lower
    assert _ks(ref, new) > ALPHA and _mean_close(ref, new)
    assert _ks(ref, worse) < ALPHA


def _pipeline_stats(crops, deg, n):
    """Per image (batch of one, so every draw is independent and the KS test's assumption holds):
    PSNR to the clean crop, mean shift, contrast ratio, log high-frequency energy ratio."""
    lap = lambda z: (4 * z[..., 1:-1, 1:-1] - z[..., :-2, 1:-1] - z[..., 2:, 1:-1]  # noqa: E731
                     - z[..., 1:-1, :-2] - z[..., 1:-1, 2:]).pow(2).mean()
    rows = []
    for i in range(n):
        x = crops[i % len(crops)][None]
        y = deg(x)
        rows.append((float(-10 * torch.log10(((y - x) ** 2).mean())), float(y.mean() - x.mean()),
                     float(y.std() / x.std()), float(torch.log(lap(y) / lap(x)))))
    return np.array(rows)


def test_whole_pipeline_statistics_match_the_reference(photo_crops):
    """The whole second-order pipeline, old vs new, 160 images each, the authors' settings. Its
    variance is dominated by the blur and resize draws (identical code on both paths), so this
    checks the composition (order, per-batch choices, final rounding) more than the stages, whose
    own tests above have the power."""
    n = 160
    ref = _pipeline_stats(photo_crops, D.RealESRGANDegradation(seed=11, implementation="reference"), n)
    new = _pipeline_stats(photo_crops, D.RealESRGANDegradation(seed=12, implementation="fast"), n)
    for j, name in enumerate(("psnr", "mean shift", "contrast ratio", "log HF energy ratio")):
        assert _ks(ref[:, j], new[:, j]) > ALPHA, name
        assert _mean_close(ref[:, j], new[:, j]), name
    # (No separate bound on the spreads: the contrast ratio is heavy-tailed, so its standard
    # deviation from 160 draws varies by about 20 % between seeds of the same path; the KS test
    # compares the whole distributions. A check with 3 000 images each at 40 px gave |z| <= 1.14
    # for all four means and KS p >= 0.28.)
    # power: without the second JPEG and final sinc (a different composition) PSNR moves
    skipped = D.RealESRGANDegradation(seed=12, final_sinc_prob=0.0, jpeg_range2=(94, 95), second_blur_prob=0.0)
    other = _pipeline_stats(photo_crops, skipped, n)
    assert _ks(ref[:, 0], other[:, 0]) < ALPHA


# ------------------------------------------------------------------------- dataset and BasicSR model

@pytest.fixture(scope="module")
def class_tree(tmp_path_factory):
    from constyle_plugin.data.samples import export_sample_classes

    root = tmp_path_factory.mktemp("classes")
    export_sample_classes(root, crops_per_photo=1, crop_size=96)
    return root


def test_dataset_draws_the_parameters_in_the_worker(class_tree):
    from constyle_plugin.data.datasets import ConStylePretrainDataset

    base = {"dataroot": str(class_tree), "resize": 80, "crop_size": 64}
    assert "degradation" not in ConStylePretrainDataset(base)[0]  # off by default
    ds = ConStylePretrainDataset({**base, "degradation": {"noise_range": [2, 3]}, "phase": "val", "seed": 3})
    a, b = ds[1], ds[1]
    assert set(a["degradation"]) == set(D.PARAM_SAMPLE_KEYS + D.PARAM_BATCH_KEYS)
    assert all(torch.equal(a["degradation"][k], b["degradation"][k]) for k in a["degradation"])  # (seed, index)
    assert not torch.equal(a["degradation"]["kernel1"], ds[2]["degradation"]["kernel1"])
    assert 2 <= float(a["degradation"]["sigma1"]) <= 3  # the options given
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)))
    assert batch["degradation"]["kernel1"].shape == (4, 21, 21) and batch["degradation"]["jpeg1"].shape == (4,)
    with pytest.raises(ValueError, match="option `degradation`.*noise_rnge"):
        ConStylePretrainDataset({**base, "degradation": {"noise_rnge": [1, 2]}})
    with pytest.raises(ValueError, match="option `degradation` must be"):
        ConStylePretrainDataset({**base, "degradation": "yes"})


def _pretrain_model(tmp_path, dataset_degradation=True, train_degradation=None):
    from basicsr.models import build_model

    opt = {
        "name": "unit_pretrain", "model_type": "ConStyleV2PretrainModel", "num_gpu": 0, "dist": False, "rank": 0,
        "world_size": 1, "is_train": True,
        "datasets": {"train": {"type": "ConStylePretrainDataset", "degradation": dataset_degradation}},
        "network_g": {"type": "ConStyleMoCo", "queue_size": 16},
        "path": {"pretrain_network_g": None, "models": str(tmp_path / "models"),
                 "training_states": str(tmp_path / "states")},
        "train": {"optim_g": {"type": "AdamW", "lr": 1e-3}, "degradation": train_degradation,
                  "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [10], "restart_weights": [1]}},
    }
    return build_model(opt)


def test_basicsr_model_degrades_with_the_batch_parameters(tmp_path, photo_crops):
    model = _pretrain_model(tmp_path)
    params = model.degradation.sample_params(4, rng=np.random.default_rng(0))
    query = _batch(photo_crops, 4)
    weather = torch.tensor([True, False, False, True])
    model.feed_data({"query": query, "key": query.clone(), "label": torch.arange(4), "weather": weather,
                     "degradation": params})
    calls = []
    real = model.degradation.forward
    model.degradation.forward = lambda x, p=None: calls.append((x, p)) or real(x, p)
    torch.manual_seed(5)
    out = model._degraded_query(model.degradation)
    (x, p), = calls
    assert torch.equal(x, query[1:3])  # only the samples without weather, with their own parameters
    assert all(torch.equal(p[k], v[1:3]) for k, v in params.items())
    assert torch.equal(out[[0, 3]], query[[0, 3]])
    torch.manual_seed(5)
    assert torch.equal(out[1:3], real(query[1:3], {k: v[1:3] for k, v in params.items()}))
    model.optimize_parameters(1)  # and a training step runs with them
    assert set(model.get_current_log()) >= {"l_infonce", "l_total"}


def test_basicsr_model_refuses_parameters_drawn_from_other_options(tmp_path):
    from constyle_plugin.core.builder import OptionError

    with pytest.raises(OptionError, match=r"datasets\.train\.degradation.*first\.noise_range"):
        _pretrain_model(tmp_path, dataset_degradation={"noise_range": [1, 40]})
    with pytest.raises(OptionError, match=r"second_blur_prob"):
        _pretrain_model(tmp_path, dataset_degradation=True, train_degradation={"second_blur_prob": 0.5})
    # the same values, one written as the defaults and one spelt out: accepted
    _pretrain_model(tmp_path, dataset_degradation=True, train_degradation={"noise_range": [1, 30]})


def test_mmengine_pretrainer_degrades_without_reading_the_device():
    """The MMEngine stage-1 model picks the samples to degrade on the host (the weather metainfo) and
    degrades only those; on the meta device any read-back would raise."""
    pytest.importorskip("mmengine")
    from mmengine.structures import BaseDataElement

    from constyle_plugin.integrations.mmengine.models import ConStylePretrainer

    model = ConStylePretrainer(queue_size=8, num_classes=4, degradation=dict(seed=0))
    samples = [BaseDataElement(metainfo={"weather": w}) for w in (True, False, False, True)]
    query = torch.empty(4, 3, 32, 32, device="meta")
    assert model.degrade_queries(query, samples).shape == query.shape
    cpu = torch.rand(4, 3, 32, 32)
    model = ConStylePretrainer(queue_size=8, num_classes=4, degradation=dict(seed=0))
    out = model.degrade_queries(cpu, samples)
    assert torch.equal(out[[0, 3]], cpu[[0, 3]]) and not torch.equal(out[1:3], cpu[1:3])


def test_basicsr_train_with_parameters_drawn_by_the_dataset(tmp_path):
    """`basicsr train` on the stage-1 options with datasets.train.degradation on: the workers draw the
    parameters, the model degrades with them, training runs; a dataset drawing from other values than
    train.degradation is refused before training."""
    from basicsr_runs import OPTIONS_DIR as OPTIONS, losses_by_iter, run, train_log

    opts = ["train:total_iter=2", "val:val_freq=2", "logger:print_freq=1", "logger:save_checkpoint_freq=2",
            "network_g:queue_size=8", "datasets:train:batch_size_per_gpu=4", "datasets:train:num_worker_per_gpu=1",
            "datasets:train:crop_size=48", "datasets:train:resize=56", "datasets:train:crops_per_photo=1",
            "datasets:val:crop_size=48", "datasets:val:resize=56", "datasets:val:crops_per_photo=1",
            "datasets:train:degradation=true"]
    run(tmp_path, "train", "-opt", str(OPTIONS / "constyle_v2_pretrain.yml"), "--force_yml", *opts)
    losses = losses_by_iter(train_log(tmp_path / "experiments" / "ConStyle_v2_pretrain"))
    assert set(losses) == {1, 2} and all("l_infonce" in v for v in losses.values())
    bad = tmp_path / "bad"
    bad.mkdir()
    proc = run(bad, "train", "-opt", str(OPTIONS / "constyle_v2_pretrain.yml"), "--force_yml", *opts,
               "train:degradation:noise_range=[1,40]", ok=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "datasets.train.degradation" in said and "first.noise_range" in said
    assert not list(bad.glob("experiments/*/models/*.pth"))


def test_basicsr_pretrain_ema_is_basicsrs_arithmetic_in_fewer_kernels(tmp_path):
    """The multi-tensor EMA gives bit for bit what BasicSR's per-parameter loop gives (then the
    buffers copied)."""
    from basicsr.models.base_model import BaseModel

    model = _pretrain_model(tmp_path, dataset_degradation=False)
    model.opt["train"]["ema_decay"] = 0.9
    model.net_g_ema = _pretrain_model(tmp_path, dataset_degradation=False).net_g  # another init: EMA != net
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        model.net_g.queue.normal_()
    import copy

    expected = copy.deepcopy(model.net_g_ema)
    holder = type("Holder", (), {"get_bare_model": lambda self, net: net})()
    holder.net_g, holder.net_g_ema = model.net_g, expected
    BaseModel.model_ema(holder, 0.9)
    model.model_ema(0.9)
    got = model.net_g_ema.state_dict()
    for name, value in expected.named_parameters():
        assert torch.equal(got[name], value), name
    for name, value in model.net_g.named_buffers():
        assert torch.equal(got[name], value), name
    name = "encoder_q.classifier.3.weight"
    assert not torch.equal(got[name], model.net_g.state_dict()[name])


def test_basicsr_model_degradation_step_reads_nothing_back_from_the_device(tmp_path):
    """The BasicSR model's query degradation (weather subset, batch parameters) on the meta device."""
    model = _pretrain_model(tmp_path)
    params = model.degradation.sample_params(4, rng=np.random.default_rng(0))
    model.feed_data({"query": torch.rand(4, 3, 32, 32), "key": torch.rand(4, 3, 32, 32), "label": torch.arange(4),
                     "weather": torch.tensor([True, False, False, True]), "degradation": params})
    model.query = torch.empty(4, 3, 32, 32, device="meta")
    out = model._degraded_query(D.RealESRGANDegradation(seed=0))
    assert out.shape == (4, 3, 32, 32) and out.device.type == "meta"


# ------------------------------------------------------------------------- the networks' step

def test_moco_training_step_reads_nothing_back_from_the_device():
    """Forward (momentum update, key encoder, negatives from the queue, enqueue), the losses and the
    backward of a MoCo step on the meta device: the queue pointer stays a device tensor. Two input
    checks do read back and are switched off here: the prompter's NaN/Inf check of its input
    (``check_finite``, prompter.py) and the pretext loss's label range check (losses.py; labels=None);
    benchmarks/stage1.py --no-host-checks measures what they cost."""
    from constyle_plugin.training.pretrain import ConStyleMoCo

    model = ConStyleMoCo(queue_size=8, num_classes=4).to("meta").train()
    model.encoder_q.check_finite = model.encoder_k.check_finite = False
    out = model(torch.empty(2, 3, 32, 32, device="meta"), torch.empty(2, 3, 32, 32, device="meta"))
    losses = model.pretrain_loss()(out, None, 0)
    losses["total"].backward()
    assert set(losses) == {"infonce", "content", "style", "kl", "total"} and out.neg1.shape == (2, 128)


def test_moco_momentum_update_is_the_per_parameter_arithmetic():
    from constyle_plugin.training.pretrain import ConStyleMoCo

    torch.manual_seed(0)
    model = ConStyleMoCo(queue_size=8, num_classes=4, momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    expected = [p_k.clone().mul_(0.9).add_(p_q, alpha=0.1)
                for p_q, p_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters())]
    model.momentum_update()
    assert all(torch.equal(p, e) for p, e in zip(model.encoder_k.parameters(), expected))


def test_moco_queue_pointer_and_negatives_wrap_on_the_device():
    from constyle_plugin.training.pretrain import ConStyleMoCo

    torch.manual_seed(0)
    model = ConStyleMoCo(queue_size=6, num_classes=4).train()
    model.queue_ptr[0] = 4
    before = model.queue.clone()
    out = model(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert torch.equal(out.neg2, before[:, [4, 5]].t()) and torch.equal(out.neg1, before[:, [0, 1]].t())
    assert torch.equal(model.queue[:, [4, 5]], out.q_enc.z2.detach().t()) and int(model.queue_ptr) == 0
    assert torch.equal(model.queue[:, :4], before[:, :4])
