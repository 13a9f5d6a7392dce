"""Deep Zoom of a slide being stained (issue 20): done tiles from the canvas, the rest greyed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from support.pairs import confocal_like, write_gray

from service.engine.pipeline import StainSpec, stain_slide
from service.slide import SlideInputs
from service.slide.deepzoom import DeepZoom, TileNotFound
from service.slide.live import LEDGER_NAME, LivePlan
from service.slide.live_view import LiveSlide, blank_tile, shrink_block
from service.vocabulary.options import JobOptions

WIDTH_PX, HEIGHT_PX = 1300, 900


@pytest.fixture(scope="module")
def stained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A lossless Gareau stain (with its FCM layer) and the live folder it left (the runner,
    not stain_slide, removes it)."""
    folder = tmp_path_factory.mktemp("live-view")
    fcm, rcm = confocal_like(HEIGHT_PX, WIDTH_PX, tissue_fraction=0.7)
    inputs = SlideInputs(write_gray(folder / "rcm.tif", rcm), write_gray(folder / "fcm.tif", fcm))
    spec = StainSpec(
        models_dir=folder / "none",
        tile_px=256,
        live_dir=folder / "job.live",
        options=JobOptions(compression="lossless", layers=("fcm",)),
    )
    stain_slide(inputs, folder / "out.tif", spec)
    return folder / "out.tif", folder / "job.live"


def decode(data: bytes) -> np.ndarray:
    return np.asarray(pyvips.Image.new_from_buffer(data, "").numpy(), np.int16)


def test_a_finished_live_slide_shows_the_published_tiles(stained: tuple[Path, Path]) -> None:
    """Every tile done: the live view has the pyramid's levels and, at full resolution, its
    very pixels; lower levels (shrunk from the canvas or its 1/8 copy) within JPEG tolerance."""
    pyramid, live = stained
    zoom, view = DeepZoom(pyramid), LiveSlide(live, LivePlan.load(live))
    assert view.levels == zoom.levels
    deepest = len(zoom.levels) - 1
    for level, column, row in [(deepest, 1, 1), (deepest, 5, 3), (deepest, 0, 0)]:
        tile = view.tile("stain", level, column, row)
        assert tile.complete
        assert np.array_equal(decode(tile.jpeg), decode(zoom.tile_jpeg(level, column, row)))
    for level in range(deepest - 5, deepest):  # the canvas shrunk 2-4x; the mip, 8-32x
        live_tile = decode(view.tile("stain", level, 0, 0).jpeg)
        published = decode(zoom.tile_jpeg(level, 0, 0))
        assert live_tile.shape == published.shape
        assert np.abs(live_tile - published).mean() < 4, level
    gray = decode(view.tile("fcm", deepest, 2, 2).jpeg)
    assert gray.ndim == 2 or gray.shape[2] == 1


def test_tiles_not_done_are_the_grey_overview_and_incomplete(stained: tuple[Path, Path]) -> None:
    """A ledger with tile 0 not done: the Deep Zoom tiles over it are grey (no colour) and
    incomplete, those beside it unchanged and complete; the view follows the ledger."""
    _, live = stained
    ledger = live / LEDGER_NAME
    saved = ledger.read_bytes()
    try:
        ledger.write_bytes(b"\x00" + saved[1:])
        view = LiveSlide(live, LivePlan.load(live))
        deepest = len(view.levels) - 1
        over = view.tile("stain", deepest, 0, 0)  # inside grid tile 0 (256 px)
        assert not over.complete
        pixels = decode(over.jpeg)
        assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3  # grey, not stained
        beside = view.tile("stain", deepest, 2, 2)  # grid tiles 5..10: done
        assert beside.complete
        whole = view.tile("stain", 0, 0, 0)  # the mip holds tile 0 greyed
        assert not whole.complete
        ledger.write_bytes(saved)
        assert view.tile("stain", deepest, 0, 0).complete
        assert view.tile("stain", 0, 0, 0).complete
    finally:
        ledger.write_bytes(saved)


def test_outside_the_pyramid_and_unknown_outputs_are_refused(stained: tuple[Path, Path]) -> None:
    _, live = stained
    view = LiveSlide(live, LivePlan.load(live))
    with pytest.raises(TileNotFound):
        view.tile("stain", 99, 0, 0)
    with pytest.raises(TileNotFound):
        view.tile("stain", len(view.levels) - 1, 99, 0)
    with pytest.raises(KeyError):
        view.tile("gareau", 0, 0, 0)
    with pytest.raises(TileNotFound):
        blank_tile(WIDTH_PX, HEIGHT_PX, 12, 0, 99)
    blank = blank_tile(WIDTH_PX, HEIGHT_PX, 11, 5, 3)
    assert decode(blank.jpeg).shape[:2] == (900 - 3 * 254 + 1, 1300 - 5 * 254 + 1)


def test_a_block_shrinks_by_box_average_with_padded_edges() -> None:
    block = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3, 1)
    small = shrink_block(block, 2)
    assert small.shape == (3, 2, 1)
    assert small[0, 0, 0] == round((0 + 1 + 3 + 4) / 4)
    assert small[2, 1, 0] == 14  # the last pixel, repeated


def test_a_resampled_slide_is_shown_at_its_own_size(tmp_path: Path) -> None:
    """Stained at half its size (work coordinates), the live view keeps the slide's levels and
    scales the canvas back: a full-resolution tile has the published geometry and colour."""
    from service.slide.canvas import DiskCanvas
    from service.slide.live import TileLedger, canvas_name

    plan = LivePlan(1000, 800, 500, 400, 256, 4, 0.375, {"stain": 3})
    canvas = DiskCanvas(tmp_path / canvas_name("stain"), 500, 400)
    canvas.write(0, 0, np.full((400, 500, 3), (200, 40, 160), np.uint8))
    canvas.close()
    plan.save(tmp_path)
    with TileLedger(tmp_path / LEDGER_NAME, 4, create=True) as ledger:
        ledger.mark([0, 1, 2])  # tile 3 (bottom right) not yet
    view = LiveSlide(tmp_path, LivePlan.load(tmp_path))
    assert len(view.levels) == 11 and view.levels[-1].width_px == 1000
    top_left = view.tile("stain", 10, 0, 0)
    pixels = decode(top_left.jpeg)
    assert top_left.complete and pixels.shape == (255, 255, 3)
    assert np.abs(pixels.mean(axis=(0, 1)) - (200, 40, 160)).max() < 4
    bottom_right = view.tile("stain", 10, 3, 3)
    assert not bottom_right.complete
    corner = decode(bottom_right.jpeg)[-40:, -40:]
    assert np.abs(corner[..., 0] - corner[..., 1]).mean() < 3  # grey: not stained yet
