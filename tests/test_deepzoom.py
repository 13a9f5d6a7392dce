"""Deep Zoom tiles cut from a stained pyramid: geometry, pixels, bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips

from service.engine.pipeline import StainSpec, stain_slide
from service.slide.deepzoom import DZ_TILE_PX, DeepZoom, DeepZoomCache, TileNotFound
from service.vocabulary.options import JobOptions


@pytest.fixture
def pyramid(make_pair, tmp_path: Path) -> Path:
    inputs = make_pair(900, 1300)
    output = tmp_path / "stain.tif"
    spec = StainSpec(models_dir=tmp_path, options=JobOptions(compression="lossless"))
    stain_slide(inputs, output, spec)
    return output


def decode(data: bytes) -> np.ndarray:
    return np.asarray(pyvips.Image.new_from_buffer(data, "").numpy())


def test_levels_and_edge_tiles(pyramid: Path) -> None:
    zoom = DeepZoom(pyramid)
    assert (zoom.levels[-1].width_px, zoom.levels[-1].height_px) == (1300, 900)
    assert (zoom.levels[0].width_px, zoom.levels[0].height_px) == (1, 1)
    assert 'Width="1300"' in zoom.dzi_xml() and f'TileSize="{DZ_TILE_PX}"' in zoom.dzi_xml()
    deepest = zoom.levels[-1]
    last = decode(zoom.tile_jpeg(len(zoom.levels) - 1, deepest.columns - 1, deepest.rows - 1))
    assert last.shape[1] == 1300 - ((deepest.columns - 1) * DZ_TILE_PX - 1)
    assert last.shape[0] == 900 - ((deepest.rows - 1) * DZ_TILE_PX - 1)


def test_full_resolution_tile_matches_the_pyramid(pyramid: Path) -> None:
    zoom = DeepZoom(pyramid)
    tile = decode(zoom.tile_jpeg(len(zoom.levels) - 1, 1, 1))
    level0 = np.asarray(pyvips.Image.tiffload(str(pyramid)).numpy())
    x0 = y0 = DZ_TILE_PX - 1
    expected = level0[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]]
    assert np.abs(tile.astype(int) - expected).mean() < 3  # JPEG Q85 of the same pixels


@pytest.mark.parametrize(
    ("level", "column", "row"), [(-1, 0, 0), (99, 0, 0), (11, 99, 0), (11, 0, -1)]
)
def test_out_of_range_tiles_are_refused(pyramid: Path, level: int, column: int, row: int) -> None:
    with pytest.raises(TileNotFound):
        DeepZoom(pyramid).tile_jpeg(level, column, row)


def test_cache_returns_identical_bytes(pyramid: Path) -> None:
    cache = DeepZoomCache(max_tiles=2)
    first = cache.tile(pyramid, 8, 0, 0)
    assert cache.tile(pyramid, 8, 0, 0) == first
    cache.tile(pyramid, 9, 0, 0), cache.tile(pyramid, 10, 0, 0)  # evicts the first
    assert cache.tile(pyramid, 8, 0, 0) == first


def test_evict_forgets_a_pyramid(pyramid: Path) -> None:
    cache = DeepZoomCache()
    zoom = cache.slide(pyramid)
    cache.tile(pyramid, 8, 0, 0)
    cache.evict(pyramid)
    assert cache.slide(pyramid) is not zoom


def test_ome_tiff_pyramid_levels_are_used(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(900, 1300)
    output = tmp_path / "stain.ome.tif"
    spec = StainSpec(models_dir=tmp_path, options=JobOptions(output_format="ome-tiff"))
    stain_slide(inputs, output, spec)
    zoom = DeepZoom(output)
    assert len(zoom.pages) >= 3
    level = zoom.levels[3]
    assert decode(zoom.tile_jpeg(3, 0, 0)).shape[:2] == (level.height_px, level.width_px)
