"""API-side Prometheus metrics; jobs by state and queue length are read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.api.services import Services
from service.delivery.records import DELIVERY_STATES, EVENT_STATES
from service.jobs.job import JobState
from service.jobs.telemetry import WORKER_REGISTRY

disable_created_metrics()  # the *_created series only add noise to a scrape
API_REGISTRY = CollectorRegistry(auto_describe=True)
UPLOAD_BYTES = Counter(
    "dscm_upload_bytes", "File bytes of completely received uploads", registry=API_REGISTRY
)
ACCEPT_SECONDS = Histogram(
    "dscm_accept_duration_seconds",
    "Time to receive, check and enqueue one POST /v1/jobs",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=API_REGISTRY,
)
SUBMISSIONS = Counter(
    "dscm_job_submissions",
    "POST /v1/jobs by outcome (accepted, replayed, or the error code)",
    ["outcome"],
    registry=API_REGISTRY,
)


class JobsCollector(Collector):
    """Reads job counts from the database and the queue length from the broker per scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Job counts by state (absent if the database cannot be read) and the queue length (absent
        if unknown); a scrape never fails on them."""
        jobs = GaugeMetricFamily("dscm_jobs", "Job records by state", labels=["state"])
        try:
            counts = self.services.store.counts_by_state()
        except Exception:  # a scrape must not fail because the database blinked
            counts = None
        if counts is not None:
            for state in JobState:
                jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        queue = GaugeMetricFamily("dscm_queue_length", "Jobs waiting in the queue")
        length = self.services.queue.length()
        if length is not None:
            queue.add_metric([], length)
        yield queue
        workers = GaugeMetricFamily(
            "dscm_workers_live", "Workers that answered a ping (Celery), or the in-process worker"
        )
        try:
            live = self.services.queue.live_workers(self.services.settings.worker_ping_timeout_s)
        except Exception:  # the broker is down: readyz says so; leave the series out
            live = None
        if live is not None:
            workers.add_metric([], len(live))
        yield workers
        yield from self._outbox()

    def _outbox(self) -> Iterator[GaugeMetricFamily]:
        deliveries = GaugeMetricFamily(
            "dscm_deliveries", "Deliveries to PACS destinations by state", labels=["state"]
        )
        events = GaugeMetricFamily(
            "dscm_webhook_events", "Webhook events by state", labels=["state"]
        )
        counts: tuple[dict[str, int], dict[str, int]] | None
        try:
            counts = self.services.outbox.counts()
        except Exception:  # a scrape must not fail because the database blinked
            counts = None
        if counts is not None:
            for state in DELIVERY_STATES:
                deliveries.add_metric([state], counts[0].get(state, 0))
            for state in EVENT_STATES:
                events.add_metric([state], counts[1].get(state, 0))
        yield deliveries
        yield events


def render_metrics(services: Services) -> bytes:
    """The Prometheus text of the job gauges, the API's and the worker's registries."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(services))
    return b"".join(generate_latest(r) for r in (registry, API_REGISTRY, WORKER_REGISTRY))
