"""Queue adapters: how the API hands a job id to a worker.

Both adapters carry only the job id; everything else is in the job record. The Celery adapter
enqueues by task name, so the API process never imports the worker (nor onnxruntime).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from celery import Celery

from service.runtime.config import Settings

TASK_NAME = "dscm.stain_job"
log = logging.getLogger(__name__)


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None:
        """Hand the job to a worker; the job record is already stored and queued."""

    def held_job_ids(self) -> set[str] | None:
        """Job ids waiting in or delivered by the queue; None when the queue cannot be read."""

    def length(self) -> int | None:
        """Jobs waiting to be started, or None when the queue cannot be read (for metrics)."""

    def ping(self) -> None:
        """Raise if the queue cannot accept work."""

    def live_workers(self, timeout_s: float) -> list[str]:
        """Names of the workers that answered within ``timeout_s`` (raise if none can be asked)."""

    def close(self) -> None:
        """Release the queue's connections or threads; the queue is unusable afterwards."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """The one Celery configuration, shared by the API (producer) and the workers."""
    visibility_s = settings.effective_visibility_timeout_s
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_default_queue": settings.queue_name,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # The runner enforces job_time_limit_s between tiles; these are backstops (prefork pool).
        "task_soft_time_limit": settings.job_time_limit_s + 15,
        "task_time_limit": settings.job_time_limit_s + 60,
        "broker_transport_options": {"visibility_timeout": visibility_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 4,
        "broker_pool_limit": 4,
        "worker_send_task_events": False,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured by celery_config; not made current, so tests and the API can each
    hold their own."""
    app = Celery("dscm", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def task_id_for(job_id: str) -> str:
    """Task ids start with the job id, so the sweeper can tell which jobs the broker holds."""
    return f"{job_id}-{uuid.uuid4().hex[:8]}"


def job_id_of_task(task_id: str) -> str:
    """The job id a task id was made from (task_id_for appends a suffix after the first '-')."""
    return task_id.split("-", 1)[0]


class CeleryQueue:
    """Producer side of the Redis broker, plus a read of what the broker holds (for the sweeper)."""

    # kombu's Redis transport keeps priorities 3, 6 and 9 in sibling lists "<queue>\x06\x16<n>".
    _PRIORITY_SEP = "\x06\x16"
    _UNACKED_KEY = "unacked"

    def __init__(self, settings: Settings) -> None:
        import redis

        if not settings.broker_url:
            raise ValueError("CeleryQueue needs DSCM_BROKER_URL")
        self.queue_name = settings.queue_name
        self.app = make_celery(settings)
        self.redis = redis.Redis.from_url(
            settings.broker_url, socket_timeout=3, socket_connect_timeout=3
        )

    def enqueue(self, job_id: str) -> None:
        """Send the stain task under the job's task id to this deployment's queue."""
        self.app.send_task(
            TASK_NAME,
            args=[job_id],
            task_id=task_id_for(job_id),
            queue=self.queue_name,
        )

    def _queue_keys(self) -> list[str]:
        return [self.queue_name] + [f"{self.queue_name}{self._PRIORITY_SEP}{p}" for p in (3, 6, 9)]

    def held_job_ids(self) -> set[str] | None:
        """Job ids in the broker's queues and its unacked deliveries, so the sweeper requeues only
        jobs nobody holds; None when Redis cannot be read."""
        import redis

        held: set[str] = set()
        try:
            for key in self._queue_keys():
                for raw in self.redis.lrange(key, 0, -1):
                    held.update(_task_job_ids(raw))
            for raw in self.redis.hvals(self._UNACKED_KEY):
                held.update(_task_job_ids(raw, unacked=True))
        except redis.RedisError as exc:
            log.warning("cannot read the broker's queue: %s", exc)
            return None
        return held

    def length(self) -> int | None:
        """Messages in the broker's queues, or None when Redis cannot be read."""
        import redis

        try:
            return sum(int(self.redis.llen(key)) for key in self._queue_keys())
        except redis.RedisError:
            return None

    def ping(self) -> None:
        """Raise redis' error when the broker does not answer (readyz)."""
        self.redis.ping()

    def live_workers(self, timeout_s: float) -> list[str]:
        """Celery's broadcast ping: every worker that consumes (any queue) answers."""
        replies = self.app.control.ping(timeout=timeout_s) or []
        return sorted(name for reply in replies for name in reply)

    def close(self) -> None:
        """Close the Redis client and the Celery app."""
        self.redis.close()
        self.app.close()


def _task_job_ids(raw: bytes | str, unacked: bool = False) -> set[str]:
    try:
        message = json.loads(raw)
        if unacked:
            message = message[0]
        task_id = message["headers"]["id"]
        return {job_id_of_task(str(task_id))}
    except (ValueError, KeyError, IndexError, TypeError):
        return set()


class InProcessQueue:
    """The embedded default: one worker thread in the API process runs the same task body."""

    def __init__(self, run: Callable[[str], object]) -> None:
        self._run = run
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._current: str | None = None
        self._thread = threading.Thread(
            target=self._loop, name="dscm-inprocess-worker", daemon=True
        )

    def start(self) -> None:
        """Start the worker thread; jobs enqueued before this wait for it."""
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        """Queue the job once: a job already waiting is not queued twice."""
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(job_id)

    def held_job_ids(self) -> set[str] | None:
        """The waiting jobs and the one running now; never None, the queue is in memory."""
        with self._lock:
            return set(self._pending) | ({self._current} if self._current else set())

    def length(self) -> int | None:
        """Jobs waiting in memory (the running one not counted)."""
        return self._queue.qsize()

    def ping(self) -> None:
        """Raise RuntimeError when the worker thread has died."""
        if not self._thread.is_alive():
            raise RuntimeError("the in-process worker thread is not running")

    def live_workers(self, timeout_s: float) -> list[str]:
        """The worker thread's name while it is alive, else none; ``timeout_s`` is not needed."""
        return [self._thread.name] if self._thread.is_alive() else []

    def _loop(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                self._pending.discard(job_id)
                self._current = job_id
            try:
                self._run(job_id)
            except Exception:  # the thread must outlive any one job
                log.exception("in-process job %s failed outside the task body", job_id)
            finally:
                with self._lock:
                    self._current = None

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the thread to stop once the jobs already in memory ran (a sentinel at the end) and
        wait at most ``timeout_s`` for it."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
