"""One slide across several workers: the regions of a running attempt (issue 20).

The worker that runs a job's attempt (the planner) plans the slide, measures its slide-wide
statistics once, fills the glass, writes the region plan into the attempt's live folder and
records the regions in the database (``dscm_regions``). It then sends one region task per region
to the queue and stains regions itself, taking the first claimable one each time, until every
region is done. Any worker that receives a region task claims that region (a conditional UPDATE)
and stains it into the same canvases on shared storage. A region whose worker dies stops
heartbeating and is claimed again by the planner or another worker; tiles are written whole
and marked in the ledger after, so a region run twice writes the same pixels twice. The planner
builds the pyramid once every region is done. Without region tasks (the broker lost them, no
other worker is up) the planner stains every region itself: the job never waits on a task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service.jobs.errors import AttemptLost, WorkerStopping
from service.jobs.job import Job, JobState
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings
from service.vocabulary.errors import DscmError

log = logging.getLogger(__name__)

REGION_TASK_NAME = "dscm.stain_region"
WAIT_POLL_S = 0.5
JOB_CHECK_INTERVAL_S = 2.0

EnqueueRegion = Callable[[str, str, int], None]  # (job id, attempt lease, region)


def worker_name() -> str:
    """This process, as ops find it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class RegionFailed(DscmError):
    """A region failed with an error that is not transient; the job fails with that error."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class RegionLease:
    """Heartbeat of one claimed region, on a thread; ``lost`` once another worker took it."""

    def __init__(
        self, store: JobStore, key: tuple[str, str, int], lease: str, interval_s: float
    ) -> None:
        self.store, self.key, self.lease, self.interval_s = store, key, lease, interval_s
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="region-heartbeat", daemon=True)

    def __enter__(self) -> RegionLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(self.interval_s):
            job_id, attempt, region = self.key
            try:
                if not self.store.beat_region(job_id, attempt, region, self.lease):
                    self.lost.set()
            except Exception as exc:  # a database hiccup: the next beat retries
                log.warning("region %d of job %s: heartbeat failed: %s", region, job_id, exc)


@dataclass
class RegionBoard:
    """The planner's side (service.engine.pipeline.RegionScheduler): record the regions, send their
    tasks, stain whatever is claimable here, wait for the rest."""

    store: JobStore
    settings: Settings
    job_id: str
    attempt: str  # the job's lease: regions belong to this attempt only
    enqueue: EnqueueRegion | None

    def run_regions(
        self, count: int, stain_here: Callable[[int], None], report: Callable[[], None]
    ) -> None:
        """Regions ``0..count-1`` stained here or elsewhere; returns when all are done."""
        if not self.store.open_regions(self.job_id, self.attempt, count):
            raise AttemptLost("the job was cancelled or taken over by another worker")
        self._send(count)
        while True:
            lease = uuid.uuid4().hex
            stale_before = seconds_ago(self.settings.stale_after_s)
            region = self.store.claim_region(
                self.job_id, self.attempt, lease, worker_name(), stale_before
            )
            if region is not None:
                self._stain(region, lease, stain_here)
                continue
            rows = self.store.regions(self.job_id, self.attempt)
            failed = next((row for row in rows if row.state == "failed"), None)
            if failed is not None:
                raise RegionFailed(failed.error_code or "region_failed", failed.error_detail or "")
            if rows and all(row.state == "done" for row in rows):
                return
            report()  # raises when the attempt must stop (cancelled, time limit, shutdown)
            time.sleep(WAIT_POLL_S)

    def _send(self, count: int) -> None:
        if self.enqueue is None:
            return
        for region in range(count):
            try:
                self.enqueue(self.job_id, self.attempt, region)
            except Exception as exc:  # the planner stains what no task reaches
                log.warning("job %s: cannot send region tasks: %s", self.job_id, exc)
                return

    def _stain(self, region: int, lease: str, stain_here: Callable[[int], None]) -> None:
        key = (self.job_id, self.attempt, region)
        with RegionLease(self.store, key, lease, self.settings.heartbeat_interval_s):
            stain_here(region)
        # Taken over meanwhile (this planner stalled past stale_after_s): the other worker
        # writes the same pixels and marks it done itself.
        self.store.finish_region(self.job_id, self.attempt, region, lease)


@dataclass(frozen=True)
class RegionTask:
    """One region task as the queue delivers it."""

    job_id: str
    attempt: str
    region: int


def region_stopper(
    store: JobStore, task: RegionTask, lease: RegionLease, stopping: threading.Event
) -> Callable[[str, int, int], None]:
    """The progress callback of a region worker: stop when the region was taken over, the job
    is no longer this attempt's (cancelled, failed, restarted), or the worker shuts down."""
    checked = time.monotonic()

    def progress(phase: str, done: int, total: int) -> None:
        """Raise AttemptLost or WorkerStopping between batches."""
        nonlocal checked
        if lease.lost.is_set():
            raise AttemptLost("the region was taken over by another worker")
        if stopping.is_set():
            raise WorkerStopping("the worker is shutting down")
        if time.monotonic() - checked >= JOB_CHECK_INTERVAL_S:
            checked = time.monotonic()
            if not attempt_running(store, task):
                raise AttemptLost("the job's attempt ended")

    return progress


def attempt_running(store: JobStore, task: RegionTask) -> bool:
    """Whether the attempt that planned the region still runs the job."""
    return runs_attempt(store.get(task.job_id), task)


def runs_attempt(job: Job | None, task: RegionTask) -> bool:
    """Whether ``job`` (as read) is running the attempt that planned the region."""
    return job is not None and job.state == JobState.RUNNING and job.lease == task.attempt
