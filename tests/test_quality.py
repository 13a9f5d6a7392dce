"""The stain-quality measures on crafted images, and the colour stage's transfer."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2hed, rgb2lab

from service.core.colour import (
    ColourTransfer,
    LabAccumulator,
    LabStats,
    lab_to_rgb,
    rgb_to_lab,
    tissue_weight,
)
from service.core.quality import (
    checkerboard_db,
    faithfulness_qc,
    fd_lab,
    gaussian_fit,
    glass_rgb,
    haematoxylin_od,
    nuclear_r,
    output_tissue,
)

RNG = np.random.default_rng(7)


def smooth_texture(size_px: int = 512) -> np.ndarray:
    """A natural-looking field: low-pass noise, no periodic structure."""
    noise = RNG.random((size_px // 16, size_px // 16))
    return np.kron(noise, np.ones((16, 16))) * 0.5 + 0.25


def test_lab_matches_scikit_image_both_ways() -> None:
    rgb = RNG.random((40, 40, 3)).astype(np.float32)
    assert np.abs(rgb_to_lab(rgb) - rgb2lab(rgb)).max() < 0.05
    lab = rgb2lab(rgb)
    assert np.abs(lab_to_rgb(lab) - lab2rgb(lab)).max() < 1e-3
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)) - rgb).max() < 1e-3


def test_haematoxylin_matches_scikit_image() -> None:
    rgb = RNG.random((30, 30, 3))
    assert np.abs(haematoxylin_od(rgb) - np.maximum(rgb2hed(rgb)[..., 0], 0)).max() < 1e-5


def test_flat_field_has_no_checkerboard() -> None:
    assert abs(checkerboard_db(np.full((512, 512, 3), 200.0))) < 0.5


def test_natural_texture_reads_below_three_db() -> None:
    gray = smooth_texture() * 255
    assert checkerboard_db(np.repeat(gray[..., None], 3, axis=2)) < 3.0


@pytest.mark.parametrize("period_px", [2, 4])
def test_a_faint_grid_is_detected(period_px: int) -> None:
    gray = smooth_texture() * 255
    yy, xx = np.mgrid[:512, :512]
    grid = ((yy % period_px == 0) & (xx % period_px == 0)) * 6.0  # 6 grey levels of dots
    rgb = np.repeat((gray + grid)[..., None], 3, axis=2)
    assert checkerboard_db(rgb) > 10.0


def test_white_glass_reads_white_and_tissue_is_excluded() -> None:
    fcm = np.zeros((200, 200), np.float32)
    rcm = np.zeros((200, 200), np.float32)
    fcm[:, 100:], rcm[:, 100:] = 0.5, 0.6  # tissue on the right half
    rgb = np.zeros((200, 200, 3))
    rgb[:, :100] = (250, 248, 252)
    rgb[:, 100:] = (180, 90, 160)
    glass = glass_rgb(rgb, fcm, rcm)
    assert glass is not None and min(glass) >= 235
    assert glass == pytest.approx((250, 248, 252), abs=0.5)  # erosion keeps tissue edges out
    assert glass_rgb(rgb[:, 100:], fcm[:, 100:], rcm[:, 100:]) is None


def test_fcm_copied_into_haematoxylin_gives_r_near_one() -> None:
    fcm = smooth_texture(256).astype(np.float32)
    rcm = np.full_like(fcm, 0.5)
    # Beer-Lambert with the haematoxylin vector: OD proportional to FCM
    od = fcm[..., None] * np.asarray([0.65, 0.70, 0.29])
    rgb = np.exp(-od * np.log(10))
    tissue = output_tissue(fcm, rcm)
    assert tissue.mean() > 0.9
    assert nuclear_r(rgb, fcm, tissue) > 0.99
    shuffled = RNG.permutation(fcm.ravel()).reshape(fcm.shape)
    assert abs(nuclear_r(rgb, shuffled, tissue)) < 0.1  # erased nuclei: no correlation


def test_frechet_distance_is_zero_for_equal_fits_and_grows_with_shift() -> None:
    values = RNG.normal([60, 30, -10], [10, 8, 4], size=(5000, 3))
    fit = gaussian_fit(values)
    assert fd_lab(fit, fit) == pytest.approx(0.0, abs=1e-3)
    shifted = gaussian_fit(values + np.asarray([3.0, 4.0, 0.0]))
    assert fd_lab(fit, shifted) == pytest.approx(5.0, abs=0.05)  # Lab units, like a mean shift


def test_colour_transfer_reaches_the_target_and_keeps_glass_white() -> None:
    target = LabStats((70.0, 27.0, -8.0), (11.0, 9.0, 3.5))
    fcm = smooth_texture(256).astype(np.float32)
    rcm = smooth_texture(256).astype(np.float32)
    fcm[:, :64] = rcm[:, :64] = 0.0  # glass strip
    rgb = (
        np.clip(1 - fcm * 0.7 - rcm * 0.3, 0, 1)[None] * np.asarray([0.6, 0.5, 1.0])[:, None, None]
    )
    rgb[:, :, :64] = 1.0
    weight = tissue_weight(fcm, rcm)
    source = LabAccumulator()
    source.add(rgb.astype(np.float32), weight)
    transfer = ColourTransfer.fit(source.stats(), target)
    out = transfer.apply(rgb.astype(np.float32), weight)
    assert out.shape == rgb.shape
    assert out[:, :, :64].min() > 0.999  # zero signal: white stays white
    moved = LabAccumulator()
    tissue = np.zeros_like(weight)
    tissue[:, 64:] = 1.0
    moved.add(out, tissue)
    stats = moved.stats()
    assert stats is not None
    assert np.allclose(stats.mean, target.mean, atol=2.0)


def test_no_tissue_means_no_transfer() -> None:
    assert LabAccumulator().stats() is None
    identity = ColourTransfer.fit(None, LabStats((70, 27, -8), (11, 9, 3.5)))
    rgb = RNG.random((3, 8, 8)).astype(np.float32)
    assert np.abs(identity.apply(rgb, np.ones((8, 8))) - rgb).max() < 1e-3


def test_faithfulness_check_flags_a_stain_that_erases_nuclei() -> None:
    fcm = smooth_texture(256).astype(np.float32)
    nuclei = (RNG.random((256, 256)) > 0.97).astype(np.float32)
    fcm = np.clip(fcm * 0.6 + nuclei * 0.4, 0, 1)
    rcm = smooth_texture(256).astype(np.float32)
    from service.core.stain import gareau_stain

    faithful = (np.moveaxis(gareau_stain(fcm, rcm), 0, -1) * 255).astype(np.uint8)
    qc = faithfulness_qc(faithful, fcm, rcm)
    assert qc.flag is None and qc.ratio is not None and qc.ratio > 0.95
    erased = np.broadcast_to(np.asarray([230, 150, 200], np.uint8), (256, 256, 3)).copy()
    erased += RNG.integers(0, 3, erased.shape, dtype=np.uint8)  # pink with a little noise
    qc = faithfulness_qc(erased, fcm, rcm)
    assert qc.flag == "review against FCM" and qc.ratio is not None and qc.ratio < 0.5
