"""Synthetic confocal: the stains go to the right modes, statistics match the real crops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from train_fakes import SHARED_DATA, he_like

from training.synthetic import (
    confocal_stats,
    deconvolve_he,
    read_gray_unit,
    read_rgb,
    synthesize_confocal,
)


def test_hematoxylin_and_eosin_separate() -> None:
    purple = np.full((4, 4, 3), (90, 60, 150), np.uint8)
    pink = np.full((4, 4, 3), (235, 150, 190), np.uint8)
    h_purple, _ = deconvolve_he(purple)
    h_pink, e_pink = deconvolve_he(pink)
    assert h_purple.mean() > h_pink.mean()
    assert e_pink.mean() > 0.5 * h_pink.mean()


def test_nuclei_bright_in_fluorescence_and_statistics_dark() -> None:
    rgb = he_like(256, 256, seed=1)
    nuclei = rgb[..., 0] < 120
    pair = synthesize_confocal(rgb, seed=0)
    assert pair.fcm[nuclei].mean() > pair.fcm[~nuclei].mean() + 0.1
    stats = confocal_stats(pair.rcm)
    assert 0.15 < stats.median < 0.35
    assert stats.p99 < 0.8
    assert pair.fcm.dtype == np.float32 and pair.fcm.min() >= 0 and pair.fcm.max() <= 1


def test_seeded_and_deterministic() -> None:
    rgb = he_like(64, 64, seed=2)
    first, again = synthesize_confocal(rgb, seed=5), synthesize_confocal(rgb, seed=5)
    other = synthesize_confocal(rgb, seed=6)
    assert np.array_equal(first.rcm, again.rcm)
    assert not np.array_equal(first.rcm, other.rcm)


def test_synthetic_module_does_not_import_torch() -> None:
    code = "import sys, training.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.skipif(not (SHARED_DATA / "confocal").is_dir(), reason="shared data absent")
def test_matches_real_crop_statistics() -> None:
    real = confocal_stats(read_gray_unit(SHARED_DATA / "confocal" / "crop-512-rcm.jpg"))
    skin = next((SHARED_DATA / "he" / "skin").glob("wikimedia-*.jpg"))
    synthetic = confocal_stats(synthesize_confocal(read_rgb(skin), seed=0).rcm)
    assert 0.22 <= synthetic.median <= 0.25
    assert 0.46 <= synthetic.p99 <= 0.57
    assert abs(synthetic.local_contrast - real.local_contrast) < 0.03
