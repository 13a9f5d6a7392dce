"""PipelineStainer: the job runner's adapter over service.pipeline and the model cards.

Everything heavy is imported inside the methods, so creating one costs nothing and the API
process (which gets one from `dscm serve`) imports onnxruntime only if it stains in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.config import Settings
from service.errors import DscmError
from service.jobs.runner import Progress

# JobCreate's option fields -> StainSpec's fields (docs/api.md).
JOB_OPTION_FIELDS = {
    "stages": "stages",
    "compression": "compression",
    "jpeg_quality": "jpeg_quality",
    "output_format": "output_format",
    "layers": "extra_layers",
    "mpp_um": "mpp_um",
    # the case identity (Job.engine_options), written into the output's description
    "label": "label",
    "external_id": "external_id",
}


class PipelineStainer:
    """Stains with service.pipeline.stain_slide; answers model questions from the cards."""

    def __init__(self) -> None:
        self._hash_lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}

    @staticmethod
    def spec(options: dict[str, Any], settings: Settings) -> Any:
        """The job's stated options over the worker's settings, like `dscm stain`: tiling,
        batch size, threads and the inference backend come from DSCM_* settings; an option
        the job did not state keeps StainSpec's default."""
        from service.pipeline import StainSpec

        stated: dict[str, Any] = {}
        for key, field in JOB_OPTION_FIELDS.items():
            value = options.get(key)
            if value is not None and value != []:
                stated[field] = tuple(value) if isinstance(value, list) else value
        if "jpeg_quality" in stated:
            stated["jpeg_quality"] = int(stated["jpeg_quality"])
        return StainSpec(
            models_dir=settings.models_dir,
            tile_px=settings.tile_px,
            batch_size=settings.batch_size,
            threads=settings.threads,
            max_pixels=settings.max_pixels,
            inference=settings.inference,
            inference_precision=settings.inference_precision,
            default_mpp_um=settings.default_mpp_um,
            **stated,
        )

    def load_models(self, options: dict[str, Any], settings: Settings) -> Any:
        from service.pipeline import load_models

        return load_models(self.spec(options, settings))

    def stain(
        self,
        rcm: Path,
        fcm: Path,
        output: Path,
        options: dict[str, Any],
        settings: Settings,
        progress: Progress,
        models: Any,
    ) -> dict[str, Any]:
        from service.pipeline import stain_slide
        from service.slide import SlideInputs

        spec = self.spec(options, settings)
        report = stain_slide(SlideInputs(rcm, fcm), output, spec, progress, models)
        return dict(report.to_dict())

    def thumbnail(self, tiff: Path, jpeg: Path, max_px: int) -> None:
        from service.slide import write_thumbnail

        write_thumbnail(tiff, jpeg, max_px)

    def _sha256(self, path: Path) -> str:
        from service.core.models import file_sha256

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._hash_lock:
            known = self._hashes.get(key)
        if known is None:
            known = file_sha256(path)
            with self._hash_lock:
                self._hashes[key] = known
        return known

    def check_models(self, models_dir: Path) -> tuple[bool, str]:
        """Cards parse and every ONNX file matches its card's sha256 (hashes cached by mtime)."""
        from service.core.models import discover_models, read_card

        try:
            found = discover_models(models_dir)
            for onnx in found.values():
                if self._sha256(onnx) != read_card(onnx.with_suffix(".json")).sha256:
                    return False, f"{onnx.name} does not match its card"
        except (DscmError, OSError) as exc:
            return False, str(exc)
        if not found:
            return True, "no models installed: median + gareau only"
        return True, ", ".join(f"{role}={path.name}" for role, path in sorted(found.items()))

    def check_stages(self, stages: Sequence[str] | None, models_dir: Path) -> None:
        from service.core.chain import resolve_stages
        from service.core.models import discover_stage_models, stages_off_by_default

        found = discover_stage_models(models_dir)
        resolve_stages(stages, found.keys(), stages_off_by_default(found))
