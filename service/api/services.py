"""What the API process holds while it runs.

Store, files, queue, keys, sweeper, viewer-link signer, Deep Zoom tile cache, the delivery and
webhook records, and in embedded mode the in-process worker and its dispatcher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from service.api.auth import Keyring
from service.api.tile_service import TileService
from service.api.viewer_links import ViewerLinks
from service.delivery.dispatcher import Dispatcher
from service.delivery.outbox import OutboxStore
from service.jobs.db import utc_now
from service.jobs.files import JobFiles
from service.jobs.queues import CeleryQueue, InProcessQueue, JobQueue
from service.jobs.runner import Stainer, WorkerContext, run_job
from service.jobs.store import JobStore
from service.jobs.sweeper import Sweeper, sweep_once
from service.runtime.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: JobStore
    files: JobFiles
    queue: JobQueue
    keyring: Keyring
    sweeper: Sweeper
    stainer: Stainer
    links: ViewerLinks
    tiles: TileService
    outbox: OutboxStore
    worker: WorkerContext | None = None
    dispatcher: Dispatcher | None = None

    @classmethod
    def start(cls, settings: Settings, stainer: Stainer) -> Services:
        """Open everything; a bad configuration raises here, so the app refuses to start."""
        files = JobFiles(settings.storage_dir, settings.results_dir)
        files.create()
        keyring = Keyring(settings)
        if keyring.size == 0 and settings.anonymous_tenant is None:
            log.warning(
                "no API keys in %s or DSCM_API_KEYS: every request gets 401; "
                "create one with `dscm keys create`",
                settings.effective_api_keys_file,
            )
        store = JobStore(settings.effective_database_url)
        outbox = OutboxStore(store)
        worker: WorkerContext | None = None
        queue: JobQueue
        if settings.broker_url:
            queue = CeleryQueue(settings)
        else:
            worker = WorkerContext(settings, store, files, stainer)
            context = worker
            inprocess = InProcessQueue(lambda job_id: run_job(job_id, context))
            inprocess.start()
            queue = inprocess
        tiles = TileService(files, reload=store.get)
        sweeper = Sweeper(settings, store, files, queue, after_sweep=tiles.prune)
        links = ViewerLinks.from_settings(settings)
        services = cls(
            settings, store, files, queue, keyring, sweeper, stainer, links, tiles, outbox, worker
        )
        if worker is not None:
            # Nothing survives in an in-process queue: hand it every queued job now.
            for job_id in store.unheld_candidates(utc_now() + timedelta(days=1)):
                queue.enqueue(job_id)
        else:
            try:
                sweep_once(settings, store, files, queue)
            except Exception as exc:  # the broker may come up later; the sweeper retries
                log.warning("first sweep failed: %s", exc)
        sweeper.start()
        if worker is not None:
            # The embedded worker also delivers results and sends webhooks (dscm worker does
            # the same in each Celery worker process).
            services.dispatcher = Dispatcher(settings, store, files)
            services.dispatcher.start()
        return services

    def close(self) -> None:
        """Signal the embedded worker to stop, stop the sweeper and dispatcher, then close the queue
        and the database."""
        if self.worker is not None:
            self.worker.stopping.set()
        self.sweeper.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.queue.close()
        self.store.close()
