"""The one task body: run one attempt of a job. Celery and the in-process worker both call it.

It is idempotent by job id: an attempt first claims the job with a conditional UPDATE, so a
duplicate delivery of a finished, cancelled or busy job does nothing. Results go to a name private
to the attempt and become the job's result only in the same transaction that marks it succeeded.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.jobs import telemetry
from service.jobs.errors import AttemptLost, JobTimedOut, WorkerStopping
from service.jobs.files import JobFiles
from service.jobs.job import Job, JobState
from service.jobs.regions import (
    EnqueueRegion,
    RegionBoard,
    RegionLease,
    RegionTask,
    attempt_running,
    region_stopper,
    runs_attempt,
    worker_name,
)
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings
from service.runtime.logs import job_context
from service.vocabulary.case import Case
from service.vocabulary.errors import DscmError, OutputError
from service.vocabulary.options import JobOptions
from service.vocabulary.progress import PROGRESS_SCALE, ProgressCallback, overall_progress
from service.vocabulary.report import StainReport

log = logging.getLogger(__name__)
PROGRESS_WRITE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class StainRequest:
    """One stain a worker asks for: the job's stored inputs, where the result goes, and what
    the job's submitter stated (options and case)."""

    rcm: Path
    fcm: Path
    output: Path
    options: JobOptions
    case: Case
    uid_seed: str | None = None  # the job id: a DICOM series keeps its UIDs across attempts
    live_dir: Path | None = None  # the attempt's live folder (JobFiles.live_dir)
    regions: RegionBoard | None = None  # stain in regions across workers (DSCM_REGION_TILES)


@dataclass(frozen=True)
class RegionRequest:
    """One region of a slide another worker planned: the job's stored inputs and the live
    folder with the plan and the canvases (service.jobs.regions)."""

    rcm: Path
    fcm: Path
    live_dir: Path
    region: int
    options: JobOptions


# What a stainer loads once per worker process and is handed back for every stain (the real one:
# service.engine.pipeline.ModelSet); the runner only keeps it, so to the runner it is opaque.
LoadedModels = object


class Stainer(Protocol):
    """What workers and the API need from the staining pipeline.

    The real one is service.jobs.stainer.PipelineStainer; the process edges (`dscm serve`,
    `dscm worker`) pass it in, so the API package never imports the pipeline.
    """

    def load_models(self, options: JobOptions, settings: Settings) -> LoadedModels:
        """Load what a stain with these options needs, once per worker process (the runner caches
        it)."""

    def stain(
        self,
        request: StainRequest,
        settings: Settings,
        progress: ProgressCallback,
        models: LoadedModels,
    ) -> StainReport:
        """Stain one job's slide pair with the loaded models, reporting progress; returns its
        report."""

    def stain_region(
        self,
        request: RegionRequest,
        settings: Settings,
        progress: ProgressCallback,
        models: LoadedModels,
    ) -> int:
        """Stain one region of a slide planned by another worker into its live canvases;
        returns the tiles stained."""

    def thumbnail(self, tiff: Path, jpeg: Path, max_px: int) -> None:
        """Write a JPEG preview of the result, at most ``max_px`` on its longer side."""

    def check_models(self, models_dir: Path) -> tuple[bool, str]:
        """Whether the installed models can be loaded (cards parse, files match); and why."""

    def check_stages(self, stages: Sequence[str] | None, models_dir: Path) -> None:
        """Raise InputError for an impossible stage list, ModelError for a missing model."""

    def check_pair(self, rcm: Path, fcm: Path, allow_swapped: bool, max_pixels: int) -> None:
        """Raise InputsSwapped or InputsIdentical for a pair the input check refuses."""

    def trained_mpp_um(self, stages: Sequence[str] | None, models_dir: Path) -> float | None:
        """The pixel size the chain for ``stages`` runs at (None: Gareau alone, any size)."""


@dataclass
class WorkerContext:
    """Per-process state of a worker: settings, store, files and the models it loaded once."""

    settings: Settings
    store: JobStore
    files: JobFiles
    stainer: Stainer
    stopping: threading.Event = field(default_factory=threading.Event)
    enqueue_region: EnqueueRegion | None = None  # sends region tasks (Celery workers only)
    _models: dict[tuple[str, ...] | None, LoadedModels] = field(default_factory=dict)  # by stages
    _models_pid: int = field(default_factory=os.getpid)

    def models_for(self, options: JobOptions) -> LoadedModels:
        """The models for these options' stages, loaded once per process and stage list; dropped
        after a fork, whose inherited sessions are not safe."""
        # Sessions made before a fork are not safe in the child; reload once per process.
        if self._models_pid != os.getpid():
            self._models.clear()
            self._models_pid = os.getpid()
        key = options.stages or None
        if key not in self._models:
            self._models[key] = self.stainer.load_models(options, self.settings)
        return self._models[key]


class Attempt:
    """Progress, heartbeat, cancellation and deadline of one running attempt."""

    def __init__(self, ctx: WorkerContext, job_id: str, lease: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.lease = lease
        self.deadline = time.monotonic() + ctx.settings.job_time_limit_s
        self.lost = threading.Event()
        self._state: tuple[str | None, int, int] = (None, 0, 0)  # message, done, total
        self._phase: str | None = None  # the engine's progress phase (service.vocabulary.progress)
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> Attempt:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _write(self) -> None:
        with self._lock:
            message, done, total = self._state
            self._last_write = time.monotonic()
        try:
            owned = self.ctx.store.heartbeat(self.job_id, self.lease, message, done, total)
        except Exception as exc:  # a database hiccup must not kill the stain; the next beat retries
            log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            return
        if not owned:
            self.lost.set()

    def _beat(self) -> None:
        while not self._done.wait(self.ctx.settings.heartbeat_interval_s):
            self._write()

    def progress(self, phase: str, done: int, total: int) -> None:
        """The engine's callback between tiles: record progress, stop when told to."""
        fraction, message = overall_progress(phase, done, total)
        with self._lock:
            changed = phase != self._phase
            self._phase = phase
            self._state = (message, round(fraction * PROGRESS_SCALE), PROGRESS_SCALE)
            due = time.monotonic() - self._last_write >= PROGRESS_WRITE_INTERVAL_S
        if changed or due:
            self._write()
        if self.lost.is_set():
            raise AttemptLost("the job was cancelled or taken over by another worker")
        if self.ctx.stopping.is_set():
            raise WorkerStopping("the worker is shutting down")
        if time.monotonic() > self.deadline:
            raise JobTimedOut(
                f"the job ran longer than {self.ctx.settings.job_time_limit_s:g} s "
                "(DSCM_JOB_TIME_LIMIT_S)"
            )


def run_job(job_id: str, ctx: WorkerContext) -> str:
    """Run one attempt of ``job_id``; returns how it ended (for logs and tests)."""
    if ctx.stopping.is_set():
        return "stopping"
    lease = uuid.uuid4().hex
    claim = ctx.store.claim(job_id, lease, seconds_ago(ctx.settings.stale_after_s))
    if claim.outcome != "claimed" or claim.job is None:
        log.info("job %s not run: %s", job_id, claim.outcome)
        if claim.outcome == "exhausted" and claim.job and claim.job.state == JobState.FAILED:
            ctx.files.purge(job_id)  # a failed job keeps no files, whatever failed it
        return claim.outcome
    with job_context(job_id, claim.job.tenant):
        try:
            outcome = _run_claimed(claim.job, lease, ctx)
        finally:
            if ctx.settings.region_tiles > 0:
                ctx.store.drop_regions(job_id, lease)
        log.info("job %s attempt %d: %s", job_id, claim.job.attempts, outcome)
    telemetry.OUTCOMES.labels(outcome=outcome).inc()
    return outcome


def _run_claimed(job: Job, lease: str, ctx: WorkerContext) -> str:
    store, files = ctx.store, ctx.files
    options = job.options
    result_name, thumb_name = f"{lease}{options.result_suffix}", f"{lease}.jpg"
    try:
        with Attempt(ctx, job.id, lease) as attempt:
            try:
                files.clear_results(job.id)
            except OSError as exc:
                raise OutputError(f"cannot create the result folder: {exc.strerror}") from exc
            result = files.result_path(job.id, result_name)
            pyramid = options.pyramid_path(result)  # the result itself, or beside a series
            thumb = files.result_path(job.id, thumb_name)
            request = StainRequest(
                rcm=files.input_path(job.id, job.inputs.rcm.stored_name),
                fcm=files.input_path(job.id, job.inputs.fcm.stored_name),
                output=result,
                options=options,
                case=job.case,
                uid_seed=job.id,
                live_dir=files.live_dir(job.id, lease),
                regions=_region_board(ctx, job.id, lease),
            )
            attempt.progress("load_models", 0, 1)
            models = ctx.models_for(options)
            report = ctx.stainer.stain(request, ctx.settings, attempt.progress, models)
            attempt.progress("thumbnail", 0, 1)
            try:
                ctx.stainer.thumbnail(pyramid, thumb, ctx.settings.thumbnail_px)
            except OSError as exc:
                raise OutputError(f"cannot write the thumbnail: {exc.strerror}") from exc
        public = report.public(files.result_dir(job.id))
        published = (
            pyramid.name,  # what the viewer reads; a DICOM series is named in the report
            report.output_sha256,
            report.output_bytes,
            thumb_name,
        )
        # The extra layers were published (under this attempt's names) before the stain; they
        # become the job's in this same transaction, named in its report.
        if not store.succeed(job.id, lease, public, *published):
            _discard(files, job.id, lease)
            return "lost"
        # the published pyramid replaces the live folder (a viewer open on it reloads the pyramid)
        shutil.rmtree(files.live_dir(job.id, lease), ignore_errors=True)
        files.purge_inputs(job.id)
        telemetry.observe_report(report)
        return "succeeded"
    except WorkerStopping:
        _discard(files, job.id, lease)
        store.release(job.id, lease)
        return "released"
    except AttemptLost:
        _discard(files, job.id, lease)
        return "lost"
    except DscmError as exc:  # time limit, cancelled, and every engine refusal
        return _fail(ctx, job, lease, exc.code, exc.detail)
    except OSError as exc:
        detail = f"I/O error while staining: {exc.strerror or exc}"
        return _fail(ctx, job, lease, "io_error", detail)
    except Exception as exc:
        log.exception("job %s: unexpected error", job.id)
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            detail = "the worker's time limit stopped the job"
            return _fail(ctx, job, lease, JobTimedOut.code, detail)
        detail = f"unexpected {type(exc).__name__}; see the worker log"
        return _fail(ctx, job, lease, "internal_error", detail)


def _region_board(ctx: WorkerContext, job_id: str, lease: str) -> RegionBoard | None:
    """Regions across workers when the operator asks for them and other workers can be reached
    (Celery); None: this worker stains every tile, as with one worker."""
    if ctx.settings.region_tiles <= 0 or ctx.enqueue_region is None:
        return None
    return RegionBoard(ctx.store, ctx.settings, job_id, lease, ctx.enqueue_region)


def run_region(task: RegionTask, ctx: WorkerContext) -> str:
    """Stain one region of another worker's attempt, if it is still claimable; returns how it
    ended. Idempotent: a region already taken, done, or of a finished attempt does nothing."""
    store, files = ctx.store, ctx.files
    job = store.get(task.job_id)
    if ctx.stopping.is_set() or job is None or not runs_attempt(job, task):
        return "stale"
    lease = uuid.uuid4().hex
    stale_before = seconds_ago(ctx.settings.stale_after_s)
    claimed = store.claim_region(
        task.job_id, task.attempt, lease, worker_name(), stale_before, region=task.region
    )
    if claimed is None:
        return "taken"
    key = (task.job_id, task.attempt, task.region)
    request = RegionRequest(
        rcm=files.input_path(job.id, job.inputs.rcm.stored_name),
        fcm=files.input_path(job.id, job.inputs.fcm.stored_name),
        live_dir=files.live_dir(job.id, task.attempt),
        region=task.region,
        options=job.options,
    )
    with job_context(job.id, job.tenant):
        try:
            with RegionLease(store, key, lease, ctx.settings.heartbeat_interval_s) as held:
                progress = region_stopper(store, task, held, ctx.stopping)
                models = ctx.models_for(job.options)
                tiles = ctx.stainer.stain_region(request, ctx.settings, progress, models)
            store.finish_region(*key, lease)
            log.info("job %s region %d: %d tiles", job.id, task.region, tiles)
            return "done"
        except WorkerStopping:
            store.release_region(*key, lease)
            return "released"
        except AttemptLost:
            return "lost"
        except Exception as exc:
            if not attempt_running(store, task):  # cancelled meanwhile: its files went with it
                return "lost"
            code, detail = _region_error(exc, job.id)
            store.fail_region(*key, lease, code, detail)
            return "failed"


def _region_error(exc: Exception, job_id: str) -> tuple[str, str]:
    """The code and detail a failed region fails its job with (as _run_claimed would)."""
    if isinstance(exc, DscmError):
        return exc.code, exc.detail
    if isinstance(exc, OSError):
        return "io_error", f"I/O error while staining a region: {exc.strerror or exc}"
    log.error("job %s: unexpected error in a region", job_id, exc_info=exc)
    return "internal_error", f"unexpected {type(exc).__name__} in a region; see the worker log"


def _fail(ctx: WorkerContext, job: Job, lease: str, code: str, detail: str) -> str:
    _discard(ctx.files, job.id, lease)
    if ctx.store.fail(job.id, lease, code, detail):
        # The job is failed and no other attempt can own it: drop whatever the engine left.
        ctx.files.purge(job.id)
        return "failed"
    return "lost"


def _discard(files: JobFiles, job_id: str, lease: str) -> None:
    """Delete every file this attempt wrote (result, extra layers, thumbnail)."""
    files.remove_attempt_files(job_id, lease)
