"""The slide's glass level: keep glass white where it carries faint signal.

Real mosaics often show faint fluorescence (mounting medium, out-of-focus dye) and speckle on
the glass. Percentile normalisation maps the darkest glass to 0 but leaves the rest of the glass
at a few hundredths, where Gareau's stain is already off-white and the colour stage's tissue
weight (FCM + RCM above 0.10) starts to give it the tissue's colour: pink glass. Measured once
per slide on the normalised thumbnails, the glass level of each mode is where the glass ends;
before Gareau every value below it becomes 0 (white), and the ramp from there back to the
identity at twice the level leaves tissue untouched. Zero input stays zero, so tiles skipped
as background (the chain's colour for zero input) keep matching computed glass tiles.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.filters import box_mean, otsu_threshold
from service.vocabulary.report import GlassLevelSummary

# Measured on the bundled sample (glass level FCM/RCM ~0.01: output unchanged), the real crop
# (all tissue: no glass found, no level) and the crafted faint-fluorescence pair of
# tests/test_glass.py (glass at 0.05-0.15: white afterwards).
GLASS_SMOOTH_PX = 5  # what the despeckler + median leave of speckle, roughly
# Only glass this far from anything brighter: 2 % of the thumbnail's longer side, at least
# 7 px. Dim pockets inside tissue (which Otsu puts with the glass) are narrower than that.
GLASS_ERODE_FRACTION = 0.02
GLASS_MIN_ERODE_PX = 7
GLASS_MAX_SUM = 0.3  # smoothed FCM + RCM above this is never glass (as quality.OUTPUT_TISSUE_CAP)
GLASS_MIN_FRACTION = 0.03  # less glass than this on the thumbnail: no level (all tissue)
GLASS_PERCENTILE = 99.0  # where the glass ends
MAX_GLASS_LEVEL = 0.15  # a level above this is not glass but dim tissue: capped


@dataclass(frozen=True)
class GlassLevel:
    """Per mode, the normalised value below which the slide shows glass (0: none measured)."""

    fcm: float = 0.0
    rcm: float = 0.0

    def summary(self) -> GlassLevelSummary:
        """The glass levels rounded for the report."""
        return GlassLevelSummary(fcm=round(self.fcm, 4), rcm=round(self.rcm, 4))


NO_GLASS_LEVEL = GlassLevel()


def estimate_glass_level(fcm_unit: np.ndarray, rcm_unit: np.ndarray) -> GlassLevel:
    """The glass level of each mode from normalised thumbnails ``(H, W)`` in [0, 1].

    Glass: smoothed FCM + RCM below Otsu's threshold (at most 0.3), eroded away from tissue,
    at least 3 % of the thumbnail (and tissue at least 3 %). Its level per mode is the 99th
    percentile of the smoothed mode over it, at most 0.15; no glass gives 0 (no change).
    """
    fcm = box_mean(np.asarray(fcm_unit, np.float32), GLASS_SMOOTH_PX)
    rcm = box_mean(np.asarray(rcm_unit, np.float32), GLASS_SMOOTH_PX)
    score = fcm + rcm
    below = score < min(otsu_threshold(score[::2, ::2]), GLASS_MAX_SUM)
    erode_px = max(GLASS_MIN_ERODE_PX, round(GLASS_ERODE_FRACTION * max(score.shape))) | 1
    glass = box_mean(below.astype(np.float32), erode_px) > 0.999
    if glass.mean() < GLASS_MIN_FRACTION or below.mean() > 1 - GLASS_MIN_FRACTION:
        return NO_GLASS_LEVEL
    return GlassLevel(_upper_end(fcm[glass]), _upper_end(rcm[glass]))


def _upper_end(values: np.ndarray) -> float:
    """Where the glass ends: its 99th percentile, at most MAX_GLASS_LEVEL."""
    return min(float(np.percentile(values, GLASS_PERCENTILE)), MAX_GLASS_LEVEL)


def below_glass_to_zero(values: np.ndarray, level: float) -> np.ndarray:
    """0 up to ``level``, a ramp from there to the identity at ``2 level``, unchanged above."""
    if level <= 0:
        return values
    x = np.asarray(values, np.float32)
    ramp = np.clip(np.float32(2.0) * (x - np.float32(level)), 0.0, None)
    return np.where(x >= np.float32(2.0 * level), x, ramp).astype(np.float32, copy=False)
