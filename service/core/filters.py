"""Small image filters: the 3x3 median after despeckling and Otsu's threshold."""

from __future__ import annotations

from typing import Literal

import numpy as np


def median3x3(image: np.ndarray) -> np.ndarray:
    """3x3 median over the last two axes with reflected borders (``mode='reflect'``).

    Takes ``(..., H, W)``; used after the despeckling network to remove isolated noisy pixels.
    """
    height, width = image.shape[-2:]
    pad = [(0, 0)] * (image.ndim - 2) + [(1, 1), (1, 1)]
    mode: Literal["reflect", "edge"] = "reflect" if min(height, width) > 1 else "edge"
    return median3x3_valid(np.pad(image, pad, mode=mode))


def median3x3_valid(image: np.ndarray) -> np.ndarray:
    """3x3 median of the pixels whose window lies inside ``(..., H, W)``: ``(..., H-2, W-2)``,
    equal to ``median3x3(image)`` cropped by one pixel (what the chain keeps), without padding.

    Each column's three values are sorted once, then the median of the nine is the median of
    (the largest of the three lows, the median of the three middles, the smallest of the three
    highs): 18 elementwise min/max passes in the image's dtype instead of a 9-deep stack and a
    partition (exact: a median is one of the values).
    """
    top, mid, bottom = image[..., :-2, :], image[..., 1:-1, :], image[..., 2:, :]
    low, high = np.minimum(top, mid), np.maximum(top, mid)
    middle = np.minimum(high, bottom)
    np.maximum(high, bottom, out=high)  # high: the column's largest
    np.maximum(low, middle, out=middle)  # middle: the column's median
    np.minimum(low, bottom, out=low)  # low: the column's smallest
    left, centre, right = (slice(None, -2), slice(1, -1), slice(2, None))
    lows = np.maximum(low[..., left], low[..., centre])
    np.maximum(lows, low[..., right], out=lows)
    highs = np.minimum(high[..., left], high[..., centre])
    np.minimum(highs, high[..., right], out=highs)
    mids = _median3(middle[..., left], middle[..., centre], middle[..., right])
    return _median3(lows, mids, highs)


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Elementwise median of three arrays: max(min(a, b), min(max(a, b), c))."""
    smaller = np.minimum(a, b)
    larger = np.maximum(a, b)
    np.minimum(larger, c, out=larger)
    return np.maximum(smaller, larger, out=smaller)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (any range); a constant input returns that value."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(flat.min()), float(flat.max())
    if high <= low:
        return low
    hist, edges = np.histogram(flat, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def box_mean(image: np.ndarray, size_px: int) -> np.ndarray:
    """Mean over ``size_px`` x ``size_px`` windows (odd size, edges repeated) of ``(H, W)``.

    Separable running sums in float32: several times faster than a 2-D integral image on a
    2048 px thumbnail, accurate to about 1e-5 for values in [0, 1] (the thumbnail checks).
    """
    radius = size_px // 2
    out = np.asarray(image, np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        sums = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float32)
        if axis == 0:
            out = sums[size_px:] - sums[:-size_px]
        else:
            out = sums[:, size_px:] - sums[:, :-size_px]
        out *= np.float32(1.0 / size_px)
    return out
