"""Image quality inside a region (PSNR, SSIM) against a known truth, for benchmarks and tests of de-occlusion."""

from __future__ import annotations

import cv2
import numpy as np

PIXEL_MAX = 255.0
SSIM_SIGMA_PX = 1.5  # Gaussian window of Wang et al. (2004)
SSIM_C1 = (0.01 * PIXEL_MAX) ** 2
SSIM_C2 = (0.03 * PIXEL_MAX) ** 2


def psnr_in_mask(image_rgb: np.ndarray, truth_rgb: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) over the pixels of `mask` (all three channels); inf when identical, nan when the mask is empty."""
    if not mask.any():
        return float("nan")
    diff = image_rgb[mask].astype(np.float64) - truth_rgb[mask].astype(np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(PIXEL_MAX**2 / mse))


def ssim_map(image_rgb: np.ndarray, truth_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Gaussian window, sigma 1.5 px), averaged over the colour channels, (S, S) float64."""
    maps = []
    for channel in range(image_rgb.shape[2]):
        x = image_rgb[..., channel].astype(np.float64)
        y = truth_rgb[..., channel].astype(np.float64)

        def blur(a: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(a, (0, 0), SSIM_SIGMA_PX, borderType=cv2.BORDER_REFLECT)

        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov_xy = blur(x * y) - mu_x * mu_y
        maps.append(
            ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2))
            / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
        )
    return np.mean(maps, axis=0)


def ssim_in_mask(image_rgb: np.ndarray, truth_rgb: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the pixels of `mask` (nan when the mask is empty)."""
    if not mask.any():
        return float("nan")
    return float(ssim_map(image_rgb, truth_rgb)[mask].mean())
