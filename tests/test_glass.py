"""Glass stays white where it carries faint fluorescence and speckle (issue 22, part 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from support.pairs import confocal_like, write_gray
from support.shared_data import real_crop

from service.core.glass import NO_GLASS_LEVEL, below_glass_to_zero, estimate_glass_level
from service.engine.pipeline import StainSpec, stain_slide
from service.slide import SlideInputs
from service.vocabulary.options import JobOptions

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"
HEIGHT_PX, WIDTH_PX, TILE_PX = 768, 2048, 256
TISSUE_END_PX, FAINT_END_PX = 896, 1536  # tissue | faint glass (computed) | dark glass (skipped)


def faint_glass_pair(folder: Path) -> SlideInputs:
    """Tissue on the left; to its right glass whose FCM carries faint, uneven fluorescence and
    whose RCM carries speckle (as on real mosaics), then dark glass on the far right."""
    rng = np.random.default_rng(5)
    fcm, rcm = confocal_like(HEIGHT_PX, WIDTH_PX, seed=5, tissue_fraction=TISSUE_END_PX / WIDTH_PX)
    xx = np.arange(WIDTH_PX)[None, :].repeat(HEIGHT_PX, 0)
    yy = np.arange(HEIGHT_PX)[:, None].repeat(WIDTH_PX, 1)
    faint = (xx >= TISSUE_END_PX) & (xx < FAINT_END_PX)
    glow = 0.05 + 0.025 * np.sin(xx / 53.0) * np.cos(yy / 41.0)  # uneven mounting-medium glow
    fcm = np.where(faint, glow * rng.normal(1.0, 0.15, fcm.shape), fcm)
    rcm = np.where(faint, 0.07 * rng.gamma(4.0, 0.25, rcm.shape), rcm)  # speckle, mean 0.07
    return SlideInputs(
        rcm=write_gray(folder / "rcm.tif", np.clip(rcm, 0, 1)),
        fcm=write_gray(folder / "fcm.tif", np.clip(fcm, 0, 1)),
    )


def stain(inputs: SlideInputs, output: Path) -> tuple[dict, np.ndarray]:
    options = JobOptions(stages=("median", "gareau", "colour"), compression="lossless")
    spec = StainSpec(models_dir=SHIPPED_MODELS, tile_px=TILE_PX, options=options)
    report = stain_slide(inputs, output, spec).to_dict()
    return report, np.asarray(pyvips.Image.tiffload(str(output)).numpy())


@pytest.fixture(scope="module")
def faint(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlideInputs, dict, np.ndarray]:
    folder = tmp_path_factory.mktemp("faint-glass")
    inputs = faint_glass_pair(folder)
    report, image = stain(inputs, folder / "out.tif")
    return inputs, report, image


def test_faint_fluorescence_on_glass_stains_white(faint) -> None:
    _, report, image = faint
    assert report["glass_level"]["fcm"] > 0.05 and report["glass_level"]["rcm"] > 0.05
    glass = image[:, TISSUE_END_PX + 32 : FAINT_END_PX]  # away from the tissue's edge
    darkest = glass.min(axis=2)
    assert np.percentile(darkest, 1) >= 235, np.percentile(darkest, [0.1, 1, 5, 50])
    assert glass.reshape(-1, 3).mean(axis=0).min() >= 250
    tissue = image[:, : TISSUE_END_PX - 32]
    assert tissue.reshape(-1, 3).mean(axis=0).max() < 235  # the tissue is still stained


def test_skipped_glass_tiles_match_computed_glass_tiles(faint) -> None:
    _, report, image = faint
    assert 0 < report["tiles"]["skipped"] < report["tiles"]["total"]
    computed = image[:, TISSUE_END_PX + 32 : FAINT_END_PX].reshape(-1, 3).mean(axis=0)
    skipped = image[:, -TILE_PX:].reshape(-1, 3).astype(float).mean(axis=0)
    assert np.abs(skipped - report["background_rgb"]).max() < 0.5
    assert np.abs(computed - skipped).max() <= 3


def test_without_the_glass_level_the_faint_glass_takes_tissue_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crafted pair reproduces the fault: without the level its glass is not white."""
    inputs = faint_glass_pair(tmp_path)
    monkeypatch.setattr("service.engine.pipeline.estimate_glass_level", lambda *_: NO_GLASS_LEVEL)
    _, image = stain(inputs, tmp_path / "before.tif")
    darkest = image[:, TISSUE_END_PX + 32 : FAINT_END_PX].min(axis=2)
    assert np.percentile(darkest, 1) < 235


def unit(pixels: np.ndarray) -> np.ndarray:
    from service.core.normalize import estimate_range, normalize

    raw = np.asarray(pixels, np.float32)
    return normalize(raw, estimate_range(raw))


def test_all_tissue_and_clean_glass_get_no_level() -> None:
    fcm, rcm = confocal_like(1024, 2048, tissue_fraction=1.0)
    assert estimate_glass_level(unit(fcm), unit(rcm)) == NO_GLASS_LEVEL  # tissue untouched
    fcm, rcm = confocal_like(1024, 2048, tissue_fraction=0.5)
    assert estimate_glass_level(unit(fcm), unit(rcm)) == NO_GLASS_LEVEL  # glass at 0 already


def test_below_glass_to_zero_keeps_tissue_and_zero() -> None:
    values = np.asarray([0.0, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0], np.float32)
    out = below_glass_to_zero(values, 0.1)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 0.1, 0.2, 0.5, 1.0], atol=1e-6)
    assert below_glass_to_zero(values, 0.0) is values


@pytest.mark.skipif(
    not real_crop("fcm").is_file(),
    reason="the real Vivascope crop is not on this machine",
)
def test_real_crop_all_tissue_gets_no_level() -> None:
    units = []
    for mode in ("fcm", "rcm"):
        pixels = pyvips.Image.new_from_file(str(real_crop(mode)))
        units.append(unit(pixels.numpy()))
    assert estimate_glass_level(*units) == NO_GLASS_LEVEL
