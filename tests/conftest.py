"""Shared fixtures: synthetic confocal-like pairs written as real files, tiny ONNX models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_factory import make_model_folder
from support.pairs import confocal_like, write_gray

from service.slide import SlideInputs


@pytest.fixture
def make_pair(tmp_path: Path):
    """Write a synthetic pair: make_pair(height, width, dtype=..., tissue_fraction=...)."""

    def make(
        height: int = 600,
        width: int = 800,
        dtype: str = "uint8",
        tissue_fraction: float = 0.6,
        suffix: str = ".tif",
        **options: object,
    ) -> SlideInputs:
        fcm, rcm = confocal_like(height, width, tissue_fraction=tissue_fraction)
        return SlideInputs(
            rcm=write_gray(tmp_path / f"rcm{suffix}", rcm, dtype, **options),
            fcm=write_gray(tmp_path / f"fcm{suffix}", fcm, dtype, **options),
        )

    return make


@pytest.fixture
def plain_models(tmp_path: Path) -> Path:
    """A despeckler and a generator without instance norm."""
    return make_model_folder(tmp_path / "models-plain", shared_norm=False)


@pytest.fixture
def shared_models(tmp_path: Path) -> Path:
    """A despeckler and an instance-norm generator with the shared-statistics interface."""
    return make_model_folder(tmp_path / "models-shared", shared_norm=True)
