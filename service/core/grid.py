"""The output tile grid and which tiles hold tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.core.filters import otsu_threshold
from service.vocabulary.errors import PixelLimitExceeded

# Normalised FCM + RCM below this is background whatever Otsu says: a slide full of tissue has
# no background class, and Otsu would otherwise split the tissue in two.
MAX_BACKGROUND_LEVEL = 0.1


RESAMPLE_TOLERANCE = 0.10  # resample when the slide's pixel size differs more than this
MIN_WORK_SIDE_PX = 16


def work_size_px(
    width_px: int, height_px: int, mpp_um: float, model_mpp_um: float | None
) -> tuple[int, int]:
    """The size the chain computes: the slide resampled to the models' pixel size when it is
    more than RESAMPLE_TOLERANCE off (the networks see what they were trained on), else its own."""
    if model_mpp_um is None or abs(mpp_um / model_mpp_um - 1.0) <= RESAMPLE_TOLERANCE:
        return width_px, height_px
    scale = mpp_um / model_mpp_um
    return (
        max(MIN_WORK_SIDE_PX, round(width_px * scale)),
        max(MIN_WORK_SIDE_PX, round(height_px * scale)),
    )


def check_work_pixels(
    size_px: tuple[int, int], work_px: tuple[int, int], mpp_um: float, max_pixels: int
) -> None:
    """Refuse a slide whose resampled size exceeds the pixel limit (the work, not the upload,
    is what the limit bounds: 512 x 512 px at 50 um/px is 34133 x 34133 px at 0.75 um/px)."""
    if work_px[0] * work_px[1] <= max_pixels:
        return
    raise PixelLimitExceeded(
        f"the slide is {size_px[0]} x {size_px[1]} px at {mpp_um:g} um/px; resampled to the "
        f"models' pixel size it is {work_px[0]} x {work_px[1]} px "
        f"({work_px[0] * work_px[1]} px), over the limit of {max_pixels} px"
    )


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


def tissue_first(tiles: list[Tile], flags: list[bool]) -> list[Tile]:
    """The tiles to compute (``flags`` true) nearest the tissue's centre first, so a viewer
    watching the stain sees tissue early. Only the order changes: every tile is computed alone
    from its own halo, so the result is the same as in grid order. Ties keep grid order."""
    todo = [tile for tile, flag in zip(tiles, flags, strict=True) if flag]
    if not todo:
        return todo
    centres = np.array(
        [(t.l0_x + t.width_px / 2, t.l0_y + t.height_px / 2) for t in todo], np.float64
    )
    distance = np.hypot(*(centres - centres.mean(axis=0)).T)
    return [todo[i] for i in np.argsort(distance, kind="stable")]
