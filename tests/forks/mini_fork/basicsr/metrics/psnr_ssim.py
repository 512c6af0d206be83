"""PSNR / SSIM with the signatures of the forks' ``basicsr.metrics`` and BasicSR's definitions (8-bit
HWC BGR images, 11 x 11 Gaussian window of sigma 1.5, 'valid' region, mean over channels). Like
NAFNet's SSIM it moves its window with a hard-coded ``.cuda()``: on a machine without CUDA it needs
the plugin to leave such calls on the CPU."""
import numpy as np
import torch
import torch.nn.functional as F


def _prepare(img, crop_border, input_order, test_y_channel):
    img = np.asarray(img, dtype=np.float64)
    if input_order == 'CHW':
        img = img.transpose(1, 2, 0)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        b, g, r = img[..., 0] / 255., img[..., 1] / 255., img[..., 2] / 255.
        img = ((24.966 * b + 128.553 * g + 65.481 * r) + 16.0)[..., None]
    return img


def calculate_psnr(img1, img2, crop_border, input_order='HWC', test_y_channel=False):
    a = _prepare(img1, crop_border, input_order, test_y_channel)
    b = _prepare(img2, crop_border, input_order, test_y_channel)
    mse = np.mean((a - b) ** 2)
    return float('inf') if mse == 0 else 20. * np.log10(255. / np.sqrt(mse))


def _window():
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None].cuda()  # as NAFNet's metric does


def calculate_ssim(img1, img2, crop_border, input_order='HWC', test_y_channel=False):
    a = torch.from_numpy(_prepare(img1, crop_border, input_order, test_y_channel)).permute(2, 0, 1)[:, None]
    b = torch.from_numpy(_prepare(img2, crop_border, input_order, test_y_channel)).permute(2, 0, 1)[:, None]
    w = _window()
    a, b = a.to(w.device), b.to(w.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = F.conv2d(a, w), F.conv2d(b, w)
    s11 = F.conv2d(a * a, w) - mu1 ** 2
    s22 = F.conv2d(b * b, w) - mu2 ** 2
    s12 = F.conv2d(a * b, w) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())
