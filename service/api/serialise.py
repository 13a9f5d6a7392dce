"""Job records to their public JSON (JobPublic), and list cursors."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from service.api.layers import job_layers
from service.api.problems import ApiError
from service.api.schemas import (
    DeliveryPublic,
    InputFilePublic,
    JobCreate,
    JobError,
    JobInputsPublic,
    JobLinks,
    JobProgress,
    JobPublic,
    JobResultPublic,
)
from service.delivery.records import Delivery
from service.jobs.job import Job, JobState, StoredFile
from service.jobs.links import API_PREFIX as API_PREFIX
from service.jobs.links import VIEWER_PREFIX as VIEWER_PREFIX
from service.jobs.links import job_url, viewer_url
from service.vocabulary.progress import PROGRESS_SCALE


def _rounded_mpp_um(mpp_um: float | None) -> float | None:
    """The pixel size to 5 decimals, as the report gives it: a resolution tag stored as a
    float32 ratio (0.75000004577637) says no more than that."""
    return round(mpp_um, 5) if mpp_um is not None else None


def to_public(job: Job, delivery: Delivery | None = None) -> JobPublic:
    """The job as the API shows it: progress in percent, the result's size and hash once it can be
    downloaded, the error of a failed or cancelled job, the delivery and links."""
    total, done = job.progress_total, job.progress_done
    if job.state == JobState.SUCCEEDED:  # also a record of an older release (tiles of tiles)
        done, total, percent = PROGRESS_SCALE, PROGRESS_SCALE, 100.0
    else:
        percent = round(100.0 * done / total, 1) if total else 0.0
    result = None
    if job.state == JobState.SUCCEEDED and job.result_name and job.purged_at is None:
        result = JobResultPublic(
            size_bytes=job.result_bytes or 0,
            sha256=job.result_sha256 or "",
            media_type=job.options.pyramid_media_type,
        )
    error = None
    if job.error_code and job.state in (JobState.FAILED, JobState.CANCELLED):
        error = JobError(code=job.error_code, detail=job.error_detail or "")
    inputs = job.inputs
    return JobPublic(
        id=job.id,
        state=job.state,
        message=job.message,
        stage=job.message,
        progress=JobProgress(done=done, total=total, percent=percent),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        options=JobCreate.from_options(job.options),
        inputs=JobInputsPublic(
            rcm=_input(inputs.rcm),
            fcm=_input(inputs.fcm),
            width_px=inputs.width_px,
            height_px=inputs.height_px,
            mpp_um=_rounded_mpp_um(inputs.mpp_um),
        ),
        label=job.label,
        external_id=job.external_id,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        purged_at=job.purged_at,
        result=result,
        report=job.report.to_json() if job.report else None,
        error=error,
        layers=job_layers(job),
        delivery=_delivery(delivery),
        links=JobLinks(
            self=job_url(job.id),
            result=job_url(job.id, "/result"),
            thumbnail=job_url(job.id, "/thumbnail"),
            viewer=viewer_url(job.id),
            dzi=job_url(job.id, "/dzi"),
        ),
    )


def _delivery(delivery: Delivery | None) -> DeliveryPublic | None:
    if delivery is None:
        return None
    return DeliveryPublic.model_validate(delivery, from_attributes=True)


def _input(stored: StoredFile) -> InputFilePublic:
    return InputFilePublic(
        filename=stored.filename, size_bytes=stored.size_bytes, sha256=stored.sha256
    )


def encode_cursor(job: Job) -> str:
    """An opaque page cursor: the job's creation time and id, URL-safe base64."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The creation time and id in a cursor; 422 invalid_cursor for one this API did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, job_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned") from exc
