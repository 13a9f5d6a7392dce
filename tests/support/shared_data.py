"""The workplace's shared data folder beside the repository (../shared/data), which a clone
elsewhere does not have: tests that read it skip when it is absent. Evaluation only: nothing
from it is copied into the repository."""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_CROP_DIR = SHARED_DATA / "confocal"  # one real paired Vivascope crop, 512 x 512


def real_crop(mode: str) -> Path:
    """The real crop's ``fcm`` or ``rcm`` file."""
    return REAL_CROP_DIR / f"crop-512-{mode}.jpg"
