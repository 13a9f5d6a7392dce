"""Image quality measures used by validation and evaluation (scikit-image)."""

from __future__ import annotations

import numpy as np


def gray_metrics(estimate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR (dB, data range 1) and SSIM of single-channel images in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    est = np.clip(estimate.astype(np.float64), 0.0, 1.0)
    ref = reference.astype(np.float64)
    return {
        "psnr_db": float(peak_signal_noise_ratio(ref, est, data_range=1.0)),
        "ssim": float(structural_similarity(ref, est, data_range=1.0)),
    }


def stain_metrics(estimate_chw: np.ndarray, reference_chw: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM (over RGB) and mean CIEDE2000 colour difference of ``(3, H, W)`` in [0, 1]."""
    from skimage.color import deltaE_ciede2000, rgb2lab
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    est = np.clip(estimate_chw.astype(np.float64), 0.0, 1.0).transpose(1, 2, 0)
    ref = np.clip(reference_chw.astype(np.float64), 0.0, 1.0).transpose(1, 2, 0)
    return {
        "psnr_db": float(peak_signal_noise_ratio(ref, est, data_range=1.0)),
        "ssim": float(structural_similarity(ref, est, data_range=1.0, channel_axis=2)),
        "ciede2000": float(np.mean(deltaE_ciede2000(rgb2lab(ref), rgb2lab(est)))),
    }
