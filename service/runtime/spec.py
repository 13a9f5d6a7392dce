"""The settings turned into the engine's typed spec, at the edges (the CLI and the worker)."""

from __future__ import annotations

from typing import Any

from service.engine.pipeline import StainSpec
from service.runtime.config import Settings
from service.vocabulary.case import NO_CASE, Case
from service.vocabulary.options import JobOptions


def stain_spec(
    settings: Settings, options: JobOptions, case: Case = NO_CASE, **overrides: Any
) -> StainSpec:
    """The stain a caller asked for, on this machine's DSCM_* settings (models, tiling, batch
    size, threads, backend, default pixel size); ``overrides`` that are not None win."""
    machine: dict[str, Any] = {
        "models_dir": settings.models_dir,
        "tile_px": settings.tile_px,
        "batch_size": settings.batch_size,
        "threads": settings.threads,
        "max_pixels": settings.max_pixels,
        "inference": settings.inference,
        "inference_precision": settings.inference_precision,
        "default_mpp_um": settings.default_mpp_um,
        "dicom_uid_root": settings.dicom_uid_root,
    }
    stated = {key: value for key, value in overrides.items() if value is not None}
    return StainSpec(options=options, case=case, **(machine | stated))
