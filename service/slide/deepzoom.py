"""Deep Zoom (DZI) tiles cut on the fly from a stained pyramid, for the browser viewer.

Each Deep Zoom level is read from the pyramid level with the largest downsample that does not
exceed it, so a deep-zoom tile never decodes more than about four TIFF tiles.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyvips

from service.slide.reader import pyramid_pages, read_mpp_um
from service.vocabulary.errors import InputError

DZ_TILE_PX = 254
DZ_OVERLAP_PX = 1
DZ_JPEG_QUALITY = 85


class TileNotFound(InputError, LookupError):
    """A level, column or row outside the pyramid."""

    code = "tile_not_found"
    http_status = 404
    title = "Tile not found"


@dataclass(frozen=True)
class DzLevel:
    width_px: int
    height_px: int
    columns: int
    rows: int
    downsample: float


def dz_levels(width_px: int, height_px: int) -> list[DzLevel]:
    """The Deep Zoom levels of a slide of this size, level 0 being 1 x 1 px."""
    max_level = math.ceil(math.log2(max(width_px, height_px, 1)))
    levels: list[DzLevel] = []
    for level in range(max_level + 1):
        downsample = 2.0 ** (max_level - level)
        width = max(1, math.ceil(width_px / downsample))
        height = max(1, math.ceil(height_px / downsample))
        levels.append(
            DzLevel(
                width, height, math.ceil(width / DZ_TILE_PX), math.ceil(height / DZ_TILE_PX),
                downsample,
            )
        )  # fmt: skip
    return levels


def dzi_xml(width_px: int, height_px: int) -> str:
    """The Deep Zoom descriptor of a slide of this size (JPEG tiles, their size and overlap);
    a running job's and its published pyramid's are the same, so the view does not jump."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
        f'Format="jpeg" Overlap="{DZ_OVERLAP_PX}" TileSize="{DZ_TILE_PX}">'
        f'<Size Width="{width_px}" Height="{height_px}"/></Image>'
    )


@dataclass(frozen=True)
class TileCut:
    """Where one Deep Zoom tile comes from: a box of a page (one image of the slide at some
    downsample), the scale from page to tile, and the tile's size."""

    left: int
    top: int
    width: int
    height: int
    scale: float  # page pixels -> tile pixels (<= 1 shrinks)
    tile_width_px: int
    tile_height_px: int


def plan_cut(
    levels: list[DzLevel],
    level: int,
    column: int,
    row: int,
    slide_width_px: int,
    page_size_px: tuple[int, int],
) -> TileCut:
    """The page box behind one Deep Zoom tile (overlap included); TileNotFound outside the
    pyramid. A page of ``page_size_px`` covers the whole slide of ``slide_width_px``."""
    if not 0 <= level < len(levels):
        raise TileNotFound(f"level {level} is outside 0..{len(levels) - 1}")
    dz = levels[level]
    if not (0 <= column < dz.columns and 0 <= row < dz.rows):
        raise TileNotFound(f"tile ({column}, {row}) is outside level {level}")
    x0 = column * DZ_TILE_PX - (DZ_OVERLAP_PX if column else 0)
    y0 = row * DZ_TILE_PX - (DZ_OVERLAP_PX if row else 0)
    x1 = min((column + 1) * DZ_TILE_PX + DZ_OVERLAP_PX, dz.width_px)
    y1 = min((row + 1) * DZ_TILE_PX + DZ_OVERLAP_PX, dz.height_px)
    page_width, page_height = page_size_px
    scale = (slide_width_px / page_width) / dz.downsample
    left = min(int(x0 / scale), page_width - 1)
    top = min(int(y0 / scale), page_height - 1)
    width = max(1, min(math.ceil((x1 - x0) / scale), page_width - left))
    height = max(1, min(math.ceil((y1 - y0) / scale), page_height - top))
    return TileCut(left, top, width, height, scale, x1 - x0, y1 - y0)


def finish_tile(region: pyvips.Image, cut: TileCut) -> bytes:
    """The JPEG of a tile from its page box (``region``, the box ``cut`` names)."""
    # libvips images are immutable and its operations thread-safe: no lock needed
    if cut.scale < 1.0:
        region = region.resize(cut.scale)
    if (region.width, region.height) != (cut.tile_width_px, cut.tile_height_px):
        region = region.thumbnail_image(cut.tile_width_px, height=cut.tile_height_px, size="force")
    return bytes(region.jpegsave_buffer(Q=DZ_JPEG_QUALITY))


class DeepZoom:
    """The Deep Zoom view of one pyramidal TIFF (opened once, thread-safe reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pages = pyramid_pages(path)
        base = self.pages[0]
        self.width_px, self.height_px = base.width, base.height
        self.mpp_um = read_mpp_um(base)
        self.levels = dz_levels(self.width_px, self.height_px)

    def dzi_xml(self) -> str:
        """The Deep Zoom descriptor of the slide (JPEG tiles, their size and overlap)."""
        return dzi_xml(self.width_px, self.height_px)

    def tile_jpeg(self, level: int, column: int, row: int) -> bytes:
        """The JPEG of one Deep Zoom tile; TileNotFound outside the pyramid."""
        if not 0 <= level < len(self.levels):
            raise TileNotFound(f"level {level} is outside 0..{len(self.levels) - 1}")
        page = self._page_for(self.levels[level].downsample)
        cut = plan_cut(self.levels, level, column, row, self.width_px, (page.width, page.height))
        return finish_tile(page.crop(cut.left, cut.top, cut.width, cut.height), cut)

    def _page_for(self, downsample: float) -> pyvips.Image:
        best = self.pages[0]
        for page in self.pages:
            if self.width_px / page.width <= downsample * 1.001:
                best = page
        return best


class DeepZoomCache:
    """A small LRU of opened pyramids and of encoded tiles, shared by request handlers."""

    def __init__(self, max_slides: int = 16, max_tiles: int = 4096) -> None:
        self.max_slides, self.max_tiles = max_slides, max_tiles
        self._slides: OrderedDict[Path, tuple[float, DeepZoom]] = OrderedDict()
        self._tiles: OrderedDict[tuple[Path, float, int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def slide(self, path: Path) -> DeepZoom:
        """The open slide at ``path``, opened again when the file changed; the least recently used
        are dropped beyond max_slides."""
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._slides.get(path)
            if cached and cached[0] == mtime:
                self._slides.move_to_end(path)
                return cached[1]
        zoom = DeepZoom(path)
        with self._lock:
            self._slides[path] = (mtime, zoom)
            while len(self._slides) > self.max_slides:
                self._slides.popitem(last=False)
        return zoom

    def evict(self, path: Path) -> None:
        """Forget a pyramid (and its tiles), e.g. before its files are deleted."""
        with self._lock:
            self._slides.pop(path, None)
            for key in [k for k in self._tiles if k[0] == path]:
                del self._tiles[key]

    def tile(self, path: Path, level: int, column: int, row: int) -> bytes:
        """One JPEG tile, cached by the file's path and mtime (a replaced file is not served stale),
        least recently used evicted first."""
        key = (path, path.stat().st_mtime, level, column, row)
        with self._lock:
            if key in self._tiles:
                self._tiles.move_to_end(key)
                return self._tiles[key]
        data = self.slide(path).tile_jpeg(level, column, row)
        with self._lock:
            self._tiles[key] = data
            while len(self._tiles) > self.max_tiles:
                self._tiles.popitem(last=False)
        return data
