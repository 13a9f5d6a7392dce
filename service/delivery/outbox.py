"""OutboxStore: every read and change of deliveries, job hooks and webhook events.

As in JobStore, a change is a conditional UPDATE (``... WHERE lease = ...``), so any number of
dispatchers (worker processes, the embedded worker) may race: the loser's UPDATE matches no row.
A dispatcher holds a row by a lease that expires; one that dies mid-send loses the row to the
next dispatcher once the lease is over, so a send survives worker and API restarts.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.delivery.records import (
    DELIVERED,
    FAILED,
    OUTBOX_TABLES,
    PENDING,
    SENT,
    Delivery,
    DeliveryRow,
    JobHookRow,
    WebhookEvent,
    WebhookEventRow,
)
from service.jobs.db import Base, JobRow, utc_now
from service.jobs.job import JobState
from service.jobs.store import JobStore

# Who receives a job's events: (target, url) pairs, from the tenant's settings and the hook.
Receivers = Callable[[str, str | None], list[tuple[str, str]]]
# The event body of a job at a moment: (event type, job id) -> JSON-able dict, or None if gone.
EventData = Callable[[str, str], dict[str, Any] | None]


def retry_delay_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff: base, 2 x base, 4 x base ... capped, with +-10 % jitter so that
    many rows failing together do not retry in lockstep."""
    delay_s = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return delay_s * random.uniform(0.9, 1.1)


def new_hook(job_id: str, tenant: str, callback_url: str | None) -> JobHookRow:
    """The job's webhook hook row, written with the job in the same transaction."""
    return JobHookRow(job_id=job_id, tenant=tenant, callback_url=callback_url, created_at=utc_now())


def new_delivery(job_id: str, tenant: str, destination: str) -> DeliveryRow:
    """A pending delivery, due as soon as its job succeeds."""
    now = utc_now()
    return DeliveryRow(
        job_id=job_id,
        tenant=tenant,
        destination=destination,
        state=PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def _free(row: type[DeliveryRow] | type[WebhookEventRow], now: datetime) -> ColumnElement[bool]:
    return or_(row.lease.is_(None), row.lease_expires_at < now)


_Row = TypeVar("_Row", DeliveryRow, WebhookEventRow)


def _failed_attempt(
    session: Session,
    table: type[_Row],
    key: str,
    lease: str,
    error: str,
    max_attempts: int,
    delay_s: Callable[[int], float],
    **values: Any,
) -> str | None:
    """Count a failed attempt on the row of ``table`` (deliveries or events) whose primary key
    is ``key`` and whose lease is ``lease``: pending again after ``delay_s(attempts)``, or failed
    once ``max_attempts`` were made; ``values`` are more columns to set. Returns the new
    state, or None when the lease was lost (another dispatcher owns the row now)."""
    row = session.get(table, key)
    if row is None or row.lease != lease:
        return None
    attempts = row.attempts + 1
    state = FAILED if attempts >= max_attempts else PENDING
    result = session.execute(
        update(table)
        .where(table.lease == lease)  # a lease (uuid4) is taken once, by one row
        .values(
            state=state,
            attempts=attempts,
            last_error=error[:2000],
            next_attempt_at=utc_now() + timedelta(seconds=delay_s(attempts)),
            lease=None,
            lease_expires_at=None,
            **values,
        )
    )
    return state if getattr(result, "rowcount", 0) else None


class OutboxStore:
    """Deliveries and webhook events in the job database (SQLite or PostgreSQL)."""

    def __init__(self, jobs: JobStore) -> None:
        self.database = jobs.database
        Base.metadata.create_all(self.database, tables=OUTBOX_TABLES)
        self._sessions = sessionmaker(self.database, expire_on_commit=False)

    # ---- API side ----

    def delivery(self, job_id: str) -> Delivery | None:
        """The job's delivery, or None when it has none."""
        with self._sessions() as session:
            row = session.get(DeliveryRow, job_id)
            return None if row is None else Delivery.of(row)

    def deliveries(self, job_ids: Iterable[str]) -> dict[str, Delivery]:
        """The deliveries of these jobs (one query for a page of the job list)."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self._sessions() as session:
            rows = session.scalars(select(DeliveryRow).where(DeliveryRow.job_id.in_(ids)))
            return {row.job_id: Delivery.of(row) for row in rows}

    def retry(self, job_id: str, tenant: str, destination: str | None) -> Delivery:
        """Deliver again, from attempt 0 and now: a finished delivery is reset (to
        ``destination`` if given); a job without one gets one. A pending one is left as it is."""
        now = utc_now()
        with self._sessions.begin() as session:
            row = session.get(DeliveryRow, job_id)
            if row is None:
                if destination is None:
                    raise ValueError("no destination")
                row = new_delivery(job_id, tenant, destination)
                session.add(row)
            elif row.state != PENDING:
                row.state, row.attempts, row.next_attempt_at = PENDING, 0, now
                row.lease = row.lease_expires_at = row.delivered_at = None
                row.destination = destination or row.destination
                row.updated_at = now
            session.flush()
            return Delivery.of(row)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Deliveries by state and webhook events by state (metrics)."""
        with self._sessions() as session:
            deliveries = session.execute(
                select(DeliveryRow.state, func.count()).group_by(DeliveryRow.state)
            )
            events = session.execute(
                select(WebhookEventRow.state, func.count()).group_by(WebhookEventRow.state)
            )
            return {s: int(n) for s, n in deliveries}, {s: int(n) for s, n in events}

    # ---- dispatcher: deliveries ----

    def settle_unsent(self) -> int:
        """Pending deliveries of jobs that failed or were cancelled will never have a result."""
        ended = select(JobRow.id).where(
            JobRow.state.in_([JobState.FAILED.value, JobState.CANCELLED.value])
        )
        with self._sessions.begin() as session:
            result = session.execute(
                update(DeliveryRow)
                .where(DeliveryRow.state == PENDING, DeliveryRow.job_id.in_(ended))
                .values(
                    state=FAILED,
                    last_error="the job did not succeed: nothing to deliver",
                    updated_at=utc_now(),
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def claim_delivery(self, lease_s: float) -> tuple[Delivery, str] | None:
        """Lease the most overdue delivery whose job succeeded: ``(delivery, lease)``, or
        None when nothing is due."""
        now = utc_now()
        succeeded = select(JobRow.id).where(JobRow.state == JobState.SUCCEEDED.value)
        due = (
            select(DeliveryRow.job_id)
            .where(
                DeliveryRow.state == PENDING,
                DeliveryRow.next_attempt_at <= now,
                _free(DeliveryRow, now),
                DeliveryRow.job_id.in_(succeeded),
            )
            .order_by(DeliveryRow.next_attempt_at)
            .limit(5)
        )
        with self._sessions.begin() as session:
            for job_id in list(session.scalars(due)):
                lease = uuid.uuid4().hex
                if self._update_delivery(
                    session,
                    job_id,
                    DeliveryRow.state == PENDING,
                    _free(DeliveryRow, now),
                    lease=lease,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                ):
                    row = session.get(DeliveryRow, job_id)
                    assert row is not None
                    session.refresh(row)
                    return Delivery.of(row), lease
        return None

    def extend_delivery(self, job_id: str, lease: str, lease_s: float) -> bool:
        """Keep a long delivery's lease (called between instances); False once it is lost."""
        with self._sessions.begin() as session:
            return self._update_delivery(
                session,
                job_id,
                DeliveryRow.lease == lease,
                lease_expires_at=utc_now() + timedelta(seconds=lease_s),
            )

    def delivered(
        self,
        job_id: str,
        lease: str,
        instances: int,
        receivers: Receivers,
        event_data: EventData,
    ) -> bool:
        """Mark it delivered and write the job.delivered events in the same transaction."""
        now = utc_now()
        with self._sessions.begin() as session:
            done = self._update_delivery(
                session,
                job_id,
                DeliveryRow.lease == lease,
                state=DELIVERED,
                attempts=DeliveryRow.attempts + 1,
                delivered_at=now,
                last_error=None,
                instances=instances,
                lease=None,
                lease_expires_at=None,
            )
            if done:
                row = session.get(DeliveryRow, job_id)
                assert row is not None
                session.refresh(row)
                delivery = {
                    "destination": row.destination,
                    "instances": instances,
                    "delivered_at": now.isoformat().replace("+00:00", "Z"),
                }
                self._write_events(
                    session, job_id, "job.delivered", receivers, event_data, {"delivery": delivery}
                )
            return done

    def delivery_failed(
        self,
        job_id: str,
        lease: str,
        error: str,
        max_attempts: int,
        delay_s: Callable[[int], float],
    ) -> str | None:
        """Count a failed attempt: pending again after ``delay_s(attempts)``, or failed once
        ``max_attempts`` were made. Returns the new state (None if the lease was lost)."""
        with self._sessions.begin() as session:
            return _failed_attempt(
                session,
                DeliveryRow,
                job_id,
                lease,
                error,
                max_attempts,
                delay_s,
                updated_at=utc_now(),
            )

    def _update_delivery(
        self, session: Session, job_id: str, *where: ColumnElement[bool], **values: Any
    ) -> bool:
        values.setdefault("updated_at", utc_now())
        result = session.execute(
            update(DeliveryRow).where(DeliveryRow.job_id == job_id, *where).values(**values)
        )
        return bool(getattr(result, "rowcount", 0))

    # ---- dispatcher: webhook events ----

    def emit_finished(self, receivers: Receivers, event_data: EventData) -> int:
        """Write job.succeeded / job.failed events for finished jobs with a hook; returns how
        many jobs were done. The hook is marked by a conditional UPDATE in the same
        transaction, so each job's finish is written once, whatever crashes or races."""
        finished = {JobState.SUCCEEDED.value: "job.succeeded", JobState.FAILED.value: "job.failed"}
        open_hooks = (
            select(JobHookRow.job_id, JobRow.state)
            .join(JobRow, JobRow.id == JobHookRow.job_id)
            .where(JobHookRow.finished_event.is_(None), JobRow.state.in_(list(finished)))
            .limit(100)
        )
        done = 0
        with self._sessions() as session:
            candidates = list(session.execute(open_hooks))
        for job_id, state in candidates:
            event = finished[state]
            with self._sessions.begin() as session:
                marked = session.execute(
                    update(JobHookRow)
                    .where(JobHookRow.job_id == job_id, JobHookRow.finished_event.is_(None))
                    .values(finished_event=event)
                )
                if getattr(marked, "rowcount", 0):  # else another dispatcher wrote them
                    self._write_events(session, job_id, event, receivers, event_data)
                    done += 1
        # Cancelled jobs send nothing; their hooks are closed so they are not scanned again.
        cancelled = select(JobRow.id).where(JobRow.state == JobState.CANCELLED.value)
        with self._sessions.begin() as session:
            session.execute(
                update(JobHookRow)
                .where(JobHookRow.finished_event.is_(None), JobHookRow.job_id.in_(cancelled))
                .values(finished_event="cancelled")
            )
        return done

    def _write_events(
        self,
        session: Session,
        job_id: str,
        event_type: str,
        receivers: Receivers,
        event_data: EventData,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Add one event per receiver; ``extra`` parts are merged into the job's data (what
        this transaction knows and other sessions cannot see yet)."""
        hook = session.get(JobHookRow, job_id)
        if hook is None:
            return
        targets = receivers(hook.tenant, hook.callback_url)
        if not targets:
            return
        data = event_data(event_type, job_id)
        if data is None:
            return
        for key, part in (extra or {}).items():
            data[key] = {**data.get(key, {}), **part}
        now = utc_now()
        for target, url in targets:
            event_id = uuid.uuid4().hex
            body = {
                "id": event_id,
                "type": event_type,
                "created_at": now.isoformat().replace("+00:00", "Z"),
                "tenant": hook.tenant,
                "data": data,
            }
            session.add(
                WebhookEventRow(
                    id=event_id,
                    job_id=job_id,
                    tenant=hook.tenant,
                    type=event_type,
                    target=target,
                    url=url,
                    body=json.dumps(body, separators=(",", ":"), sort_keys=True),
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        session.flush()

    def claim_event(self, lease_s: float) -> WebhookEvent | None:
        """Lease one due, unleased pending webhook event for ``lease_s`` and return it, or None when
        none is due or another dispatcher won each."""
        now = utc_now()
        due = (
            select(WebhookEventRow.id)
            .where(
                WebhookEventRow.state == PENDING,
                WebhookEventRow.next_attempt_at <= now,
                _free(WebhookEventRow, now),
            )
            .order_by(WebhookEventRow.next_attempt_at)
            .limit(5)
        )
        with self._sessions.begin() as session:
            for event_id in list(session.scalars(due)):
                lease = uuid.uuid4().hex
                result = session.execute(
                    update(WebhookEventRow)
                    .where(
                        WebhookEventRow.id == event_id,
                        WebhookEventRow.state == PENDING,
                        _free(WebhookEventRow, now),
                    )
                    .values(lease=lease, lease_expires_at=now + timedelta(seconds=lease_s))
                )
                if getattr(result, "rowcount", 0):
                    row = session.get(WebhookEventRow, event_id)
                    assert row is not None
                    session.refresh(row)
                    return WebhookEvent(
                        row.id,
                        row.job_id,
                        row.tenant,
                        row.type,
                        row.url,
                        row.body,
                        row.attempts,
                        lease,
                    )
        return None

    def event_sent(self, event_id: str, lease: str, status: int) -> bool:
        """Mark the event sent with the receiver's status; False when ``lease`` no longer holds
        it."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(WebhookEventRow)
                .where(WebhookEventRow.id == event_id, WebhookEventRow.lease == lease)
                .values(
                    state=SENT,
                    attempts=WebhookEventRow.attempts + 1,
                    last_status=status,
                    last_error=None,
                    sent_at=utc_now(),
                    lease=None,
                    lease_expires_at=None,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    def event_failed(
        self,
        event_id: str,
        lease: str,
        error: str,
        status: int | None,
        max_attempts: int,
        delay_s: Callable[[int], float],
    ) -> str | None:
        """As delivery_failed, for a webhook event; ``status`` is the receiver's answer."""
        with self._sessions.begin() as session:
            return _failed_attempt(
                session,
                WebhookEventRow,
                event_id,
                lease,
                error,
                max_attempts,
                delay_s,
                last_status=status,
            )

    def events(self, job_id: str) -> Sequence[WebhookEventRow]:
        """A job's events, oldest first (tests and operators)."""
        with self._sessions() as session:
            query = select(WebhookEventRow).where(WebhookEventRow.job_id == job_id)
            return list(session.scalars(query.order_by(WebhookEventRow.created_at)))

    # ---- housekeeping ----

    def remove_orphans(self) -> int:
        """Rows whose job record is gone (the retention purge deleted it)."""
        jobs = select(JobRow.id)
        removed = 0
        with self._sessions.begin() as session:
            for row in (DeliveryRow, JobHookRow, WebhookEventRow):
                result = session.execute(delete(row).where(row.job_id.not_in(jobs)))
                removed += int(getattr(result, "rowcount", 0) or 0)
        return removed
