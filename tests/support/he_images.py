"""Crafted H&E-like images for the realism measures' tests (SWD, C2ST): a tissue-like field,
and the two defects a stain can print, blur and a faint generator grid."""

from __future__ import annotations

import numpy as np


def tissue_like(seed: int, size_px: int = 128, noise: float = 0.02) -> np.ndarray:
    """Pink field with purple blobs and fine noise, ``(H, W, 3)`` float in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    image = np.empty((size_px, size_px, 3), np.float32)
    image[:] = (0.92, 0.6, 0.75)
    image *= (0.9 + 0.1 * np.sin(xx / 6.0 + 2 * np.sin(yy / 9.0)))[..., None]
    for _ in range(size_px * size_px // 300):
        cy, cx, radius = rng.integers(0, size_px), rng.integers(0, size_px), rng.uniform(2, 5)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = (0.35, 0.25, 0.6)
    image += rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def blurred(image: np.ndarray) -> np.ndarray:
    """Two passes of a 3 x 3 box blur (wrapping at the edges)."""
    out = image.copy()
    for _ in range(2):
        out = (out + np.roll(out, 1, 0) + np.roll(out, -1, 0)) / 3
        out = (out + np.roll(out, 1, 1) + np.roll(out, -1, 1)) / 3
    return out


def grid_printed(image: np.ndarray) -> np.ndarray:
    """A faint 4-px grid, the texture a transposed-convolution generator prints."""
    out = image.copy()
    out[::4] *= 0.93
    out[:, ::4] *= 0.93
    return out
