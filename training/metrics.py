"""SSIM (the training loss is its negative) and PSNR, on RGB and on BT.601 luma (Y)."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] @ g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5, valid: bool = False) -> Tensor:
    """Mean SSIM of N x C x H x W images in [0, 1], as the DCSFN paper trains it.

    11x11 Gaussian window (sigma 1.5), zero padding of 5, C1 = 0.01^2, C2 = 0.03^2, averaged
    over all pixels and channels. ``valid``: only where the window lies inside the picture, as
    the published scores are computed (Wang's ``ssim_index``; PReNet's and MPRNet's tables):
    zero padding counts the border's made-up agreement too (Rain100L's rainy inputs: 0.843
    against the published 0.838).
    """
    channels = a.shape[1]
    w = _gaussian_window(window, sigma).to(a.dtype).to(a.device).expand(channels, 1, -1, -1)
    pad = 0 if valid else window // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=channels)
    mu_b = F.conv2d(b, w, padding=pad, groups=channels)
    var_a = F.conv2d(a * a, w, padding=pad, groups=channels) - mu_a**2
    var_b = F.conv2d(b * b, w, padding=pad, groups=channels) - mu_b**2
    cov = F.conv2d(a * b, w, padding=pad, groups=channels) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 Y (16-235) of an RGB uint8 or float [0, 255] image, as deraining papers use."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 255] (clipped), over all pixels and channels."""
    a = np.clip(a.astype(np.float64), 0, 255)
    b = np.clip(b.astype(np.float64), 0, 255)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim_image(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two H x W (x 3) images in [0, 255] with the training's window, where it lies
    inside the pictures (the published scores' convention)."""
    ta = torch.from_numpy(np.atleast_3d(a).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    tb = torch.from_numpy(np.atleast_3d(b).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return float(ssim(ta, tb, valid=True))
