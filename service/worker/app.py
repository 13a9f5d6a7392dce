"""The Celery app of `dscm worker`: Redis broker, JSON only, one task registered by name.

Delivery guarantees come from the broker settings (acks_late, reject_on_worker_lost, prefetch 1,
visibility timeout above the time limit, see service.jobs.queues.celery_config) plus the job
record: each delivery claims the job first, so duplicates and redeliveries of finished jobs do
nothing, and a worker killed mid-job is noticed by its stopped heartbeat.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.signals import worker_ready, worker_shutting_down

from service.delivery.dispatcher import Dispatcher
from service.jobs.files import JobFiles
from service.jobs.queues import TASK_NAME, make_celery, task_id_for
from service.jobs.regions import REGION_TASK_NAME, EnqueueRegion, RegionTask
from service.jobs.runner import Stainer, WorkerContext, run_job, run_region
from service.jobs.stainer import PipelineStainer
from service.jobs.store import JobStore
from service.runtime.config import Settings

log = logging.getLogger(__name__)


class ContextHolder:
    """One WorkerContext per process, made on first use (after any fork) and reused."""

    def __init__(
        self,
        settings: Settings,
        stainer: Stainer | None,
        enqueue_region: EnqueueRegion | None = None,
    ) -> None:
        self.settings = settings
        self.stainer = stainer
        self.enqueue_region = enqueue_region
        self._context: WorkerContext | None = None
        self._pid = 0
        self._stopping = False  # inherited by a context made after the stop was asked for

    def get(self) -> WorkerContext:
        """This process's worker context, made again after a fork (database engines and models do
        not survive one)."""
        if self._context is None or self._pid != os.getpid():
            files = JobFiles(self.settings.storage_dir, self.settings.results_dir)
            files.create()
            store = JobStore(self.settings.effective_database_url)
            self._context = WorkerContext(
                self.settings,
                store,
                files,
                self.stainer or PipelineStainer(),
                enqueue_region=self.enqueue_region,
            )
            if self._stopping:
                self._context.stopping.set()
            self._pid = os.getpid()
        return self._context

    def stop(self) -> None:
        """Tell the running job and any later context that the worker is shutting down."""
        self._stopping = True
        if self._context is not None:
            self._context.stopping.set()


def create_worker_app(settings: Settings, stainer: Stainer | None = None) -> Celery:
    """The Celery app of `dscm worker`: the stain task, plus the delivery dispatcher once the pool
    is ready. ValueError without a broker URL."""
    if not settings.broker_url:
        raise ValueError("the Celery worker needs DSCM_BROKER_URL")
    app = make_celery(settings)

    def enqueue_region(job_id: str, attempt: str, region: int) -> None:
        """Send one region task of a planned slide to this deployment's queue."""
        app.send_task(
            REGION_TASK_NAME,
            args=[job_id, attempt, region],
            task_id=f"{task_id_for(job_id)}-r{region}",
            queue=settings.queue_name,
        )

    holder = ContextHolder(settings, stainer, enqueue_region)

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def stain_job(task: Task, job_id: str) -> str:
        """Run one job; a job released by a worker that is shutting down is sent again before this
        delivery is acked, so it is not lost."""
        outcome = run_job(job_id, holder.get())
        if outcome in ("released", "stopping"):
            # Shutting down mid-job: the job is queued again before this delivery is acked.
            task.app.send_task(
                TASK_NAME, args=[job_id], task_id=task_id_for(job_id), queue=settings.queue_name
            )
        return outcome

    @app.task(name=REGION_TASK_NAME, acks_late=True, reject_on_worker_lost=True)
    def stain_region(job_id: str, attempt: str, region: int) -> str:
        """Stain one region of a slide another worker planned (service.jobs.regions); a lost
        delivery is harmless, the planner stains what nobody took."""
        return run_region(RegionTask(job_id, attempt, int(region)), holder.get())

    # Deliveries and webhooks run on the dispatcher's own threads in the worker's main
    # process, started once the pool is up (never inherited by a forked child).
    dispatchers: list[Dispatcher] = []

    def on_ready(**_: Any) -> None:
        """Start this worker's delivery dispatcher once the pool is up."""
        files = JobFiles(settings.storage_dir, settings.results_dir)
        dispatcher = Dispatcher(settings, JobStore(settings.effective_database_url), files)
        dispatcher.start()
        dispatchers.append(dispatcher)

    def on_shutdown(**_: Any) -> None:
        """Signal the running job to stop and close the dispatchers."""
        holder.stop()
        for dispatcher in dispatchers:
            dispatcher.close()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutdown, weak=False)
    return app
