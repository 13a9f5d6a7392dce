"""Deep Zoom of running jobs (issue 20): tiles from the attempt's live folder while it stains.

The folder is found only from the job record (its id and its current lease, both checked by
JobFiles.live_dir) and must resolve inside the job's result folder, so no request can name
another job's files. A job without a plan yet (queued, or still preparing) gets plain grey
tiles of the final pyramid's geometry. pyvips is imported with the first live tile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.api.problems import ApiError
from service.jobs.files import JobFiles
from service.jobs.job import Job, JobState
from service.vocabulary.errors import DscmError
from service.vocabulary.options import ViewLayer

if TYPE_CHECKING:
    from service.slide.live import LivePlan
    from service.slide.live_view import LiveSlide, LiveTile

MAX_LIVE_SLIDES = 4  # running slides whose view is kept (each at most ~20 MB per layer)


class LiveGone(Exception):
    """The attempt's live folder went away while a tile was read (the attempt ended)."""


def live_layers(job: Job) -> tuple[str, ...]:
    """The layers a running job will have: the stain and the extra layers it asked for."""
    return ("stain", *job.options.layers)


def check_live_layer(job: Job, layer: ViewLayer) -> None:
    """404 ``layer_not_found`` for a layer the running job does not make."""
    if layer not in live_layers(job):
        raise ApiError(
            404, "layer_not_found", f"the job has no {layer} layer (submit with layers={layer})"
        )


class LiveTiles:
    """The live views of running jobs, one LiveSlide per job (its current attempt)."""

    def __init__(self, files: JobFiles, max_slides: int = MAX_LIVE_SLIDES) -> None:
        self.files, self.max_slides = files, max_slides
        self._slides: OrderedDict[str, LiveSlide] = OrderedDict()
        self._lock = threading.Lock()

    def folder(self, job: Job) -> Path | None:
        """The live folder of the job's current attempt, None while queued; 404 for a record
        whose lease would lead anywhere else (never read)."""
        if job.lease is None:
            return None
        try:
            folder = self.files.live_dir(job.id, job.lease)
        except ValueError as exc:
            raise ApiError(404, "tile_not_found", "the job's attempt has no live view") from exc
        if folder.exists() and folder.resolve().parent != self.files.result_dir(job.id).resolve():
            raise ApiError(404, "tile_not_found", "the job's attempt has no live view")
        return folder

    def plan(self, job: Job) -> LivePlan | None:
        """The attempt's plan, None before the worker wrote it (or when it is not this job's
        slide: its size must be the job's)."""
        from service.slide.live import LivePlan

        folder = self.folder(job)
        if folder is None:
            return None
        try:
            plan = LivePlan.load(folder)
        except (OSError, ValueError):
            return None
        same = (plan.width_px, plan.height_px) == (job.inputs.width_px, job.inputs.height_px)
        return plan if same else None

    def done(self, job: Job) -> tuple[LivePlan, np.ndarray] | None:
        """The plan and, per grid tile, whether it is stained; None before the plan."""
        from service.slide.live import read_done

        plan = self.plan(job)
        folder = self.folder(job)
        if plan is None or folder is None:
            return None
        try:
            return plan, read_done(folder, plan.tiles)
        except OSError:
            return None

    def tile(self, job: Job, layer: ViewLayer, level: int, column: int, row: int) -> LiveTile:
        """One tile of a running job: stained where done, the overview greyed elsewhere;
        TileNotFound outside the pyramid, LiveGone when the attempt ended meanwhile."""
        from service.slide.live_view import LiveSlide, blank_tile

        check_live_layer(job, layer)
        folder = self.folder(job)
        plan = self.plan(job)
        if folder is None or plan is None:
            return blank_tile(job.inputs.width_px, job.inputs.height_px, level, column, row)
        with self._lock:
            slide = self._slides.get(job.id)
            if slide is not None and slide.folder == folder:
                self._slides.move_to_end(job.id)
        if slide is None or slide.folder != folder:
            slide = LiveSlide(folder, plan)
            with self._lock:
                self._slides[job.id] = slide
                while len(self._slides) > self.max_slides:
                    self._slides.popitem(last=False)
        try:
            return slide.tile(layer, level, column, row)
        except DscmError:  # outside the pyramid (TileNotFound)
            raise
        except (OSError, ValueError) as exc:  # the folder was removed, or a canvas truncated
            self.drop(job.id)
            raise LiveGone(str(exc)) from exc

    def drop(self, job_id: str) -> None:
        """Forget a job's live view (it finished: only its published pyramid is served now)."""
        with self._lock:
            self._slides.pop(job_id, None)

    def prune(self) -> int:
        """Forget the live views whose folder is gone (their attempt ended)."""
        with self._lock:
            gone = [job_id for job_id, slide in self._slides.items() if not slide.folder.exists()]
            for job_id in gone:
                del self._slides[job_id]
        return len(gone)


def is_live(job: Job) -> bool:
    """Whether the job's tiles come from its live folder (queued or running) rather than from
    its published pyramid."""
    return job.state in (JobState.QUEUED, JobState.RUNNING)
