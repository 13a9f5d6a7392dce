"""The dispatcher: two daemon threads, one sending deliveries, one sending webhook events.

Every worker process (`dscm worker`) and the embedded worker run one; their rows are shared
through the database and taken by lease, so any number may run and any may die. Sends have
timeouts and run on these threads only: a slow archive or a hanging receiver never holds up a
stain, and a slow archive never holds up the webhooks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from service.delivery import telemetry
from service.delivery.cstore import cstore_series
from service.delivery.errors import DeliveryError
from service.delivery.outbox import OutboxStore, retry_delay_s
from service.delivery.records import FAILED, Delivery, WebhookEvent
from service.delivery.stow import stow_series
from service.delivery.webhooks import describe, send_event
from service.jobs.files import JobFiles, series_files
from service.jobs.job import Job, JobState
from service.jobs.links import job_url
from service.jobs.store import JobStore
from service.runtime.config import Settings
from service.runtime.integrations import Destination, read_secret
from service.vocabulary.report import DicomIds

log = logging.getLogger(__name__)
# How a series goes to an archive, by the destination's kind: one module each.
SENDERS: dict[str, Callable[[Destination, Sequence[Path], Callable[[int], None]], None]] = {
    "stow-rs": stow_series,
    "c-store": cstore_series,
}
# A delivery's lease outlives one instance's request by this much; renewed after each one.
_LEASE_MARGIN_S = 60.0
# How often a dispatcher deletes the rows of jobs the retention purge deleted.
_CLEANUP_INTERVAL_S = 600.0


class NothingToDeliver(Exception):
    """The job has no DICOM series to send (not a DICOM job, purged, files gone)."""


def instances_to_send(files: JobFiles, job: Job) -> list[Path]:
    """The instance files of a succeeded DICOM job's series, in the order the result download
    serves them (service.jobs.files.series_files); NothingToDeliver when there are none."""
    series = job.report.dicom_series if job.report else None
    if series is None:
        raise NothingToDeliver("the job's result is not a DICOM series (output_format=dicom)")
    if job.purged_at is not None:
        raise NothingToDeliver("the job's result was deleted")
    instances = series_files(files.published_file(job.id, series))
    if not instances:
        raise NothingToDeliver("the job's DICOM series has no instance files (deleted?)")
    return instances


@dataclass
class DispatchContext:
    settings: Settings
    store: JobStore
    outbox: OutboxStore
    files: JobFiles
    cleaned_at_s: float = 0.0  # time.monotonic() of the last remove_orphans

    def receivers(self, tenant: str, callback_url: str | None) -> list[tuple[str, str]]:
        """Who gets a job's events: the tenant's receiver, and the job's callback_url."""
        targets = []
        webhook_url = self.settings.integration(tenant).webhook_url
        if webhook_url:
            targets.append(("tenant", webhook_url))
        if callback_url:
            targets.append(("callback", callback_url))
        return targets

    def event_data(self, event_type: str, job_id: str) -> dict[str, Any] | None:
        """What an event says about its job: id, state, external id, error, links (absolute
        under DSCM_PUBLIC_URL when it is set), and for job.delivered the study and series."""
        job = self.store.get(job_id)
        if job is None:
            return None
        base = self.settings.public_url or ""  # unset: links relative to the API's own address
        data: dict[str, Any] = {
            "job": {
                "id": job.id,
                "state": job.state.value,
                "external_id": job.external_id,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                "error": (
                    {"code": job.error_code, "detail": job.error_detail}
                    if job.state == JobState.FAILED
                    else None
                ),
                "links": {
                    "self": job_url(job.id, base=base),
                    "result": job_url(job.id, "/result", base),
                },
            }
        }
        if event_type == "job.delivered":
            # Destination, instances and time come from the delivery's own transaction.
            ids = job.report.dicom_ids if job.report else DicomIds(None, None)
            data["delivery"] = {
                "study_instance_uid": ids.study_instance_uid,
                "series_instance_uid": ids.series_instance_uid,
            }
        return data


def deliver_once(ctx: DispatchContext) -> str | None:
    """Make one delivery attempt if one is due; returns its outcome (None: nothing was due)."""
    settings, outbox = ctx.settings, ctx.outbox
    if time.monotonic() - ctx.cleaned_at_s > _CLEANUP_INTERVAL_S:
        outbox.remove_orphans()
        ctx.cleaned_at_s = time.monotonic()
    outbox.settle_unsent()
    lease_s = _delivery_lease_s(ctx)
    claimed = outbox.claim_delivery(lease_s)
    if claimed is None:
        return None
    delivery, lease = claimed
    with telemetry.DELIVERY_SECONDS.time():
        error = _attempt_delivery(ctx, delivery, lease, lease_s)
    if error is None:
        if outbox.delivered(
            delivery.job_id, lease, _count(ctx, delivery), ctx.receivers, ctx.event_data
        ):
            log.info("job %s delivered to %s", delivery.job_id, delivery.destination)
            telemetry.DELIVERY_ATTEMPTS.labels(outcome="delivered").inc()
            return "delivered"
        return "lost"
    delay = partial(
        retry_delay_s, base_s=settings.delivery_retry_base_s, cap_s=settings.delivery_retry_max_s
    )
    state = outbox.delivery_failed(
        delivery.job_id, lease, error, settings.delivery_max_attempts, delay
    )
    outcome = "failed" if state == FAILED else "retry"
    log.warning(
        "job %s: delivery to %s, attempt %d: %s (%s)",
        delivery.job_id,
        delivery.destination,
        delivery.attempts + 1,
        error,
        "gave up" if state == FAILED else "will retry",
    )
    telemetry.DELIVERY_ATTEMPTS.labels(outcome=outcome).inc()
    return outcome


def _delivery_lease_s(ctx: DispatchContext) -> float:
    longest_s = max((d.timeout_s for d in ctx.settings.destinations), default=60.0)
    return longest_s + _LEASE_MARGIN_S


def _count(ctx: DispatchContext, delivery: Delivery) -> int:
    job = ctx.store.get(delivery.job_id)
    try:
        return len(instances_to_send(ctx.files, job)) if job else 0
    except (NothingToDeliver, ValueError):
        return 0


def _attempt_delivery(
    ctx: DispatchContext, delivery: Delivery, lease: str, lease_s: float
) -> str | None:
    """None when every instance was stored; else why not (for last_error)."""
    destination = ctx.settings.destination(delivery.destination)
    if destination is None:
        return f"no destination named {delivery.destination} is configured"
    job = ctx.store.get(delivery.job_id)
    if job is None or job.state != JobState.SUCCEEDED:
        return "the job is gone or did not succeed"
    try:
        instances = instances_to_send(ctx.files, job)
    except (NothingToDeliver, ValueError) as exc:
        return str(exc)

    def keep_lease(_done: int) -> None:
        """Extend the delivery's lease between instances; DeliveryError once another dispatcher took
        it."""
        if not ctx.outbox.extend_delivery(delivery.job_id, lease, lease_s):
            raise DeliveryError("another dispatcher took the delivery over")

    try:
        SENDERS[destination.kind](destination, instances, keep_lease)
    except DeliveryError as exc:
        return str(exc)
    except OSError as exc:  # a result file vanished or cannot be read
        return f"cannot read the series: {exc.strerror or exc}"
    return None


def webhooks_once(ctx: DispatchContext) -> str | None:
    """Write due finish events, then send one event if one is due (None: nothing was)."""
    settings, outbox = ctx.settings, ctx.outbox
    outbox.emit_finished(ctx.receivers, ctx.event_data)
    event = outbox.claim_event(settings.webhook_timeout_s * 3 + _LEASE_MARGIN_S)
    if event is None:
        return None
    return _send(ctx, event)


def _send(ctx: DispatchContext, event: WebhookEvent) -> str:
    settings, outbox = ctx.settings, ctx.outbox
    paths = settings.integration(event.tenant).webhook_secret_files
    error: str | None
    try:
        secrets = [read_secret(path) for path in paths]
    except OSError as exc:
        secrets, error = [], f"cannot read the tenant's webhook secret: {exc.strerror}"
    else:
        error = None if secrets else "the tenant has no webhook secret configured"
    status = None
    if error is None:
        result = send_event(
            event.url,
            event.body,
            event.id,
            event.type,
            secrets,
            settings.webhook_timeout_s,
            settings.webhook_allowed_networks,
        )
        if result.ok:
            outbox.event_sent(event.id, event.lease, result.status or 200)
            telemetry.WEBHOOK_ATTEMPTS.labels(outcome="sent").inc()
            return "sent"
        error, status = result.error or "failed", result.status
    delay = partial(
        retry_delay_s, base_s=settings.webhook_retry_base_s, cap_s=settings.webhook_retry_max_s
    )
    state = outbox.event_failed(
        event.id, event.lease, error, status, settings.webhook_max_attempts, delay
    )
    outcome = "failed" if state == FAILED else "retry"
    log.warning(
        "job %s: %s to %s, attempt %d: %s",
        event.job_id,
        event.type,
        describe(event.url),
        event.attempts + 1,
        error,
    )
    telemetry.WEBHOOK_ATTEMPTS.labels(outcome=outcome).inc()
    return outcome


class Dispatcher:
    """Runs deliver_once and webhooks_once in two daemon threads until closed."""

    def __init__(self, settings: Settings, store: JobStore, files: JobFiles) -> None:
        self.context = DispatchContext(settings, store, OutboxStore(store), files)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._loop, args=(deliver_once,), name="dscm-delivery", daemon=True
            ),
            threading.Thread(
                target=self._loop, args=(webhooks_once,), name="dscm-webhooks", daemon=True
            ),
        ]

    def start(self) -> None:
        """Start the delivery and webhook threads."""
        for thread in self._threads:
            thread.start()

    def _loop(self, step: Callable[[DispatchContext], str | None]) -> None:
        interval_s = self.context.settings.dispatch_interval_s
        while not self._stop.is_set():
            try:
                busy = step(self.context) is not None
            except Exception:  # the database may be briefly unreachable; try again later
                log.exception("dispatch step failed")
                busy = False
            if not busy:
                self._stop.wait(interval_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the threads, waiting at most ``timeout_s`` for each to finish what it is sending."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout_s)
