"""The sweeper: no accepted job is lost, none runs forever, finished ones are purged in time.

- queued jobs that no queue holds (Redis lost its data, or enqueue failed) are enqueued again;
- running jobs whose heartbeat stopped (worker killed) go back to the queue, or fail with
  ``attempts_exhausted`` once they used ``max_attempts``;
- finished jobs older than the retention time are deleted with their files;
- files nothing owns any more (an upload its API process never finished, a job folder whose
  record is gone or finished) are deleted once untouched for ``orphan_grace_s``.
Every change is a conditional UPDATE, so several sweepers (API replicas) may run at once.

A job that fails, whatever the reason (``attempts_exhausted`` included), loses its uploads and
partial results at once; its record stays until the retention time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.jobs.files import JobFiles, last_write_s
from service.jobs.job import is_job_id
from service.jobs.queues import JobQueue
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: int = 0
    recovered: int = 0
    failed: int = 0
    purged: int = 0
    orphans: int = 0


def sweep_once(
    settings: Settings, store: JobStore, files: JobFiles, queue: JobQueue
) -> SweepResult:
    """One pass: requeue or fail jobs whose worker was lost, re-send queued jobs the broker lost,
    purge jobs past retention and orphan files; returns the counts."""
    result = SweepResult()
    stale_before = seconds_ago(settings.stale_after_s)
    just_sent: set[str] = set()
    for job in store.stale_running(stale_before):
        if job.attempts >= job.max_attempts:
            if store.fail_exhausted(job.id, stale_before):
                files.purge(job.id)
                result.failed += 1
                log.warning("job %s failed: worker lost %d times", job.id, job.attempts)
        elif store.requeue_lost(job.id, stale_before):
            result.recovered += 1
            log.warning("job %s: worker lost in attempt %d, requeued", job.id, job.attempts)
            _enqueue(store, queue, job.id)
            just_sent.add(job.id)

    candidates = store.unheld_candidates(seconds_ago(settings.requeue_grace_s))
    if candidates:
        held = queue.held_job_ids()
        if held is not None:
            for job_id in candidates:
                if job_id not in held and job_id not in just_sent:
                    result.requeued += _enqueue(store, queue, job_id)

    for job_id in store.expired(seconds_ago(settings.retention_s)):
        files.purge(job_id)
        store.delete(job_id)
        result.purged += 1
    result.orphans = remove_orphans(settings, store, files)
    return result


def remove_orphans(settings: Settings, store: JobStore, files: JobFiles) -> int:
    """Delete files no job will use, once nothing wrote to them for ``orphan_grace_s``."""
    removed = files.remove_stale_uploads(settings.orphan_grace_s)
    cutoff_s = time.time() - settings.orphan_grace_s
    for folder in _job_folders(files.uploads, cutoff_s):
        job = store.get(folder.name)
        if job is None or job.finished:  # no run will read these inputs again
            files.purge_inputs(folder.name)
            removed.append(folder)
    for folder in _job_folders(files.results, cutoff_s):
        if store.get(folder.name) is None:  # the retention purge deletes the others
            files.purge(folder.name)
            removed.append(folder)
    for folder in removed:
        log.warning("deleted %s, left behind by an interrupted request or job", folder.name)
    return len(removed)


def _job_folders(base: Path, cutoff_s: float) -> Iterator[Path]:
    """Folders of ``base`` named by a job id whose last write is older than ``cutoff_s``."""
    for folder in base.iterdir() if base.is_dir() else ():
        if is_job_id(folder.name) and last_write_s(folder) < cutoff_s:
            yield folder


def _enqueue(store: JobStore, queue: JobQueue, job_id: str) -> int:
    try:
        queue.enqueue(job_id)
    except Exception as exc:  # broker down: the next sweep tries again
        log.warning("job %s: enqueue failed: %s", job_id, exc)
        return 0
    store.note_requeued(job_id)
    return 1


class Sweeper:
    """Runs sweep_once every ``sweep_interval_s`` in a daemon thread, then ``after_sweep``
    (the API closes the Deep Zoom pyramids of files that were deleted)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: JobFiles,
        queue: JobQueue,
        after_sweep: Callable[[], object] | None = None,
    ) -> None:
        self.settings, self.store, self.files, self.queue = settings, store, files, queue
        self.after_sweep = after_sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dscm-sweeper", daemon=True)

    def start(self) -> None:
        """Start the sweeping thread; the first sweep runs after one interval."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                sweep_once(self.settings, self.store, self.files, self.queue)
                if self.after_sweep is not None:
                    self.after_sweep()
            except Exception:  # the database may be briefly unreachable; try next time
                log.exception("sweep failed")

    def close(self) -> None:
        """Stop sweeping, waiting up to 10 s for a sweep in progress."""
        self._stop.set()
        self._thread.join(timeout=10)
