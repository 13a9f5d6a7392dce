"""Job states, the immutable, typed job record the rest of the code reads, and job ids.

The store converts between these types and the database's JSON columns (service.jobs.store),
so every other module reads attributes, never keys.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.vocabulary.case import NO_PATIENT, Case, Patient
from service.vocabulary.options import JobOptions
from service.vocabulary.report import PublicReport

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
    """A new random job id: 32 lowercase hex digits, the form is_job_id accepts."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    """Only 32 lowercase hex digits name a job; anything else never reaches a path or a query."""
    return bool(_JOB_ID.fullmatch(value))


@dataclass(frozen=True)
class StoredFile:
    """One uploaded file as its job records it: the client's name, the name it is stored
    under in the job's upload folder, its size and its sha256."""

    filename: str | None
    stored_name: str
    size_bytes: int
    sha256: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredFile:
        """Read a stored input record; KeyError or ValueError when size or hash is missing or
        malformed."""
        filename = data.get("filename")
        return cls(
            filename=str(filename) if filename is not None else None,
            stored_name=str(data.get("stored_name", "")),
            size_bytes=int(data["size_bytes"]),
            sha256=str(data["sha256"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the job's inputs column (from_json reads it back)."""
        return {
            "filename": self.filename,
            "stored_name": self.stored_name,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class JobInputs:
    """What a job records of its inputs: both files, the pair's size and pixel size (as the
    files' tags say; None when they say nothing), and the request's fingerprint (what an
    Idempotency-Key replay is compared with)."""

    rcm: StoredFile
    fcm: StoredFile
    width_px: int
    height_px: int
    mpp_um: float | None
    fingerprint: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobInputs:
        """The stored form (the job table's JSON column)."""
        mpp_um = data.get("mpp_um")
        fingerprint = data.get("fingerprint")
        return cls(
            rcm=StoredFile.from_json(data["rcm"]),
            fcm=StoredFile.from_json(data["fcm"]),
            width_px=int(data["width_px"]),
            height_px=int(data["height_px"]),
            mpp_um=float(mpp_um) if mpp_um is not None else None,
            fingerprint=str(fingerprint) if fingerprint is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the job's inputs column (from_json reads it back)."""
        return {
            "rcm": self.rcm.to_json(),
            "fcm": self.fcm.to_json(),
            "width_px": self.width_px,
            "height_px": self.height_px,
            "mpp_um": self.mpp_um,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Job:
    """A snapshot of one job record."""

    id: str
    tenant: str
    state: JobState
    message: str | None  # where the job is, in words ("staining 12 of 150 tiles")
    progress_done: int
    progress_total: int
    attempts: int
    max_attempts: int
    requeues: int
    lease: str | None
    idempotency_key: str | None
    label: str | None
    external_id: str | None
    options: JobOptions
    inputs: JobInputs
    report: PublicReport | None  # the stain's report as the tenant sees it (succeeded jobs)
    patient: Patient
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
        """Whether the job reached a final state (succeeded, failed or cancelled) and will not run
        again."""
        return self.state in FINISHED_STATES

    @property
    def case(self) -> Case:
        """The case it belongs to (written into the output's description;
        service.vocabulary.case)."""
        return Case(self.label, self.external_id, self.patient)


@dataclass(frozen=True)
class NewJob:
    """What the API knows about a job when it accepts it."""

    id: str
    tenant: str
    options: JobOptions
    inputs: JobInputs
    max_attempts: int
    idempotency_key: str | None = None
    label: str | None = None
    external_id: str | None = None
    patient: Patient = NO_PATIENT
