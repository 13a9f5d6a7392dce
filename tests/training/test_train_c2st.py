"""The classifier two-sample test on crafted images: a critic cannot tell two sets of the same
kind apart (AUC about 0.5) and easily tells a blurred or grid-printed copy (AUC near 1)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from support.he_images import blurred, grid_printed
from support.he_images import tissue_like as tissue_like_128

from training.c2st import CriticOptions, c2st, roc_auc, sample_patches


def tissue_like(seed: int) -> np.ndarray:
    """The crafted tissue at the critic's test size (96 px, a little more noise)."""
    return tissue_like_128(seed, size_px=96, noise=0.03)


FAST = CriticOptions(
    patch_px=24, train_patches=256, test_patches=256, steps=80, batch_size=32, max_seconds=30
)


def same(image: np.ndarray) -> np.ndarray:
    return image


def auc_of(copy: Callable[[np.ndarray], np.ndarray]) -> float:
    """Real: images 0-3 (train) and 20-22 (test); fake: copies of other images of each."""
    train_real = [tissue_like(s) for s in range(4)]
    train_fake = [copy(tissue_like(s)) for s in range(10, 14)]
    test_real = [tissue_like(s) for s in range(20, 23)]
    test_fake = [copy(tissue_like(s)) for s in range(30, 33)]
    result = c2st(train_real, train_fake, test_real, test_fake, FAST)
    assert result["steps"] > 0
    return float(result["auc"])


def test_roc_auc_counts_ties_half_and_orders() -> None:
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert roc_auc(np.ones(5), np.ones(7)) == 0.5


def test_patches_come_from_tissue() -> None:
    image = np.ones((64, 64, 3), np.float32)  # white glass...
    image[:, 32:] = (0.6, 0.3, 0.6)  # ...and purple tissue on the right half
    patches = sample_patches([image], 50, 16, np.random.default_rng(0), min_tissue=0.9)
    assert patches.shape == (50, 3, 16, 16) and float(patches.mean(axis=(1, 2, 3)).max()) < 0.6


@pytest.mark.parametrize(("copy", "low", "high"), [(same, 0.4, 0.6), (blurred, 0.85, 1.0),
                                                   (grid_printed, 0.85, 1.0)])  # fmt: skip
def test_critic_auc_half_for_same_kind_high_for_blur_and_grid(
    copy: Callable[[np.ndarray], np.ndarray], low: float, high: float
) -> None:
    assert low <= auc_of(copy) <= high
