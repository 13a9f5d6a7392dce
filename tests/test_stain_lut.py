"""The per-slide table of Gareau + colour (service.core.stain_lut) against the direct per-pixel
computation: within 45 dB PSNR on crafted and real tiles, glass exactly white."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_factory import make_colour_card
from PIL import Image
from support.inference import psnr_db
from support.pairs import confocal_like
from support.shared_data import real_crop

from service.core.chain import StainChain, to_uint8_hwc
from service.core.colour import ColourTransfer, LabStats, load_colour_target
from service.core.glass import NO_GLASS_LEVEL, GlassLevel
from service.core.normalize import estimate_range, normalize
from service.core.stain_lut import StainLut, gareau_colour

MIN_PSNR_DB = 45.0
SLIDE_LAB = LabStats((55.0, 40.0, -45.0), (14.0, 12.0, 9.0))  # Gareau-violet tissue
GLASSY = GlassLevel(fcm=0.06, rcm=0.05)


@pytest.fixture
def chain(tmp_path: Path) -> StainChain:
    """Median, Gareau and colour (the test card), fitted to a Gareau-violet slide."""
    target = load_colour_target(make_colour_card(tmp_path))
    chain = StainChain(("median", "gareau", "colour"), colour=target)
    chain.colour_transfer = ColourTransfer.fit(SLIDE_LAB, target.lab)
    return chain


def crafted() -> tuple[np.ndarray, np.ndarray]:
    fcm, rcm = confocal_like(384, 512, seed=3, tissue_fraction=0.7)
    return fcm[None], rcm[None]


def real() -> tuple[np.ndarray, np.ndarray]:
    if not real_crop("fcm").is_file():
        pytest.skip("the shared real crop is not here")
    modes = []
    for mode in ("fcm", "rcm"):
        gray = np.asarray(Image.open(real_crop(mode)).convert("L"), np.float32)
        modes.append(normalize(gray, estimate_range(gray))[None])
    return modes[0], modes[1]


def noise() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.random((1, 256, 256), np.float32), rng.random((1, 256, 256), np.float32)


@pytest.mark.parametrize("make", [crafted, real, noise], ids=["crafted", "real", "noise"])
@pytest.mark.parametrize("glass", [NO_GLASS_LEVEL, GLASSY], ids=["no-glass", "glass-level"])
def test_the_table_gives_the_direct_stain(chain: StainChain, make, glass: GlassLevel) -> None:
    fcm, rcm = make()
    lut = StainLut.build(glass, chain.colour_transfer)
    direct = gareau_colour(fcm, rcm, glass, chain.colour_transfer)
    assert psnr_db(lut.float_chw(fcm, rcm), direct) >= MIN_PSNR_DB
    got, want = lut.uint8_hwc(fcm, rcm), to_uint8_hwc(direct)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert psnr_db(got, want, 255.0) >= MIN_PSNR_DB
    assert np.abs(got.astype(int) - want).max() <= 2


def test_the_chain_stains_as_before_and_glass_stays_white(chain: StainChain) -> None:
    """The chain's output (median, then the table) against the direct path of before (median,
    glass ramp, Gareau, colour transfer per pixel in Lab, uint8)."""
    chain.glass_level = GLASSY
    fcm, rcm = crafted()
    fcm[:, :, -64:] = 0.03  # faint glass below the glass level
    got = chain.run(fcm, rcm)
    despeckled_fcm, despeckled_rcm = chain.despeckled(fcm, rcm)
    want = to_uint8_hwc(
        gareau_colour(despeckled_fcm, despeckled_rcm, GLASSY, chain.colour_transfer)
    )
    assert got.shape == want.shape
    assert psnr_db(got, want, 255.0) >= MIN_PSNR_DB
    assert (got[:, :, -60:] == 255).all()  # glass: white, exactly
    zeros = np.zeros((1, 64, 64), np.float32)
    assert (chain.run(zeros, zeros) == 255).all()
    assert (chain.background()["stain"] == 255).all()
    assert "colour" in chain.timer.seconds and "gareau" not in chain.timer.seconds


def test_the_table_follows_the_slide(chain: StainChain) -> None:
    """A new glass level or transfer (the next slide) rebuilds the table; the same one reuses."""
    first = chain.stain_lut
    assert first is chain.stain_lut
    chain.glass_level = GLASSY
    second = chain.stain_lut
    assert second is not first and second is not None and second.glass == GLASSY
    chain.colour_transfer = ColourTransfer.fit(None, SLIDE_LAB)
    assert chain.stain_lut is not second
