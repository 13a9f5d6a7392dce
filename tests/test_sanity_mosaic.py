"""The input check on a slide many times larger than its thumbnail (issue 22, part 1): measured
on full-resolution windows over the tissue, so a swapped mosaic is refused as a swapped field
is (on the 2048 px thumbnail of a 10000 px mosaic nuclei and speckle are averaged away and the
swap was at most flagged). pyvips files, numpy measures; no networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from engine_fixtures import SAMPLE_SCAN

from service.core.grid import tissue_mask
from service.slide import SlideInputs, open_pair
from service.slide.inspect import (
    WINDOW_PX,
    check_pair,
    inspect_pair,
    measure_thumbnails,
    tissue_windows,
    window_centres,
)
from service.vocabulary.errors import InputsSwapped

SAMPLE = SlideInputs(
    rcm=SAMPLE_SCAN / "DET#1" / "highres_raw.tif", fcm=SAMPLE_SCAN / "DET#2" / "highres_raw.tif"
)
REPEATS = 5  # 10000 x 7500 px: the thumbnail is 5x smaller, where the swap used to read ok


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> SlideInputs:
    """The bundled sample repeated REPEATS x REPEATS times, as tiled 16-bit TIFFs."""
    folder = tmp_path_factory.mktemp("mosaic")
    paths = {}
    for mode in ("rcm", "fcm"):
        field = pyvips.Image.new_from_file(str(getattr(SAMPLE, mode)))
        tiled = pyvips.Image.arrayjoin([field] * REPEATS**2, across=REPEATS)
        paths[mode] = folder / f"{mode}.tif"
        tiled.tiffsave(str(paths[mode]), tile=True, xres=1000 / 0.75, yres=1000 / 0.75)
    return SlideInputs(rcm=paths["rcm"], fcm=paths["fcm"])


def test_a_swapped_mosaic_is_refused_and_the_right_way_round_passes(mosaic: SlideInputs) -> None:
    right = check_pair(mosaic, allow_swapped=False, max_pixels=10**10)
    assert right.outcome == "ok" and right.evidence > 0.3  # the sample itself reads +0.47
    with pytest.raises(InputsSwapped):
        check_pair(SlideInputs(rcm=mosaic.fcm, fcm=mosaic.rcm), False, 10**10)
    allowed = check_pair(SlideInputs(rcm=mosaic.fcm, fcm=mosaic.rcm), True, 10**10)
    assert allowed.outcome == "swapped" and allowed.evidence == pytest.approx(-right.evidence)


def test_the_thumbnail_alone_misses_that_swap(mosaic: SlideInputs) -> None:
    """Why the windows: on the mosaic's thumbnail the same swap is at most flagged (at 7 x 7
    repeats, 14000 px, it reads ok: docs/models.md)."""
    _, rcm, fcm = open_pair(SlideInputs(rcm=mosaic.fcm, fcm=mosaic.rcm), 10**10)
    _, thumbs = measure_thumbnails(fcm, rcm)
    mask = tissue_mask(thumbs["fcm"], thumbs["rcm"])
    from service.core.sanity import check_modes

    on_thumbnail = check_modes(thumbs["fcm"], thumbs["rcm"], mask)
    assert on_thumbnail.outcome in ("ok", "doubtful") and on_thumbnail.evidence > -0.3


def test_windows_lie_on_tissue_spread_over_it_and_only_for_a_reduced_thumbnail(
    mosaic: SlideInputs,
) -> None:
    _, rcm, fcm = open_pair(mosaic, 10**10)
    _, thumbs = measure_thumbnails(fcm, rcm)
    mask = tissue_mask(thumbs["fcm"], thumbs["rcm"])
    centres = window_centres(mask)
    assert 8 <= len(centres) <= 16 and all(mask[y, x] for y, x in centres)
    ys, xs = np.asarray(centres).T
    assert np.ptp(ys) > mask.shape[0] / 2 and np.ptp(xs) > mask.shape[1] / 2
    windows = tissue_windows((fcm, rcm), mask)
    assert len(windows) == len(centres)
    assert all(w.fcm.shape == w.rcm.shape == w.tissue.shape == (WINDOW_PX,) * 2 for w in windows)
    assert np.mean([w.tissue.mean() for w in windows]) > 0.5
    # the bundled sample fits its thumbnail: measured whole, no windows
    _, rcm1, fcm1 = open_pair(SAMPLE, 10**10)
    _, small = measure_thumbnails(fcm1, rcm1)
    assert tissue_windows((fcm1, rcm1), tissue_mask(small["fcm"], small["rcm"])) == []
    assert window_centres(np.zeros((64, 64), bool)) == []


def test_the_engine_plan_uses_the_windows(mosaic: SlideInputs, tmp_path: Path) -> None:
    """inspect_pair, which stain_slide's plan and the API's pre-check both call, refuses it."""
    _, rcm, fcm = open_pair(SlideInputs(rcm=mosaic.fcm, fcm=mosaic.rcm), 10**10)
    with pytest.raises(InputsSwapped) as refused:
        inspect_pair(fcm, rcm, allow_swapped=False)
    assert "--allow-swapped" in refused.value.detail
