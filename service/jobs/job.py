"""Job states, the immutable job view the rest of the code reads, and job ids."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.case import Case, Patient
from service.options import JobOptions

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    """Only 32 lowercase hex digits name a job; anything else never reaches a path or a query."""
    return bool(_JOB_ID.fullmatch(value))


@dataclass(frozen=True)
class Job:
    """A snapshot of one job record."""

    id: str
    tenant: str
    state: JobState
    stage: str | None
    progress_done: int
    progress_total: int
    attempts: int
    max_attempts: int
    requeues: int
    lease: str | None
    idempotency_key: str | None
    label: str | None
    external_id: str | None
    options: dict[str, Any]
    inputs: dict[str, Any]
    report: dict[str, Any] | None
    patient: dict[str, Any] | None
    error_code: str | None
    error_detail: str | None
    result_name: str | None
    result_sha256: str | None
    result_bytes: int | None
    thumbnail_name: str | None
    created_at: datetime
    updated_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    purged_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def stain_options(self) -> JobOptions:
        """The options its submitter stated (stored as JSON), over JobOptions' defaults."""
        return JobOptions.from_json(self.options)

    @property
    def case(self) -> Case:
        """The case it belongs to (written into the output's description; service.case)."""
        return Case(self.label, self.external_id, Patient(**(self.patient or {})))


@dataclass(frozen=True)
class NewJob:
    """What the API knows about a job when it accepts it."""

    id: str
    tenant: str
    options: dict[str, Any]
    inputs: dict[str, Any]
    max_attempts: int
    idempotency_key: str | None = None
    label: str | None = None
    external_id: str | None = None
    patient: dict[str, Any] | None = None  # service.case.Patient.to_json()
