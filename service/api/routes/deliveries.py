"""/v1/jobs/{id}/deliveries: deliver a succeeded DICOM job (again) by hand."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import ServicesDep, SubmitterDep, find_job
from service.api.limits import read_json_body
from service.api.outbound import check_destination
from service.api.problems import ApiError
from service.api.routes.common import problems
from service.api.schemas import DeliveryPublic
from service.api.serialise import API_PREFIX
from service.jobs.job import JobState
from service.runtime.integrations import NAME_PATTERN

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["deliveries"])


class DeliveryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Deliver here instead (one the tenant may use); default: the job's own",
    )


_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": DeliveryCreate.model_json_schema()}},
    }
}


@router.post(
    "/{job_id}/deliveries",
    response_model=DeliveryPublic,
    status_code=202,
    openapi_extra=_BODY,
    responses=problems(401, 403, 404, 409, 413, 422),
    summary="Deliver the job's DICOM series again (after a failed delivery, or to a PACS)",
)
async def retry_delivery(
    request: Request, job_id: str, principal: SubmitterDep, services: ServicesDep
) -> DeliveryPublic:
    """Queue a new delivery of a succeeded job's DICOM series to its destination, the one named in
    the body, or the tenant's default. Refuses a job that did not succeed (409), a result that is
    not DICOM (409) or purged (410), and a job without a destination (422)."""
    settings = services.settings
    body = await read_json_body(
        request,
        DeliveryCreate,
        settings.upload_idle_timeout_s,
        deadline_s=settings.upload_deadline_s,
    )
    job = await run_in_threadpool(find_job, services, principal, job_id)
    destination = body.destination if body is not None else None
    if destination is not None:
        check_destination(services.settings, job.tenant, destination)
    if job.state != JobState.SUCCEEDED:
        raise ApiError(409, "job_not_succeeded", "only a succeeded job can be delivered")
    if job.purged_at is not None:
        raise ApiError(410, "purged", "the job's result was deleted")
    if job.report is None or job.report.dicom_series is None:
        raise ApiError(
            409, "not_dicom", "the job's result is not a DICOM series (output_format=dicom)"
        )
    current = await run_in_threadpool(services.outbox.delivery, job.id)
    if current is None and destination is None:
        default = services.settings.integration(job.tenant).default_destination
        if default is None:
            raise ApiError(
                422, "destination_required", "the job has no delivery: name a destination"
            )
        destination = check_destination(services.settings, job.tenant, default)
    delivery = await run_in_threadpool(services.outbox.retry, job.id, job.tenant, destination)
    return DeliveryPublic.model_validate(delivery, from_attributes=True)
