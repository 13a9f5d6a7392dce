"""Typed job records for store-level tests (jobs recorded without going through an upload)."""

from __future__ import annotations

from service.jobs.job import JobInputs, StoredFile


def job_inputs(width_px: int = 8, height_px: int = 8, fingerprint: str = "f") -> JobInputs:
    """Inputs as the API records them for a pair of tiny files."""
    return JobInputs(
        rcm=StoredFile("rcm.tif", "rcm.tif", 1, "a" * 64),
        fcm=StoredFile("fcm.tif", "fcm.tif", 1, "b" * 64),
        width_px=width_px,
        height_px=height_px,
        mpp_um=0.75,
        fingerprint=fingerprint,
    )
