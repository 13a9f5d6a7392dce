"""The live folder: which tiles of a slide being stained are in its canvases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pyvips

from service.core.grid import tile_grid, tissue_first
from service.engine.pipeline import StainSpec, stain_slide
from service.slide.canvas import DiskCanvas
from service.slide.live import LEDGER_NAME, OVERVIEW_NAME, LivePlan, TileLedger, canvas_name
from service.vocabulary.errors import JobCancelled
from service.vocabulary.options import JobOptions


def test_the_ledger_counts_exactly_the_tiles_written_and_the_canvas_is_the_pyramid(
    make_pair, tmp_path: Path
) -> None:
    """Gareau only (no model), lossless: at every progress call the ledger holds exactly the
    tiles the pipeline reports done; afterwards the canvas equals the pyramid's level 0."""
    inputs = make_pair(700, 1100, tissue_fraction=0.5)
    live = tmp_path / "job.live"
    spec = StainSpec(
        models_dir=tmp_path / "none",
        tile_px=256,
        live_dir=live,
        options=JobOptions(compression="lossless"),
    )
    seen: list[tuple[int, int]] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "tiles":
            with TileLedger(live / LEDGER_NAME, total) as ledger:
                seen.append((done, int(ledger.done().sum())))

    report = stain_slide(inputs, tmp_path / "out.tif", spec, progress).to_dict()
    assert report["tiles"]["skipped"] > 0  # glass tiles are marked too
    assert seen and all(done == marked for done, marked in seen)
    assert seen[-1][0] == report["tiles"]["total"]
    plan = LivePlan.load(live)
    assert (plan.width_px, plan.height_px, plan.tile_px) == (1100, 700, 256)
    assert plan.tiles == len(tile_grid(1100, 700, 256)) == report["tiles"]["total"]
    assert plan.bands == {"stain": 3}
    overview = pyvips.Image.new_from_file(str(live / OVERVIEW_NAME))
    assert overview.bands == 3 and abs(overview.width / overview.height - 1100 / 700) < 0.01
    canvas = pyvips.Image.tiffload(str(live / canvas_name("stain"))).numpy()
    pyramid = pyvips.Image.tiffload(str(tmp_path / "out.tif")).numpy()
    assert np.array_equal(canvas, pyramid)


def test_without_a_live_folder_no_canvas_is_left(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(300, 300)
    stain_slide(inputs, tmp_path / "o.tif", StainSpec(models_dir=tmp_path / "none", tile_px=128))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o.tif")) == []


def test_a_cancelled_stain_leaves_the_ledger_short_of_the_grid(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(512, 512, tissue_fraction=1.0)
    live = tmp_path / "job.live"
    spec = StainSpec(
        models_dir=tmp_path / "none", tile_px=128, skip_background=False, live_dir=live
    )

    def cancel(phase: str, done: int, total: int) -> None:
        if phase == "tiles" and done >= 3:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        stain_slide(inputs, tmp_path / "o.tif", spec, cancel)
    with TileLedger(live / LEDGER_NAME, 16) as ledger:
        assert 3 <= ledger.done().sum() < 16
    assert not (tmp_path / "o.tif").exists()


def test_a_second_process_writes_into_an_existing_canvas(tmp_path: Path) -> None:
    path = tmp_path / "c.tif"
    first = DiskCanvas(path, 40, 30)
    second = DiskCanvas(path, 40, 30, create=False)
    second.write(8, 4, np.full((5, 6, 3), 200, np.uint8))
    first.close()
    second.close()
    image = pyvips.Image.tiffload(str(path)).numpy()
    assert (image[4:9, 8:14] == 200).all() and image.sum() == 200 * 5 * 6 * 3
    with pytest.raises(ValueError, match="not a 80 x 30 x 3 canvas"):
        DiskCanvas(path, 80, 30, create=False)
    with pytest.raises(FileExistsError):
        DiskCanvas(path, 40, 30)


def test_the_ledger_refuses_tiles_outside_its_grid(tmp_path: Path) -> None:
    with TileLedger(tmp_path / "l", 4, create=True) as ledger:
        ledger.mark([0, 3])
        assert ledger.done().tolist() == [True, False, False, True]
        with pytest.raises(IndexError):
            ledger.mark(4)


def test_tissue_tiles_are_computed_from_the_tissue_centre_outwards(
    make_pair, tmp_path: Path
) -> None:
    """Tissue first (issue 20): the tiles nearest the tissue's centre are computed first, and a
    stain watched through a live folder is the same file as one without (whole-image equality
    is test_pipeline's)."""
    tiles = tile_grid(1024, 768, 256)  # 4 x 3
    flags = [tile.l0_y > 0 for tile in tiles]  # tissue in the lower two rows
    order = [tile.index for tile in tissue_first(tiles, flags)]
    assert sorted(order) == [t.index for t in tiles if t.l0_y > 0]
    assert set(order[:4]) == {5, 6, 9, 10}  # the four tiles around the centre (512, 512)
    inputs = make_pair(768, 768, tissue_fraction=1.0)
    live = tmp_path / "job.live"
    spec = StainSpec(models_dir=tmp_path / "none", tile_px=256, skip_background=False)
    first: list[int] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "tiles" and done == 1:
            with TileLedger(live / LEDGER_NAME, total) as ledger:
                first.extend(np.flatnonzero(ledger.done()).tolist())

    stain_slide(inputs, tmp_path / "a.tif", replace(spec, live_dir=live), progress)
    assert first == [4]  # the centre of the 3 x 3 grid
    stain_slide(inputs, tmp_path / "b.tif", spec)
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
