"""Deep Zoom of a slide while it is being stained: the tiles its live folder's ledger marks done,
cut from the canvases, and the slide's overview, greyed, everywhere else.

The same levels and the same tile geometry as the published pyramid's (service.slide.deepzoom),
so a viewer that switches to the pyramid when the job succeeds sees no jump. A tile is read only
where the ledger said done *before* its pixels were read: a half-written tile is never shown.
Levels that shrink the slide 8 times or more come from a per-slide copy at 1/8 (a "mip"), which
takes each tile once, when it is first seen done.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips

from service.slide.canvas import read_canvas
from service.slide.deepzoom import TileCut, dz_levels, finish_tile, plan_cut
from service.slide.live import OVERVIEW_NAME, LivePlan, canvas_name, read_done

MIP_FACTOR = 8  # the mip is the work image shrunk this many times
BLANK_GREY = 236  # the placeholder before the slide has an overview
MAX_COMPLETE_TILES = 1024  # per slide: finished tiles, kept encoded (20-30 kB each)


@dataclass(frozen=True)
class LiveTile:
    """One Deep Zoom tile of a running job: its JPEG, and whether every grid tile behind it
    was done (a complete tile never changes; an incomplete one will)."""

    jpeg: bytes
    complete: bool


def blank_tile(width_px: int, height_px: int, level: int, column: int, row: int) -> LiveTile:
    """A plain grey tile where the slide has no plan yet (a queued job); TileNotFound outside
    the pyramid of a slide of this size."""
    cut = plan_cut(dz_levels(width_px, height_px), level, column, row, width_px, (1, 1))
    grey = pyvips.Image.black(cut.tile_width_px, cut.tile_height_px, bands=3) + BLANK_GREY
    return LiveTile(bytes(grey.cast("uchar").jpegsave_buffer(Q=85)), complete=False)


def shrink_block(block: np.ndarray, factor: int) -> np.ndarray:
    """``(h, w, bands)`` uint8 averaged over ``factor`` x ``factor`` boxes (edges padded by
    repeating the last row and column), rounded; integer sums, rows then columns (fast)."""
    height, width, bands = block.shape
    rows, columns = -(-height // factor), -(-width // factor)
    if (rows * factor, columns * factor) != (height, width):
        pad = ((0, rows * factor - height), (0, columns * factor - width), (0, 0))
        block = np.pad(block, pad, mode="edge")
    sums = block.reshape(rows, factor, columns * factor * bands).sum(axis=1, dtype=np.uint32)
    sums = sums.reshape(rows, columns, factor, bands).sum(axis=2, dtype=np.uint32)
    area = factor * factor
    return ((sums + area // 2) // area).astype(np.uint8)


def grey_overview(folder: Path) -> pyvips.Image | None:
    """The overview, greyed and lightened, so tiles still to come read as "not yet"; None when
    the folder has none."""
    try:
        overview = pyvips.Image.new_from_file(str(folder / OVERVIEW_NAME), access="sequential")
        grey = overview.colourspace("b-w")[0].copy_memory()
    except (OSError, pyvips.Error):
        return None
    return (grey * 0.45 + 255 * 0.55).cast("uchar")


class _LiveLayer:
    """One output's canvas and its mip (placeholder where a tile is not taken yet)."""

    def __init__(self, plan: LivePlan, canvas: Path, bands: int, grey: pyvips.Image) -> None:
        """``grey``: the greyed overview, any size (stretched over the slide)."""
        self.plan, self.canvas, self.bands = plan, canvas, bands
        if bands == 3:
            grey = grey.bandjoin([grey, grey])
        work = (plan.work_width_px, plan.work_height_px)
        self.placeholder = stretch(grey, *work)  # lazy: only the crops asked for are computed
        mip = stretch(grey, *self.mip_size).numpy()
        self.mip = np.ascontiguousarray(mip.reshape(self.mip_size[1], self.mip_size[0], bands))
        self.taken = np.zeros(plan.tiles, bool)
        self.lock = threading.Lock()

    @property
    def mip_size(self) -> tuple[int, int]:
        """The mip's (width, height) in pixels."""
        plan = self.plan
        return -(-plan.work_width_px // MIP_FACTOR), -(-plan.work_height_px // MIP_FACTOR)

    def pixels(self) -> np.ndarray:
        """The canvas, memory-mapped."""
        plan = self.plan
        return read_canvas(self.canvas, plan.work_width_px, plan.work_height_px, self.bands)

    def take(self, done: np.ndarray) -> np.ndarray:
        """Shrink the newly done tiles into the mip; the tiles the mip now holds."""
        plan = self.plan
        with self.lock:
            new = np.flatnonzero(done & ~self.taken)
            if len(new):
                canvas = self.pixels()
                for index in new.tolist():
                    x, y = tile_origin(plan, index)
                    block = canvas[y : y + plan.tile_px, x : x + plan.tile_px]
                    small = shrink_block(np.asarray(block), MIP_FACTOR)
                    mx, my = x // MIP_FACTOR, y // MIP_FACTOR
                    self.mip[my : my + small.shape[0], mx : mx + small.shape[1]] = small
                self.taken[new] = True
            return self.taken.copy()

    def mip_region(self, cut: TileCut) -> np.ndarray:
        """A copy of a box of the mip (under the lock: no tile is half taken in it)."""
        with self.lock:
            return self.mip[cut.top : cut.top + cut.height, cut.left : cut.left + cut.width].copy()


def stretch(image: pyvips.Image, width_px: int, height_px: int) -> pyvips.Image:
    """``image`` resized to exactly ``width_px`` x ``height_px`` (bilinear), as uchar."""
    resized = image.resize(width_px / image.width, vscale=height_px / image.height, kernel="linear")
    return resized.embed(0, 0, width_px, height_px, extend="copy").cast("uchar")


def tile_origin(plan: LivePlan, index: int) -> tuple[int, int]:
    """The work-image (x, y) of grid tile ``index`` (row-major, service.core.grid.tile_grid)."""
    row, column = divmod(index, plan.columns)
    return column * plan.tile_px, row * plan.tile_px


def grid_span(plan: LivePlan, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The indices of the grid tiles that a work-image box [x0, x1) x [y0, y1) touches."""
    first_column, last_column = x0 // plan.tile_px, (max(x1, x0 + 1) - 1) // plan.tile_px
    first_row, last_row = y0 // plan.tile_px, (max(y1, y0 + 1) - 1) // plan.tile_px
    rows = np.arange(first_row, last_row + 1)[:, None]
    columns = np.arange(first_column, min(last_column, plan.columns - 1) + 1)[None, :]
    return (rows * plan.columns + columns).ravel()


class LiveSlide:
    """The Deep Zoom view of one live folder; thread-safe, one per running attempt."""

    def __init__(self, folder: Path, plan: LivePlan) -> None:
        self.folder, self.plan = folder, plan
        self.levels = dz_levels(plan.width_px, plan.height_px)
        grey = grey_overview(folder)
        self._grey = grey if grey is not None else (pyvips.Image.black(1, 1) + BLANK_GREY)
        self._layers: dict[str, _LiveLayer] = {}
        self._complete: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def layer(self, name: str) -> _LiveLayer:
        """The live state of one output; KeyError for an output the stain does not write."""
        bands = self.plan.bands[name]
        with self._lock:
            if name not in self._layers:
                canvas = self.folder / canvas_name(name)
                self._layers[name] = _LiveLayer(self.plan, canvas, bands, self._grey)
            return self._layers[name]

    def tile(self, name: str, level: int, column: int, row: int) -> LiveTile:
        """One Deep Zoom tile of output ``name``: KeyError for an output not written,
        TileNotFound outside the pyramid, OSError when the live folder went away."""
        key = (name, level, column, row)
        with self._lock:
            if key in self._complete:
                self._complete.move_to_end(key)
                return LiveTile(self._complete[key], complete=True)
        layer = self.layer(name)
        done = read_done(self.folder, self.plan.tiles)  # before any pixel is read
        plan = self.plan
        if not 0 <= level < len(self.levels):
            plan_cut(self.levels, level, column, row, plan.width_px, (1, 1))  # raises
        work_per_px = self.levels[level].downsample * plan.work_width_px / plan.width_px
        if work_per_px >= MIP_FACTOR:
            taken = layer.take(done)
            cut = plan_cut(self.levels, level, column, row, plan.width_px, layer.mip_size)
            region = layer.mip_region(cut)
            box = [v * MIP_FACTOR for v in (cut.left, cut.top, cut.width, cut.height)]
            complete = bool(
                taken[grid_span(plan, box[0], box[1], box[0] + box[2], box[1] + box[3])].all()
            )
        else:
            size = (plan.work_width_px, plan.work_height_px)
            cut = plan_cut(self.levels, level, column, row, plan.width_px, size)
            region, complete = self._canvas_region(layer, cut, done)
        interpretation = "srgb" if layer.bands == 3 else "b-w"
        image = pyvips.Image.new_from_array(region, interpretation=interpretation)
        jpeg = finish_tile(image, cut)
        if complete:
            with self._lock:
                self._complete[key] = jpeg
                while len(self._complete) > MAX_COMPLETE_TILES:
                    self._complete.popitem(last=False)
        return LiveTile(jpeg, complete)

    def _canvas_region(
        self, layer: _LiveLayer, cut: TileCut, done: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """The canvas box of ``cut``, with the placeholder over the tiles not done."""
        plan = self.plan
        x0, y0 = cut.left, cut.top
        x1, y1 = x0 + cut.width, y0 + cut.height
        region = np.array(layer.pixels()[y0:y1, x0:x1])
        span = grid_span(plan, x0, y0, x1, y1)
        for index in span[~done[span]].tolist():
            tx, ty = tile_origin(plan, index)
            left, top = max(tx, x0), max(ty, y0)
            right, bottom = min(tx + plan.tile_px, x1), min(ty + plan.tile_px, y1)
            grey = layer.placeholder.crop(left, top, right - left, bottom - top).numpy()
            region[top - y0 : bottom - y0, left - x0 : right - x0] = grey.reshape(
                bottom - top, right - left, layer.bands
            )
        return region, bool(done[span].all())
