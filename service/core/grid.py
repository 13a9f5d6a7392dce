"""The output tile grid and which tiles hold tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.core.filters import otsu_threshold

# Normalised FCM + RCM below this is background whatever Otsu says: a slide full of tissue has
# no background class, and Otsu would otherwise split the tissue in two.
MAX_BACKGROUND_LEVEL = 0.1


@dataclass(frozen=True)
class Tile:
    """An output tile: a box of the slide at level 0, clipped to the slide."""

    index: int
    l0_x: int
    l0_y: int
    width_px: int
    height_px: int


def tile_grid(width_px: int, height_px: int, tile_px: int) -> list[Tile]:
    """Row-major tiles covering the whole slide, the last row and column included."""
    tiles: list[Tile] = []
    for l0_y in range(0, height_px, tile_px):
        for l0_x in range(0, width_px, tile_px):
            tiles.append(
                Tile(
                    len(tiles),
                    l0_x,
                    l0_y,
                    min(tile_px, width_px - l0_x),
                    min(tile_px, height_px - l0_y),
                )
            )
    return tiles


def tissue_mask(fcm_unit: np.ndarray, rcm_unit: np.ndarray) -> np.ndarray:
    """Tissue where FCM + RCM (normalised thumbnails) exceed Otsu's threshold (capped)."""
    score = fcm_unit.astype(np.float32) + rcm_unit.astype(np.float32)
    threshold = min(otsu_threshold(score), MAX_BACKGROUND_LEVEL)
    return np.asarray(score > threshold)


def tissue_tiles(
    tiles: list[Tile], mask: np.ndarray, slide_shape_px: tuple[int, int], margin_px: int
) -> list[bool]:
    """For each tile, whether its box grown by ``margin_px`` touches tissue in ``mask``."""
    height_px, width_px = slide_shape_px
    scale_y, scale_x = mask.shape[0] / height_px, mask.shape[1] / width_px
    flags = []
    for tile in tiles:
        y0 = max(0, math.floor((tile.l0_y - margin_px) * scale_y))
        x0 = max(0, math.floor((tile.l0_x - margin_px) * scale_x))
        y1 = math.ceil((tile.l0_y + tile.height_px + margin_px) * scale_y)
        x1 = math.ceil((tile.l0_x + tile.width_px + margin_px) * scale_x)
        flags.append(bool(mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].any()))
    return flags
