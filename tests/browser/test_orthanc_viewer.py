"""The archive's own viewer draws a dscm DICOM series: the bundled sample stained with the
default chain (`dscm stain --format dicom`), stored in a real Orthanc, opened in its WSI plugin's
viewer page in headless Chromium.

Backend and precision: the default chain's despeckler runs on whatever `auto` picks here; the
check is that the page draws stained tissue, not a pixel value, so any backend passes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from browser_helpers import REPO, copy_for_docs
from click.testing import CliRunner
from support.orthanc import Orthanc, orthanc_running

from service.cli import main

SAMPLE = REPO / "samples" / "skin-scan"
DRAW_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    yield from orthanc_running(tmp_path_factory)


def stained_fraction(png: bytes) -> float:
    """The share of the page's pixels that are stained tissue (pink to violet, not glass)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return float(np.mean((r - g > 25) & (b - g > 10) & (g < 215)))


def test_orthanc_wsi_viewer_draws_the_stained_slide(
    orthanc: Orthanc, browser: Any, screenshots_dir: Path, tmp_path: Path
) -> None:
    if not SAMPLE.is_dir():
        pytest.skip("the bundled sample is not present")
    output = tmp_path / "sample-dicom"
    result = CliRunner().invoke(
        main, ["stain", str(SAMPLE), "-o", str(output), "--format", "dicom", "--external-id", "S1"]
    )
    assert result.exit_code == 0, result.output
    for path in sorted(output.glob("*.dcm")):
        stored = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=60)
        assert stored.status_code == 200, stored.text
    series = [s for s in orthanc.json("/series") if orthanc.json(f"/series/{s}")]
    series_id = next(
        s for s in series if orthanc.json(f"/series/{s}")["MainDicomTags"].get("Modality") == "SM"
    )
    pyramid = orthanc.json(f"/wsi/pyramids/{series_id}")
    assert pyramid["Sizes"][0] == [2000, 1500]

    browser.get(f"{orthanc.url}/wsi/app/viewer.html?series={series_id}")
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    fraction = 0.0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        png = browser.get_screenshot_as_png()
        fraction = stained_fraction(png)
        if fraction > 0.15:
            break
    shot = screenshots_dir / "orthanc-wsi-viewer.png"
    shot.write_bytes(png)
    copy_for_docs(shot)
    assert fraction > 0.15, f"the viewer drew {fraction:.1%} stained pixels (saved {shot})"
