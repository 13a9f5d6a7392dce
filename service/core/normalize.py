"""Robust per-mode intensity normalisation to [0, 1].

Confocal exports are 8- or 16-bit (or float) and rarely use their full range; percentiles taken
from a low-resolution pass over the whole slide map each mode to [0, 1] the same way for every
tile, so tiles agree with each other and training (which calls the same functions) agrees with
inference.
"""

from __future__ import annotations

import numpy as np

from service.vocabulary.report import IntensityRange

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def estimate_range(thumbnail: np.ndarray) -> IntensityRange:
    """Percentile range of a low-resolution view of one mode.

    A flat image (high == low) gets a range one unit wide, or one part in a million of its
    level where a unit is lost to rounding (floats near 3e38), so that it maps to a constant
    instead of dividing by zero.
    """
    values = np.asarray(thumbnail, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return IntensityRange(0.0, 1.0)
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        high = low + max(1.0, abs(float(low)) * 1e-6)
    return IntensityRange(float(low), float(high))


def normalize(pixels: np.ndarray, intensity: IntensityRange) -> np.ndarray:
    """Map raw pixels to float32 in [0, 1] with the slide-wide range."""
    scale = np.float32(1.0 / (intensity.high - intensity.low))
    with np.errstate(over="ignore"):  # float extremes overflow to inf, clipped to 1 below
        out = np.subtract(
            np.asarray(pixels, np.float32), np.float32(intensity.low), dtype=np.float32
        )
    out *= scale
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)
