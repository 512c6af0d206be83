"""The Real-ESRGAN second-order degradation pipeline (stage 1's query view): :class:`RealESRGANDegradation`
on a batch (B x 3 x H x W in [0, 1], any device), built from BasicSR's kernel generators, noise
functions, ``filter2D``, ``USMSharp`` and ``DiffJPEG`` (imported on first use, from BasicSR >= 1.3).
Defaults are the ConStyle v2 authors' values.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..compat import ensure_basicsr_importable
from ..errors import ConStyleError, ConStyleKeyError, ConStyleTypeError, MissingDependencyError

__all__ = ["PARAM_BATCH_KEYS", "PARAM_SAMPLE_KEYS", "RealESRGANDegradation"]


class _BasicSROps:
    """BasicSR >= 1.3's degradation utilities, imported on first use: only the Real-ESRGAN pipeline
    (stage 1) needs them, so the all-in-one degradations below also work inside 1.2-era forks."""

    def __getattr__(self, name: str):
        try:
            ensure_basicsr_importable()
            from basicsr.data import degradations
            from basicsr.utils import DiffJPEG
            from basicsr.utils.img_process_util import USMSharp, filter2D
        except ImportError as exc:
            raise MissingDependencyError(f"the Real-ESRGAN degradation (stage 1) needs BasicSR >= 1.3's DiffJPEG, kernels and "
                              f"filter2D ({exc}); install it with: pip install 'constyle-plugin[basicsr]' (in an "
                              f"environment without a 1.2-era BasicSR fork)") from None
        found = {"circular_lowpass_kernel": degradations.circular_lowpass_kernel,
                 "random_add_gaussian_noise_pt": degradations.random_add_gaussian_noise_pt,
                 "random_add_poisson_noise_pt": degradations.random_add_poisson_noise_pt,
                 "random_mixed_kernels": degradations.random_mixed_kernels,
                 "rgb_to_grayscale": degradations.rgb_to_grayscale,
                 "DiffJPEG": DiffJPEG, "USMSharp": USMSharp, "filter2D": filter2D}
        vars(self).update(found)
        return found[name]


_bsr = _BasicSROps()

# --------------------------------------------------------------------------------------------
# Real-ESRGAN second-order pipeline (batch, any device)
# --------------------------------------------------------------------------------------------

_KERNEL_LIST = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                "plateau_aniso")
_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


def _pad_to_min(x: Tensor, min_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Replicate-pad so that H and W are at least ``min_size`` (reflect padding needs it)."""
    h, w = x.shape[-2:]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """BasicSR's ``filter2D`` (reflect border), also on images smaller than the kernel."""
    x, (h, w) = _pad_to_min(x, kernel.shape[-1] // 2 + 1)
    return _bsr.filter2D(x.contiguous(), kernel)[..., :h, :w]


_INTERP_MODES = ("area", "bilinear", "bicubic")
# Entries of RealESRGANDegradation.sample_params: per-sample values ...
PARAM_SAMPLE_KEYS = ("kernel1", "kernel2", "sinc_kernel", "sigma1", "poisson1", "gray1", "jpeg1",
                     "sigma2", "poisson2", "gray2", "jpeg2")
# ... and per-batch choices (as in Real-ESRGAN), drawn per sample; a batch takes its first row's.
PARAM_BATCH_KEYS = ("scale1", "mode1", "gaussian1", "second_blur", "scale2", "mode2", "gaussian2",
                    "sinc_first", "mode3")
_KERNEL_KEYS = ("kernel1", "kernel2", "sinc_kernel")


@contextlib.contextmanager
def _host_seed_scope(seed: int) -> Iterator[None]:
    """Seed numpy's and Python's global generators (BasicSR's kernel samplers use them) and restore
    them afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _separable_filter(x: Tensor, g: Tensor) -> Tensor:
    """``filter2D(x, outer(g, g))`` (reflect border) as a vertical then a horizontal pass:
    ``x`` B x C x H x W with H, W > len(g) // 2, ``g`` the 1-D kernel (odd length)."""
    b, c, h, w = x.shape
    k = g.numel()
    x = F.pad(x, (k // 2,) * 4, mode="reflect").reshape(b * c, 1, h + k - 1, w + k - 1)
    x = F.conv2d(x, g.reshape(1, 1, k, 1))
    return F.conv2d(x, g.reshape(1, 1, 1, k)).reshape(b, c, h, w)


def _count_levels(levels: Tensor) -> Tensor:
    """Per sample, how many of the 256 8-bit levels occur: ``levels`` B x ... holding integers in
    [0, 255] (as floats) -> B floats. The same count as ``len(torch.unique(img[i]))`` in BasicSR's
    Poisson noise, without a host round-trip."""
    b = levels.shape[0]
    present = levels.new_zeros(b, 256)
    present.scatter_(1, levels.reshape(b, -1).long(), 1.0)
    return present.sum(dim=1)


def _poisson_noise(x: Tensor, scale: Tensor, gray: Optional[Tensor]) -> Tensor:
    """BasicSR's ``generate_poisson_noise_pt`` with per-sample tensors: ``x`` B x 3 x H x W,
    ``scale`` B, ``gray`` B in {0, 1} (``None``: no grey noise possible)."""
    b = x.shape[0]

    def shot(img: Tensor) -> Tensor:
        img = torch.clamp((img * 255.0).round(), 0, 255)
        vals = torch.exp2(torch.ceil(torch.log2(_count_levels(img)))).reshape(b, 1, 1, 1)
        img = img / 255.0
        return torch.poisson(img * vals) / vals - img

    noise = shot(x)
    if gray is not None:
        g = gray.reshape(b, 1, 1, 1)
        noise = noise * (1 - g) + shot(_bsr.rgb_to_grayscale(x, num_output_channels=1)) * g
    return noise * scale.reshape(b, 1, 1, 1)


def _gaussian_noise(x: Tensor, sigma: Tensor, gray: Optional[Tensor]) -> Tensor:
    """BasicSR's ``generate_gaussian_noise_pt`` with per-sample tensors (``sigma`` B on the 0-255
    scale, ``gray`` B in {0, 1} or ``None``), one grey field per sample."""
    b, _, h, w = x.shape
    s = (sigma / 255.0).reshape(b, 1, 1, 1)
    noise = torch.randn_like(x) * s
    if gray is not None:
        g = gray.reshape(b, 1, 1, 1)
        noise = noise * (1 - g) + torch.randn(b, 1, h, w, dtype=x.dtype, device=x.device) * s * g
    return noise


class RealESRGANDegradation(nn.Module):
    """The Real-ESRGAN second-order degradation, applied to a batch.

    ``forward(x, params=None)`` takes ``x``: B x 3 x H x W in [0, 1] on any device and returns a
    degraded batch of the same shape, dtype and device, quantised to 8 bits: (USM sharpening),
    blur, random resize, Gaussian or Poisson noise, JPEG; then blur (probability
    ``second_blur_prob``), resize, noise, and in random order JPEG and [resize back + final
    sinc filter]. Per-sample: blur kernels, noise level, grey noise, JPEG quality; per-batch:
    resize scales, interpolation modes, noise kind, second blur, the final ordering (as in
    Real-ESRGAN).

    The keyword arguments are the Real-ESRGAN / ConStyle v2 YAML names; defaults are the
    ConStyle v2 authors' values (SPEC section 2), the kernel settings Real-ESRGAN's. Kernel sizes
    are the odd numbers from 7 to ``blur_kernel_size`` (21: 7..21, as Real-ESRGAN hard-codes);
    all kernels are zero-padded to that size.

    ``implementation``:

    * ``'fast'`` (default): every random choice is a parameter drawn on the CPU by
      :meth:`sample_params` (kernels padded to a fixed size, numbers as tensors), best in the
      data workers (:class:`~constyle_plugin.data.datasets.ConStylePretrainDataset` option
      ``degradation``) and collated into the batch; ``forward(x, params)`` then runs batched on
      ``x``'s device without reading anything back from it: per-sample values broadcast as
      tensors, per-sample kernels as one grouped convolution, the Poisson noise's level count by
      a per-sample histogram instead of ``torch.unique``, DiffJPEG's quality factors computed as a
      tensor, the 51 x 51 USM blur as two separable passes. The per-batch choices are read from
      the first sample's row on the host (keep those entries on the CPU, as a DataLoader gives
      them). Missing entries (``params=None``, or only the three kernels of
      :meth:`sample_kernels`) are drawn here on the CPU.
    * ``'reference'``: the original pipeline on BasicSR's functions as they are (per-sample
      ``torch.unique`` and DiffJPEG's per-sample quality loop read values back from the device);
      ``params`` may carry the three kernels, the rest is drawn as before. Kept to check the fast
      path against (tests/training/test_stage1_fast.py) and to measure it (benchmarks/stage1.py).

    Both draw every value from the same distributions. One joint difference, on purpose: BasicSR
    adds the same grey Gaussian noise field (scaled per sample) to every grey-noise sample of a
    batch; the fast path draws one field per sample.

    ``seed``: ``None`` draws from the global numpy / torch generators like Real-ESRGAN (seed
    them with the trainer). An integer makes the module own a ``numpy.random.RandomState``;
    each call then runs the samplers under global generator states seeded from it and
    restores the global states afterwards, so two modules with the same seed give the same
    output for the same calls on the same device (not thread-safe).

    The module has no trainable parameters (DiffJPEG's tables are frozen) and moves itself to
    the input's device on first use; it runs under ``torch.no_grad``. Keep it out of the
    network whose state is saved (it holds only constants).
    """

    def __init__(self, *,
                 resize_prob: Sequence[float] = (0.2, 0.7, 0.1),
                 resize_range: Sequence[float] = (0.15, 1.5),
                 gaussian_noise_prob: float = 0.5,
                 noise_range: Sequence[float] = (1, 30),
                 poisson_scale_range: Sequence[float] = (0.05, 3),
                 gray_noise_prob: float = 0.4,
                 jpeg_range: Sequence[float] = (30, 95),
                 blur_kernel_size: int = 21,
                 kernel_list: Sequence[str] = _KERNEL_LIST,
                 kernel_prob: Sequence[float] = _KERNEL_PROB,
                 sinc_prob: float = 0.1,
                 blur_sigma: Sequence[float] = (0.2, 3),
                 betag_range: Sequence[float] = (0.5, 4),
                 betap_range: Sequence[float] = (1, 2),
                 second_blur_prob: float = 0.8,
                 resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
                 resize_range2: Sequence[float] = (0.3, 1.2),
                 gaussian_noise_prob2: float = 0.5,
                 noise_range2: Sequence[float] = (1, 25),
                 poisson_scale_range2: Sequence[float] = (0.05, 2.5),
                 gray_noise_prob2: float = 0.4,
                 jpeg_range2: Sequence[float] = (30, 95),
                 blur_kernel_size2: int = 21,
                 kernel_list2: Sequence[str] = _KERNEL_LIST,
                 kernel_prob2: Sequence[float] = _KERNEL_PROB,
                 sinc_prob2: float = 0.1,
                 blur_sigma2: Sequence[float] = (0.2, 1.5),
                 betag_range2: Sequence[float] = (0.5, 4),
                 betap_range2: Sequence[float] = (1, 2),
                 final_sinc_prob: float = 0.8,
                 usm_sharpen: bool = True,
                 seed: Optional[int] = None,
                 implementation: str = "fast"):
        super().__init__()
        if implementation not in ("fast", "reference"):
            raise ConStyleError(f"RealESRGANDegradation: implementation must be 'fast' or 'reference', "
                             f"got {implementation!r}")
        self.implementation = implementation
        for name, size in (("blur_kernel_size", blur_kernel_size),
                           ("blur_kernel_size2", blur_kernel_size2)):
            if size < 7 or size % 2 == 0:
                raise ConStyleError(f"RealESRGANDegradation: {name} must be odd and >= 7, got {size}")
        for name, lst, prob in (("kernel_list", kernel_list, kernel_prob),
                                ("kernel_list2", kernel_list2, kernel_prob2)):
            if len(lst) != len(prob):
                raise ConStyleError(f"RealESRGANDegradation: {name} has {len(lst)} entries but its "
                                 f"probabilities have {len(prob)}")
        for name, prob in (("resize_prob", resize_prob), ("resize_prob2", resize_prob2)):
            if len(prob) != 3:
                raise ConStyleError(f"RealESRGANDegradation: {name} must be [up, down, keep] "
                                 f"probabilities, got {list(prob)}")
        self.first = dict(resize_prob=list(resize_prob), resize_range=list(resize_range),
                          gaussian_noise_prob=gaussian_noise_prob, noise_range=list(noise_range),
                          poisson_scale_range=list(poisson_scale_range),
                          gray_noise_prob=gray_noise_prob, jpeg_range=list(jpeg_range),
                          kernel_size=blur_kernel_size, kernel_list=list(kernel_list),
                          kernel_prob=list(kernel_prob), sinc_prob=sinc_prob,
                          blur_sigma=list(blur_sigma), betag_range=list(betag_range),
                          betap_range=list(betap_range))
        self.second = dict(resize_prob=list(resize_prob2), resize_range=list(resize_range2),
                           gaussian_noise_prob=gaussian_noise_prob2,
                           noise_range=list(noise_range2),
                           poisson_scale_range=list(poisson_scale_range2),
                           gray_noise_prob=gray_noise_prob2, jpeg_range=list(jpeg_range2),
                           kernel_size=blur_kernel_size2, kernel_list=list(kernel_list2),
                           kernel_prob=list(kernel_prob2), sinc_prob=sinc_prob2,
                           blur_sigma=list(blur_sigma2), betag_range=list(betag_range2),
                           betap_range=list(betap_range2))
        self.second_blur_prob = second_blur_prob
        self.final_sinc_prob = final_sinc_prob
        self.usm_sharpen = usm_sharpen
        self._rs = np.random.RandomState(seed) if seed is not None else None
        self.jpeger = _bsr.DiffJPEG(differentiable=False)
        self.usm = _bsr.USMSharp()
        self.requires_grad_(False)

    @classmethod
    def from_opt(cls, opt: Optional[Mapping] = None) -> "RealESRGANDegradation":
        """Build from a YAML-style dict (e.g. the ``real_esrgan:`` block of an option file).

        Unknown keys raise ``TypeError`` naming them, so a misspelt option is not ignored.
        """
        opt = dict(opt or {})
        import inspect

        valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(opt) - valid)
        if unknown:
            raise ConStyleTypeError(f"RealESRGANDegradation: unknown option(s) {unknown}; "
                            f"valid: {sorted(valid)}")
        return cls(**opt)

    # -- random state ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rng_scope(self, device: Optional[torch.device] = None) -> Iterator[None]:
        if self._rs is None:
            yield
            return
        seed = int(self._rs.randint(0, 2**31 - 1))
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = [device] if device is not None and device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            np.random.seed(seed)
            random.seed(seed)  # BasicSR's random_mixed_kernels picks the kernel type with it
            torch.random.default_generator.manual_seed(seed)
            for d in devices:
                idx = d.index if d.index is not None else torch.cuda.current_device()
                torch.cuda.default_generators[idx].manual_seed(seed)
            try:
                yield
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)

    # -- kernels -------------------------------------------------------------------------------
    @staticmethod
    def _blur_kernel(p: dict) -> np.ndarray:
        sizes = list(range(7, p["kernel_size"] + 1, 2))
        size = int(np.random.choice(sizes))
        if np.random.uniform() < p["sinc_prob"]:
            # the cut-off range Real-ESRGAN uses for kernels of size 7..21
            low = np.pi / 3 if size < 13 else np.pi / 5
            kernel = _bsr.circular_lowpass_kernel(np.random.uniform(low, np.pi), size, pad_to=False)
        else:
            kernel = _bsr.random_mixed_kernels(p["kernel_list"], p["kernel_prob"], size,
                                          p["blur_sigma"], p["blur_sigma"], [-math.pi, math.pi],
                                          p["betag_range"], p["betap_range"], noise_range=None)
        pad = (p["kernel_size"] - size) // 2
        return np.pad(kernel, ((pad, pad), (pad, pad)))

    def _sinc_kernel(self) -> np.ndarray:
        k = self.first["kernel_size"]
        if np.random.uniform() < self.final_sinc_prob:
            size = int(np.random.choice(list(range(7, k + 1, 2))))
            return _bsr.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=k)
        pulse = np.zeros((k, k), np.float32)  # identity: no final filter for this sample
        pulse[k // 2, k // 2] = 1
        return pulse

    def sample_kernels(self, batch_size: int) -> Dict[str, Tensor]:
        """Draw per-sample kernels on the CPU.

        Returns ``{'kernel1': B x K1 x K1, 'kernel2': B x K2 x K2, 'sinc_kernel': B x K1 x K1}``
        (float32, K = ``blur_kernel_size`` / ``blur_kernel_size2``), each kernel summing to 1.
        """
        with self._rng_scope():
            return self._sample_kernels(batch_size)

    def _sample_kernels(self, batch_size: int) -> Dict[str, Tensor]:
        k1, k2, ks = [], [], []
        for _ in range(batch_size):
            k1.append(self._blur_kernel(self.first))
            k2.append(self._blur_kernel(self.second))
            ks.append(self._sinc_kernel())
        stack = lambda ks_: torch.from_numpy(np.stack(ks_).astype(np.float32))  # noqa: E731
        return {"kernel1": stack(k1), "kernel2": stack(k2), "sinc_kernel": stack(ks)}

    def sampling_options(self) -> Dict[str, object]:
        """The options :meth:`sample_params` draws from (to check that parameters drawn by a dataset
        fit the pipeline of a model): per pass ranges and probabilities, second blur, final sinc."""
        return {"first": dict(self.first), "second": dict(self.second),
                "second_blur_prob": self.second_blur_prob, "final_sinc_prob": self.final_sinc_prob}

    def sample_params(self, batch_size: Optional[int] = None,
                      rng: Optional[np.random.Generator] = None) -> Dict[str, Tensor]:
        """Draw every random choice of the pipeline on the CPU (for the ``'fast'`` implementation).

        Returns float32 tensors: ``kernel1`` K1 x K1, ``kernel2`` K2 x K2, ``sinc_kernel``
        K1 x K1 (zero-padded, identity when no final sinc), ``sigma1/2`` (Gaussian sigma, 0-255
        scale), ``poisson1/2`` (Poisson scale), ``gray1/2`` (0 or 1), ``jpeg1/2`` (quality), and the
        per-batch choices ``scale1/2`` (resize factor), ``mode1/2/3`` (interpolation: 0 area,
        1 bilinear, 2 bicubic), ``gaussian1/2`` (1: Gaussian, 0: Poisson noise), ``second_blur``,
        ``sinc_first`` (1: [resize back + sinc] before the last JPEG); a batch uses its first
        sample's per-batch choices. With ``batch_size=None`` one sample's values (no batch
        dimension: a dataset returns them and the DataLoader stacks them), else a leading
        dimension ``batch_size``.

        ``rng``: a ``numpy.random.Generator`` (a dataset worker's) to draw from; ``None`` uses the
        module's ``seed`` or the global generators, as :meth:`forward` does.
        """
        n = 1 if batch_size is None else int(batch_size)
        if n < 1:
            raise ConStyleError(f"RealESRGANDegradation.sample_params: batch_size must be >= 1, got {n}")
        scope = (self._rng_scope() if rng is None
                 else _host_seed_scope(int(rng.integers(0, 2**31 - 1))))
        with scope:
            params = self._draw_params(n)
        return {k: v[0] for k, v in params.items()} if batch_size is None else params

    def _draw_params(self, n: int, kernels: bool = True) -> Dict[str, Tensor]:
        draws = [self._draw_sample(kernels) for _ in range(n)]
        return {k: torch.from_numpy(np.stack([d[k] for d in draws]).astype(np.float32))
                for k in draws[0]}

    def _draw_sample(self, kernels: bool = True) -> Dict[str, np.ndarray]:
        # the same distributions as _degrade (reference) draws from, value by value
        d: Dict[str, np.ndarray] = {}
        if kernels:
            d.update(kernel1=self._blur_kernel(self.first), kernel2=self._blur_kernel(self.second),
                     sinc_kernel=self._sinc_kernel())
        for i, p in ((1, self.first), (2, self.second)):
            d[f"scale{i}"] = self._resize_scale(p)
            d[f"mode{i}"] = _INTERP_MODES.index(self._mode())
            d[f"gaussian{i}"] = float(np.random.uniform() < p["gaussian_noise_prob"])
            d[f"sigma{i}"] = np.random.uniform(*p["noise_range"])
            d[f"poisson{i}"] = np.random.uniform(*p["poisson_scale_range"])
            d[f"gray{i}"] = float(np.random.uniform() < p["gray_noise_prob"])
            d[f"jpeg{i}"] = np.random.uniform(*p["jpeg_range"])
        d["second_blur"] = float(np.random.uniform() < self.second_blur_prob)
        d["sinc_first"] = float(np.random.uniform() < 0.5)
        d["mode3"] = _INTERP_MODES.index(self._mode())
        return {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}

    # -- the pipeline ----------------------------------------------------------------------------
    @staticmethod
    def _resize_scale(p: dict) -> float:
        kind = np.random.choice(["up", "down", "keep"], p=np.asarray(p["resize_prob"]) /
                                np.sum(p["resize_prob"]))
        if kind == "up":
            return float(np.random.uniform(1, p["resize_range"][1]))
        if kind == "down":
            return float(np.random.uniform(p["resize_range"][0], 1))
        return 1.0

    @staticmethod
    def _mode() -> str:
        return str(np.random.choice(["area", "bilinear", "bicubic"]))

    @staticmethod
    def _resize(x: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
        size = (max(1, int(size[0])), max(1, int(size[1])))
        kwargs = {} if mode == "area" else {"align_corners": False}
        return F.interpolate(x, size=size, mode=mode, **kwargs)

    @staticmethod
    def _noise(x: Tensor, p: dict) -> Tensor:
        if np.random.uniform() < p["gaussian_noise_prob"]:
            return _bsr.random_add_gaussian_noise_pt(x, sigma_range=p["noise_range"], clip=True,
                                                rounds=False, gray_prob=p["gray_noise_prob"])
        return _bsr.random_add_poisson_noise_pt(x, scale_range=p["poisson_scale_range"],
                                           gray_prob=p["gray_noise_prob"], clip=True,
                                           rounds=False)

    def _jpeg(self, x: Tensor, p: dict) -> Tensor:
        quality = x.new_zeros(x.size(0)).uniform_(*p["jpeg_range"])
        return self.jpeger(torch.clamp(x, 0, 1), quality=quality)

    @torch.no_grad()
    def forward(self, x: Tensor, params: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        """Degrade ``x`` (B x 3 x H x W, [0, 1]); returns B x 3 x H x W in [0, 1].

        ``params``: the output of :meth:`sample_params` for this batch (each entry with a leading
        dimension B; drawn in the data workers), or of :meth:`sample_kernels` (the three kernels;
        the rest is drawn here), or ``None`` (everything drawn here on the CPU). The
        ``'reference'`` implementation uses only the kernels.
        """
        if x.dim() != 4 or x.size(1) != 3:
            raise ConStyleError(f"RealESRGANDegradation: expected x of shape B x 3 x H x W, "
                             f"got {tuple(x.shape)}")
        if x.size(0) == 0:
            return x.clone()
        b, device, dtype = x.size(0), x.device, x.dtype
        if params is not None:
            self._check_params(params, b)
        if self.usm.kernel.device != device:
            self.to(device)
        with self._rng_scope(device):
            if self.implementation == "reference":
                kernels = params if params is not None else self._sample_kernels(b)
                k1, k2, ks = (kernels[k].to(device=device, dtype=torch.float32)
                              for k in _KERNEL_KEYS)
                out = self._degrade(x.float(), k1, k2, ks)
            else:
                if params is None:
                    params = self._draw_params(b)
                elif any(k not in params for k in PARAM_SAMPLE_KEYS + PARAM_BATCH_KEYS):
                    params = {**self._draw_params(b, kernels=False), **params}
                out = self._degrade_fast(x.float(), params)
        return out.to(dtype)

    @staticmethod
    def _check_params(params: Mapping[str, Tensor], b: int) -> None:
        missing = [k for k in _KERNEL_KEYS if k not in params]
        if missing:
            raise ConStyleKeyError(f"RealESRGANDegradation: params lacks {missing} (expected the output of "
                           f"sample_params or sample_kernels)")
        for k, v in params.items():
            if k not in PARAM_SAMPLE_KEYS + PARAM_BATCH_KEYS:
                raise ConStyleKeyError(f"RealESRGANDegradation: params[{k!r}] is not a parameter of the "
                               f"pipeline; expected some of {list(PARAM_SAMPLE_KEYS + PARAM_BATCH_KEYS)}")
            if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != b:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ConStyleError(f"RealESRGANDegradation: params[{k!r}] should have a leading batch "
                                 f"dimension {b} (x's), got {got}")
            if k in _KERNEL_KEYS and (v.dim() != 3 or v.shape[1] != v.shape[2] or v.shape[1] % 2 == 0):
                raise ConStyleError(f"RealESRGANDegradation: params[{k!r}] should be B x K x K with K "
                                 f"odd, got {tuple(v.shape)}")

    def _degrade(self, x: Tensor, k1: Tensor, k2: Tensor, ks: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.usm_sharpen:
            padded, _ = _pad_to_min(x, self.usm.kernel.shape[-1] // 2 + 1)
            x = self.usm(padded)[..., :h, :w]
        # first pass
        out = _filter(x, k1)
        scale = self._resize_scale(self.first)
        out = self._resize(out, (h * scale, w * scale), self._mode())
        out = self._noise(out, self.first)
        out = self._jpeg(out, self.first)
        # second pass
        if np.random.uniform() < self.second_blur_prob:
            out = _filter(out, k2)
        scale = self._resize_scale(self.second)
        out = self._resize(out, (h * scale, w * scale), self._mode())
        out = self._noise(out, self.second)
        # [resize back + sinc] and JPEG in random order (other orders give twisted lines)
        if np.random.uniform() < 0.5:
            out = _filter(self._resize(out, (h, w), self._mode()), ks)
            out = self._jpeg(out, self.second)
        else:
            out = self._jpeg(out, self.second)
            out = _filter(self._resize(out, (h, w), self._mode()), ks)
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.0

    # -- the fast implementation: parameters given, no host round-trip ------------------------
    def _usm_fast(self, x: Tensor, weight: float = 0.5, threshold: float = 10) -> Tensor:
        """``USMSharp.forward`` with its Gaussian (an outer product) applied as two 1-D passes."""
        h, w = x.shape[-2:]
        g = self.usm.kernel[0].sum(dim=1)  # the 1-D Gaussian: rows of outer(g, g) sum to g
        img, _ = _pad_to_min(x, g.numel() // 2 + 1)
        residual = img - _separable_filter(img, g)
        mask = (torch.abs(residual) * 255 > threshold).float()
        soft_mask = _separable_filter(mask, g)
        sharp = torch.clip(img + weight * residual, 0, 1)
        return (soft_mask * sharp + (1 - soft_mask) * img)[..., :h, :w]

    def _jpeg_fast(self, x: Tensor, quality: Tensor) -> Tensor:
        """``DiffJPEG(x, quality)`` with the quality factors computed as one tensor (DiffJPEG's own
        per-sample loop compares each quality on the host)."""
        factor = torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0
        x = torch.clamp(x, 0, 1)
        h, w = x.shape[-2:]
        hp, wp = (-h) % 16, (-w) % 16
        x = F.pad(x, (0, wp, 0, hp), mode="constant", value=0)
        y, cb, cr = self.jpeger.compress(x, factor=factor)
        return self.jpeger.decompress(y, cb, cr, h + hp, w + wp, factor=factor)[:, :, :h, :w]

    def _noise_fast(self, x: Tensor, gaussian: bool, vals: Mapping[str, Tensor], i: int,
                    p: dict) -> Tensor:
        gray = vals[f"gray{i}"] if p["gray_noise_prob"] > 0 else None
        if gaussian:
            noise = _gaussian_noise(x, vals[f"sigma{i}"], gray)
        else:
            noise = _poisson_noise(x, vals[f"poisson{i}"], gray)
        return torch.clamp(x + noise, 0, 1)

    def _degrade_fast(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        b, _, h, w = x.shape
        # per-batch choices: the first row, read on the host (CPU tensors from the DataLoader)
        first = torch.stack([params[k].reshape(b, -1)[0, 0].float() for k in PARAM_BATCH_KEYS])
        head = dict(zip(PARAM_BATCH_KEYS, first.cpu().tolist()))
        # per-sample values: one host-to-device copy, then views
        parts = [params[k].reshape(b, -1).float() for k in PARAM_SAMPLE_KEYS]
        flat = torch.cat(parts, dim=1).to(x.device, non_blocking=True)
        vals = dict(zip(PARAM_SAMPLE_KEYS, flat.split([t.shape[1] for t in parts], dim=1)))
        vals = {k: (v.reshape(b, params[k].shape[-1], params[k].shape[-1]) if k in _KERNEL_KEYS
                    else v.reshape(b)) for k, v in vals.items()}
        mode = lambda key: _INTERP_MODES[int(round(head[key]))]  # noqa: E731

        out = self._usm_fast(x) if self.usm_sharpen else x
        # first pass
        out = _filter(out, vals["kernel1"])
        out = self._resize(out, (h * head["scale1"], w * head["scale1"]), mode("mode1"))
        out = self._noise_fast(out, head["gaussian1"] > 0.5, vals, 1, self.first)
        out = self._jpeg_fast(out, vals["jpeg1"])
        # second pass
        if head["second_blur"] > 0.5:
            out = _filter(out, vals["kernel2"])
        out = self._resize(out, (h * head["scale2"], w * head["scale2"]), mode("mode2"))
        out = self._noise_fast(out, head["gaussian2"] > 0.5, vals, 2, self.second)
        if head["sinc_first"] > 0.5:
            out = _filter(self._resize(out, (h, w), mode("mode3")), vals["sinc_kernel"])
            out = self._jpeg_fast(out, vals["jpeg2"])
        else:
            out = self._jpeg_fast(out, vals["jpeg2"])
            out = _filter(self._resize(out, (h, w), mode("mode3")), vals["sinc_kernel"])
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.0
