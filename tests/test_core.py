"""Core numerics: normalisation, Gareau stain, median, Otsu, pooled statistics, stages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from service.core.chain import resolve_stages
from service.core.filters import median3x3, median3x3_valid, otsu_threshold
from service.core.models import pool_norm_stats
from service.core.normalize import estimate_range, normalize
from service.core.stain import EOSIN_RGB, HEMATOXYLIN_RGB, gareau_stain
from service.vocabulary.errors import InputError, ModelError


def test_gareau_maps_pure_modes_to_the_stain_colours() -> None:
    zero, one = np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32)
    assert np.allclose(gareau_stain(zero, zero)[:, 0, 0], 1.0)  # no signal: white
    assert np.allclose(gareau_stain(one, zero)[:, 0, 0], HEMATOXYLIN_RGB)
    assert np.allclose(gareau_stain(zero, one)[:, 0, 0], EOSIN_RGB)
    both = gareau_stain(one, one)[:, 0, 0]
    assert both.min() >= 0.0  # clipped
    assert np.allclose(
        both, np.clip(1 - (1 - np.array(HEMATOXYLIN_RGB)) - (1 - np.array(EOSIN_RGB)), 0, 1)
    )


def test_gareau_keeps_batch_layout() -> None:
    f = np.random.default_rng(0).random((2, 5, 7), dtype=np.float32)
    assert gareau_stain(f, f).shape == (2, 3, 5, 7)


def test_normalisation_is_bit_depth_independent() -> None:
    rng = np.random.default_rng(1)
    unit = rng.random((200, 200))
    as8 = (unit * 255).astype(np.uint8)
    as16 = (unit * 65535).astype(np.uint16)
    n8 = normalize(as8, estimate_range(as8))
    n16 = normalize(as16, estimate_range(as16))
    assert n8.dtype == np.float32 and n8.min() >= 0 and n8.max() <= 1
    assert np.abs(n8 - n16).mean() < 0.01


def test_normalisation_of_a_flat_image_does_not_divide_by_zero() -> None:
    flat = np.full((10, 10), 7, np.uint16)
    out = normalize(flat, estimate_range(flat))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("level", [3e38, -3e38, 2.0**60, np.finfo(np.float32).max])
def test_normalisation_of_a_flat_image_at_float_extremes(level: float) -> None:
    """Above 2**53 a unit-wide range is lost to rounding (issue 17: ZeroDivisionError)."""
    flat = np.full((20, 20), level, np.float32)
    flat[0, 0] = -level  # one outlier below the 1st percentile
    intensity = estimate_range(flat)
    assert intensity.high > intensity.low
    out = normalize(flat, intensity)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_median_matches_scipy_with_mirrored_borders() -> None:
    image = np.random.default_rng(2).random((2, 33, 41)).astype(np.float32)
    expected = np.stack([ndimage.median_filter(i, size=3, mode="mirror") for i in image])
    assert np.array_equal(median3x3(image), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_median_inside_the_border_is_the_cropped_median(dtype: type) -> None:
    """What the chain keeps (the median's halo cropped), computed without padding (issue 21)."""
    image = (np.random.default_rng(3).random((3, 37, 29)) * 255).astype(dtype)
    expected = np.stack([ndimage.median_filter(i, size=3, mode="mirror") for i in image])
    assert np.array_equal(median3x3_valid(image), expected[:, 1:-1, 1:-1])
    assert np.array_equal(median3x3(image[0, :2, :1]), image[0, :2, :1])  # edge mode


def test_median_removes_isolated_pixels() -> None:
    image = np.zeros((9, 9), np.float32)
    image[4, 4] = 1.0
    assert median3x3(image).max() == 0.0


def test_otsu_separates_two_modes() -> None:
    values = np.concatenate([np.full(1000, 0.1), np.full(500, 0.8)])
    assert 0.1 < otsu_threshold(values) < 0.8


def test_pooled_stats_equal_the_stats_of_the_union() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(m, s, (2, 500)) for m, s in ((0, 1), (3, 2), (-1, 0.5))]
    per_tile = np.array(
        [np.concatenate([p.mean(axis=1), p.var(axis=1)]) for p in parts], np.float32
    )
    union = np.concatenate(parts, axis=1)
    pooled = pool_norm_stats(per_tile, (2,))
    assert np.allclose(pooled[:2], union.mean(axis=1), atol=1e-4)
    assert np.allclose(pooled[2:], union.var(axis=1), atol=1e-3)


def test_default_stages_follow_installed_models() -> None:
    assert resolve_stages(None, []) == ("median", "gareau")
    assert resolve_stages(None, ["generator", "despeckle"]) == STAGES_NO_COLOUR
    assert resolve_stages(None, ["generator", "despeckle", "colour"]) == STAGES_ALL
    assert resolve_stages(["gareau", "despeckle"], ["despeckle"]) == ("despeckle", "gareau")


def test_a_model_kept_out_of_the_default_runs_only_when_asked() -> None:
    installed = ["generator", "despeckle", "colour"]
    default = resolve_stages(None, installed, default_off=["generator"])
    assert default == ("despeckle", "median", "gareau", "colour")
    assert resolve_stages(STAGES_ALL, installed, default_off=["generator"]) == STAGES_ALL


STAGES_NO_COLOUR = ("despeckle", "median", "gareau", "generator")
STAGES_ALL = ("despeckle", "median", "gareau", "colour", "generator")


@pytest.mark.parametrize(
    ("stages", "error"),
    [
        (["gareau", "blur"], InputError),
        (["median"], InputError),
        (["gareau", "generator"], ModelError),
    ],
)
def test_bad_stage_requests_are_refused(stages: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve_stages(stages, ["despeckle"])
