"""Gareau's stain and the colour stage fused into one lookup table per slide.

After the networks, every output pixel is a function of two numbers only: the pixel's FCM and
(despeckled) RCM in [0, 1]. The glass ramp (service.core.glass), Gareau's stain, the tissue
weight and the colour transfer in CIELab are all per pixel and fixed once the slide's glass
level and colour statistics are measured. So the chain evaluates them once, on a grid of
(FCM, RCM) values, and each tile looks its pixels up: a few passes over the tile instead of
the RGB -> Lab -> RGB maths per pixel (everything but the network: 0.76 s -> 0.09 s per
1024 px tile on a loaded 2-core AVX2 machine, docs/performance.md).

Nearest grid point, LUT_STEPS steps per axis: 59-60 dB PSNR against the direct computation
on the bundled scan, the real crop and uniform noise, at most one level of 255 apart
(tests/test_stain_lut.py holds it to 45 dB). Zero input is a grid point: glass stays exactly
the direct computation's white.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.colour import ColourTransfer, tissue_weight
from service.core.glass import GlassLevel, below_glass_to_zero
from service.core.stain import gareau_stain

LUT_STEPS = 512  # grid steps per axis over [0, 1]; 256: 55-57 dB, 1024: 61-63 dB (measured)


def gareau_colour(
    fcm: np.ndarray, rcm: np.ndarray, glass: GlassLevel, transfer: ColourTransfer | None
) -> np.ndarray:
    """The direct computation: glass ramp, Gareau, then the weighted colour transfer (when
    given), on ``(..., H, W)`` FCM and RCM in [0, 1]; ``(..., 3, H, W)`` float32 RGB."""
    fcm = below_glass_to_zero(fcm, glass.fcm)
    rcm = below_glass_to_zero(rcm, glass.rcm)
    rgb = gareau_stain(fcm, rcm)
    if transfer is None:
        return rgb
    return transfer.apply(rgb, tissue_weight(fcm, rcm))


@dataclass(frozen=True, eq=False)
class StainLut:
    """RGB of every (FCM, RCM) grid point, float32 and rounded to uint8, with the glass level
    and colour transfer it was built for."""

    glass: GlassLevel
    transfer: ColourTransfer | None
    steps: int
    rgb_f32: np.ndarray  # (3, (steps + 1) ** 2): one row per channel, for np.take per channel
    rgb_u8: np.ndarray  # ((steps + 1) ** 2, 3): one gather gives (..., 3) pixels

    @classmethod
    def build(
        cls, glass: GlassLevel, transfer: ColourTransfer | None, steps: int = LUT_STEPS
    ) -> StainLut:
        """Evaluate the direct computation on the ``(steps + 1) ** 2`` grid (about 0.1 s)."""
        axis = np.arange(steps + 1, dtype=np.float32) / np.float32(steps)
        fcm, rcm = np.meshgrid(axis, axis, indexing="ij")
        rgb = gareau_colour(fcm, rcm, glass, transfer).reshape(3, -1)
        rgb_u8 = (np.clip(rgb, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
        return cls(
            glass, transfer, steps, np.ascontiguousarray(rgb), np.ascontiguousarray(rgb_u8.T)
        )

    def fits(self, glass: GlassLevel, transfer: ColourTransfer | None) -> bool:
        """Whether this table was built for that glass level and transfer."""
        return self.glass == glass and self.transfer == transfer

    def index(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """Each pixel's nearest grid point as a flat int32 index, ``(..., H, W)``; values are
        clipped to [0, 1] (the chain's are already)."""
        scale, half = np.float32(self.steps), np.float32(0.5)
        index = np.empty(fcm.shape, np.int32)
        scratch = np.multiply(fcm, scale, dtype=np.float32)
        np.clip(scratch, 0.0, scale, out=scratch)
        scratch += half
        np.copyto(index, scratch, casting="unsafe")  # truncation of x + 0.5 >= 0: rounding
        index *= self.steps + 1
        np.multiply(rcm, scale, out=scratch, dtype=np.float32)
        np.clip(scratch, 0.0, scale, out=scratch)
        scratch += half
        index += scratch.astype(np.int32)
        return index

    def uint8_hwc(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` FCM and RCM -> ``(N, H, W, 3)`` uint8 RGB, as ``to_uint8_hwc`` of the
        direct computation rounds it."""
        return self.rgb_u8[self.index(fcm, rcm)]

    def float_chw(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` FCM and RCM -> ``(N, 3, H, W)`` float32 RGB in [0, 1] (the
        generator's input)."""
        index = self.index(fcm, rcm)
        out = np.empty((index.shape[0], 3, *index.shape[1:]), np.float32)
        for item in range(index.shape[0]):
            for channel in range(3):
                np.take(self.rgb_f32[channel], index[item], out=out[item, channel])
        return out
