"""The sweeper: no accepted job is lost, none runs forever, finished ones are purged in time.

- queued jobs that no queue holds (Redis lost its data, or enqueue failed) are enqueued again;
- running jobs whose heartbeat stopped (worker killed) go back to the queue, or fail with
  ``attempts_exhausted`` once they used ``max_attempts``;
- finished jobs older than the retention time are deleted with their files.
Every change is a conditional UPDATE, so several sweepers (API replicas) may run at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from service.config import Settings
from service.jobs.queues import JobQueue
from service.jobs.storage import Storage
from service.jobs.store import JobStore, seconds_ago

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: int = 0
    recovered: int = 0
    failed: int = 0
    purged: int = 0


def sweep_once(
    settings: Settings, store: JobStore, storage: Storage, queue: JobQueue
) -> SweepResult:
    result = SweepResult()
    stale_before = seconds_ago(settings.stale_after_s)
    just_sent: set[str] = set()
    for job in store.stale_running(stale_before):
        if job.attempts >= job.max_attempts:
            if store.fail_exhausted(job.id, stale_before):
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
        storage.purge(job_id)
        store.delete(job_id)
        result.purged += 1
    return result


def _enqueue(store: JobStore, queue: JobQueue, job_id: str) -> int:
    try:
        queue.enqueue(job_id)
    except Exception as exc:  # broker down: the next sweep tries again
        log.warning("job %s: enqueue failed: %s", job_id, exc)
        return 0
    store.note_requeued(job_id)
    return 1


class Sweeper:
    """Runs sweep_once every ``sweep_interval_s`` in a daemon thread."""

    def __init__(
        self, settings: Settings, store: JobStore, storage: Storage, queue: JobQueue
    ) -> None:
        self.settings, self.store, self.storage, self.queue = settings, store, storage, queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dscm-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                sweep_once(self.settings, self.store, self.storage, self.queue)
            except Exception:  # the database may be briefly unreachable; try next time
                log.exception("sweep failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
