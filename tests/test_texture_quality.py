"""The texture measure (SWD between Laplacian-pyramid patches) on crafted images: identical
sets score 0, a blurred or grid-printed copy scores worse than other images of the same kind."""

from __future__ import annotations

import numpy as np
import pytest
from support.he_images import blurred, grid_printed, tissue_like

from service.core.quality import (
    laplacian_pyramid,
    pyramid_levels,
    sliced_wasserstein,
    swd,
)

REAL = [tissue_like(seed) for seed in range(6)]
OTHER = [tissue_like(seed) for seed in range(10, 16)]


def test_laplacian_pyramid_reconstructs_and_has_levels_down_to_16_px() -> None:
    image = tissue_like(0)
    assert pyramid_levels(128, 128) == 4  # 128, 64, 32, 16
    assert pyramid_levels(128, 200) == 4 and pyramid_levels(31, 40) == 1
    bands = laplacian_pyramid(image, 4)
    assert [b.shape[0] for b in bands] == [128, 64, 32, 16]
    assert abs(float(bands[0].mean())) < 0.01  # band-pass levels are zero-mean


def test_identical_sets_give_zero_and_same_kind_gives_little() -> None:
    same = swd(REAL, REAL)
    assert max(same["swd"]) == 0.0 and max(same["swd_texture"]) == 0.0
    assert same["level_px"] == [128, 64, 32, 16]
    other = swd(REAL, OTHER)
    assert np.mean(other["swd"]) < 0.15


@pytest.mark.parametrize("copy", [blurred, grid_printed])
def test_blurred_and_grid_printed_copies_score_worse(copy: object) -> None:
    baseline = swd(REAL, OTHER)
    worse = swd(REAL, [copy(image) for image in OTHER])  # type: ignore[operator]
    assert np.mean(worse["swd"]) > 2 * np.mean(baseline["swd"])
    assert worse["swd"][0] > 3 * baseline["swd"][0]  # the finest level sees it most
    # without colour and contrast, the finest level still sees the changed texture
    assert worse["swd_texture"][0] > 1.4 * baseline["swd_texture"][0]


def test_colour_counts_only_in_the_colour_normalised_variant() -> None:
    tinted = [image * np.float32([0.8, 0.9, 1.0]) for image in REAL]
    result = swd(REAL, tinted)
    assert np.mean(result["swd"]) > 0.2
    assert max(result["swd_texture"]) < 1e-3  # each set normalised by itself: same texture


def test_sliced_wasserstein_is_seeded_and_handles_sets_of_other_sizes() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(200, 5)) + 1.0
    assert sliced_wasserstein(a, b, seed=3) == sliced_wasserstein(a, b, seed=3)
    # a shift by 1 on every axis moves each unit projection by sum(d) (mean |sum d| ~ 0.9 at 5-D)
    assert 0.5 < sliced_wasserstein(a, b) < 1.5
    assert sliced_wasserstein(a, a) == 0.0
