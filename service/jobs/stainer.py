"""PipelineStainer: the job runner's adapter over service.engine.pipeline and the model cards.

Everything heavy is imported inside the methods, so creating one costs nothing and the API
process (which gets one from `dscm serve`) imports onnxruntime only if it stains in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.jobs.runner import RegionRequest, StainRequest
from service.runtime.config import Settings
from service.vocabulary.errors import CorruptSlide, DscmError
from service.vocabulary.options import JobOptions
from service.vocabulary.progress import ProgressCallback
from service.vocabulary.report import StainReport

if TYPE_CHECKING:  # the pipeline is imported when a stain needs it, not with this module
    from service.engine.pipeline import ModelSet


class PipelineStainer:
    """Stains with service.engine.pipeline.stain_slide; answers model questions from the cards."""

    def __init__(self) -> None:
        self._hash_lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}

    def load_models(self, options: JobOptions, settings: Settings) -> ModelSet:
        """The ModelSet for these options' stages, with the backend the settings choose."""
        from service.engine.pipeline import load_models
        from service.runtime.spec import stain_spec

        return load_models(stain_spec(settings, options))

    def stain(
        self, request: StainRequest, settings: Settings, progress: ProgressCallback, models: object
    ) -> StainReport:
        """Like `dscm stain`: the job's options and case over the worker's DSCM_* settings."""
        from service.engine.pipeline import ModelSet, stain_slide
        from service.runtime.spec import stain_spec
        from service.slide import SlideInputs

        if not isinstance(models, ModelSet):
            raise TypeError(f"models loaded by another stainer: {type(models).__name__}")
        spec = stain_spec(
            settings,
            request.options,
            request.case,
            uid_seed=request.uid_seed,
            live_dir=request.live_dir,
            regions=request.regions,
            region_tiles=settings.region_tiles,
        )
        inputs = SlideInputs(request.rcm, request.fcm)
        return stain_slide(inputs, request.output, spec, progress, models)

    def stain_region(
        self, request: RegionRequest, settings: Settings, progress: ProgressCallback, models: object
    ) -> int:
        """One region of a slide another worker planned (service.engine.pipeline.stain_region)."""
        from service.engine.pipeline import ModelSet, stain_region
        from service.runtime.spec import stain_spec
        from service.slide import SlideInputs

        if not isinstance(models, ModelSet):
            raise TypeError(f"models loaded by another stainer: {type(models).__name__}")
        spec = stain_spec(settings, request.options)
        inputs = SlideInputs(request.rcm, request.fcm)
        return stain_region(inputs, request.live_dir, request.region, spec, progress, models)

    def thumbnail(self, tiff: Path, jpeg: Path, max_px: int) -> None:
        """Write a JPEG preview of the TIFF result, at most ``max_px`` on its longer side."""
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

    def check_pair(self, rcm: Path, fcm: Path, allow_swapped: bool, max_pixels: int) -> None:
        """The pipeline's input check on the uploaded pair (service.core.sanity), so that a
        clearly swapped pair or one image twice is refused with 422 before it is queued."""
        from service.slide import SlideInputs
        from service.slide.inspect import check_pair

        try:
            check_pair(SlideInputs(rcm, fcm), allow_swapped, max_pixels)
        except CorruptSlide:
            return  # pixel data that does not decode fails the job when it runs (docs/api.md)

    def check_stages(self, stages: Sequence[str] | None, models_dir: Path) -> None:
        """Raise InputError or ModelError for a stage list the installed models cannot run, reading
        only the cards, so the API refuses it at submit."""
        from service.core.chain import resolve_stages
        from service.core.models import discover_stage_models, stages_off_by_default

        found = discover_stage_models(models_dir)
        resolve_stages(stages, found.keys(), stages_off_by_default(found))

    def trained_mpp_um(self, stages: Sequence[str] | None, models_dir: Path) -> float | None:
        """From the stage cards, without loading a network (the API sizes the work with it)."""
        from service.core.cards import read_card_json
        from service.core.chain import common_mpp_um, resolve_stages
        from service.core.models import discover_stage_models, stages_off_by_default

        found = discover_stage_models(models_dir)
        chain = resolve_stages(stages, found.keys(), stages_off_by_default(found))
        cards = [read_card_json(found[s].with_suffix(".json")) for s in chain if s in found]
        return common_mpp_um(cards)
