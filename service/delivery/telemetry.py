"""Delivery and webhook metrics of the dispatcher (in the worker registry: a Celery worker
serves them on DSCM_WORKER_METRICS_PORT, the embedded worker's appear in the API's /metrics).
The API adds the rows by state, read from the database at scrape time."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from service.jobs.telemetry import WORKER_REGISTRY

DELIVERY_ATTEMPTS = Counter(
    "dscm_delivery_attempts",
    "Delivery attempts by outcome (delivered, retry, failed)",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "dscm_delivery_duration_seconds",
    "Wall time of one delivery attempt (every instance of a series)",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=WORKER_REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "dscm_webhook_attempts",
    "Webhook sends by outcome (sent, retry, failed)",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
