"""A synthetic 15000 x 10000 pair, stained whole: the size a Vivascope slide has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from support.slides import write_slide_pair as write_pair

from service.engine.pipeline import StainSpec, stain_slide
from service.vocabulary.options import JobOptions

WIDTH_PX, HEIGHT_PX, MPP_UM = 15000, 10000, 0.6


@pytest.mark.slow
def test_15000_by_10000_slide(tmp_path: Path) -> None:
    inputs = write_pair(tmp_path, WIDTH_PX, HEIGHT_PX, mpp_um=MPP_UM)
    output = tmp_path / "out.tif"
    report = stain_slide(
        inputs,
        output,
        StainSpec(options=JobOptions(stages=("median", "gareau")), models_dir=tmp_path),
    )
    data = report.to_dict()
    slide = openslide.OpenSlide(str(output))
    assert slide.dimensions == (WIDTH_PX, HEIGHT_PX)
    assert slide.level_count >= 5
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP_UM, rel=1e-3)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP_UM, rel=1e-3)
    for level in range(slide.level_count):
        width, height = slide.level_dimensions[level]
        scale = slide.level_downsamples[level]
        for x, y in ((0, 0), (width - 40, 0), (0, height - 40), (width - 40, height - 40)):
            region = np.asarray(
                slide.read_region((int(x * scale), int(y * scale)), level, (40, 40))
            )
            assert region[..., 3].min() == 255, (level, x, y)  # inside the slide everywhere
            assert region[..., :3].std() > 1.0, (level, x, y)  # stained content, not a fill
    with tifffile.TiffFile(output) as tif:
        shapes = [p.shape[:2] for p in tif.pages]
    assert shapes == [(h, w) for w, h in slide.level_dimensions]
    assert len(data["levels"]) == slide.level_count
