"""Generated H&E-like images for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvips
from support.shared_data import SHARED_DATA as SHARED_DATA


def he_like(height: int, width: int, seed: int) -> np.ndarray:
    """Pink stroma with purple nuclei and a little glass: uint8 RGB ``(H, W, 3)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pink = np.array([235, 150, 190], np.float32)
    purple = np.array([90, 60, 150], np.float32)
    fibres = 0.5 + 0.5 * np.sin(xx / 7.0 + 2 * np.sin(yy / 11.0))
    image = pink[None, None] * (0.85 + 0.15 * fibres[..., None])
    for _ in range(max(4, height * width // 400)):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.uniform(2.5, 5.0)
        nucleus = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        image[nucleus] = purple
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).pngsave(str(path))
