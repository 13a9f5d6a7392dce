"""Despeckling data, the paper's recipe: YUV, inverted Y (tissue bright, like reflectance),
multiplicative speckle ``~ Gauss(1, 0.2)``, random flips and crops.

The clean image is normalised with the engine's own ``estimate_range``/``normalize`` so that
training sees the same value distribution as a normalised reflectance slide.
"""

from __future__ import annotations

import numpy as np

from service.core.normalize import estimate_range, normalize
from training.synthetic import SPECKLE_STD, to_unit_rgb

# BT.601 luma, the Y of YUV
LUMA_RGB = (0.299, 0.587, 0.114)


def inverted_luma(rgb: np.ndarray) -> np.ndarray:
    """``1 - Y`` of an RGB image, float32 ``(H, W)`` in [0, 1]."""
    unit = to_unit_rgb(rgb)
    luma = unit @ np.asarray(LUMA_RGB, dtype=np.float32)
    return (1.0 - luma).astype(np.float32)


def clean_reflectance(rgb: np.ndarray) -> np.ndarray:
    """The despeckling target of one H&E image: inverted luma normalised like a slide."""
    inverted = inverted_luma(rgb)
    return normalize(inverted, estimate_range(inverted))


def add_speckle(
    clean: np.ndarray, rng: np.random.Generator, std: float = SPECKLE_STD
) -> np.ndarray:
    """``clean * noise``, noise ~ Gauss(1, std) per pixel, clipped to [0, 1] like the engine's
    normalised input."""
    noise = rng.normal(1.0, std, size=clean.shape).astype(np.float32)
    return np.clip(clean * noise, 0.0, 1.0).astype(np.float32)


def random_crop_flip(image: np.ndarray, crop_px: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``crop_px`` square (whole image if smaller) with random flips, ``(..., H, W)``."""
    height, width = image.shape[-2:]
    size_y, size_x = min(crop_px, height), min(crop_px, width)
    top = int(rng.integers(0, height - size_y + 1))
    left = int(rng.integers(0, width - size_x + 1))
    out = image[..., top : top + size_y, left : left + size_x]
    if rng.random() < 0.5:
        out = out[..., :, ::-1]
    if rng.random() < 0.5:
        out = out[..., ::-1, :]
    return np.ascontiguousarray(out)


def speckle_batch(
    cleans: list[np.ndarray],
    batch_size: int,
    crop_px: int,
    rng: np.random.Generator,
    std: float = SPECKLE_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) float32 ``(N, 1, crop, crop)`` from images at least ``crop_px`` wide."""
    usable = [c for c in cleans if min(c.shape) >= crop_px]
    if not usable:
        raise ValueError(f"no image is at least {crop_px} px on each side")
    picks = rng.integers(0, len(usable), size=batch_size)
    clean = np.stack([random_crop_flip(usable[i], crop_px, rng) for i in picks])[:, None]
    return add_speckle(clean, rng, std), clean
