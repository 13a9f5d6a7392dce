"""The delivery and webhook tables (on the job table's metadata, so one create_all makes all).

A job submitted with a destination gets a DeliveryRow, and one whose tenant or caller wants
events a JobHookRow, in the same transaction as the job itself; the dispatcher turns a finished
job's hook into WebhookEventRows (the outbox) and works through both kinds of row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.jobs.db import JOB_ID_LENGTH, Base, UTCDateTime

DeliveryState = str  # pending | delivered | failed
PENDING, DELIVERED, FAILED, SENT = "pending", "delivered", "failed", "sent"
DELIVERY_STATES = (PENDING, DELIVERED, FAILED)
EVENT_STATES = (PENDING, SENT, FAILED)


class Attempted:
    """The columns a dispatcher works a row by: its state, attempts so far, when it is due,
    who holds it (a lease that expires) and why the last attempt failed."""

    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class DeliveryRow(Attempted, Base):
    """One job's delivery to one destination; state changes are conditional UPDATEs."""

    __tablename__ = "dscm_deliveries"
    __table_args__ = (Index("ix_dscm_deliveries_due", "state", "next_attempt_at"),)

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    instances: Mapped[int | None] = mapped_column(Integer, default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobHookRow(Base):
    """A job whose events someone wants: the tenant's receiver and/or the job's callback_url.

    ``finished_event`` is set, once, in the transaction that writes the job's finish events.
    """

    __tablename__ = "dscm_job_hooks"
    __table_args__ = (Index("ix_dscm_job_hooks_open", "finished_event"),)

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    finished_event: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookEventRow(Attempted, Base):
    """One event for one receiver (the outbox); its body is fixed when written, so every
    retry sends the same bytes (re-signed with a fresh timestamp). A job's finish events are
    written once (JobHookRow.finished_event); each delivery writes its own job.delivered."""

    __tablename__ = "dscm_webhook_events"
    __table_args__ = (
        Index("ix_dscm_webhook_events_due", "state", "next_attempt_at"),
        Index("ix_dscm_webhook_events_job", "job_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH))
    tenant: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(16))  # tenant | callback
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


OUTBOX_TABLES = [
    Base.metadata.tables[row.__tablename__] for row in (DeliveryRow, JobHookRow, WebhookEventRow)
]


@dataclass(frozen=True)
class Delivery:
    """A job's delivery as the API shows it."""

    job_id: str
    tenant: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    instances: int | None

    @classmethod
    def of(cls, row: DeliveryRow) -> Delivery:
        """The delivery record of a row; next_attempt_at only while it is pending."""
        return cls(
            job_id=row.job_id,
            tenant=row.tenant,
            destination=row.destination,
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            delivered_at=row.delivered_at,
            next_attempt_at=row.next_attempt_at if row.state == PENDING else None,
            instances=row.instances,
        )


@dataclass(frozen=True)
class WebhookEvent:
    """One event due to be sent (a claimed outbox row)."""

    id: str
    job_id: str
    tenant: str
    type: str
    url: str
    body: str
    attempts: int
    lease: str
