"""/v1/jobs: submit, read, list, download, cancel."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReaderDep, ServicesDep, SubmitterDep, ViewableJobDep, find_job
from service.api.dicom_result import series_response
from service.api.disk import require_room_for, storage_error
from service.api.downloads import file_response
from service.api.metrics import ACCEPT_SECONDS, SUBMISSIONS
from service.api.problems import ApiError
from service.api.published import published_path
from service.api.routes.common import problems
from service.api.schemas import CaseIdentity, JobCreate, JobList, JobPublic
from service.api.serialise import API_PREFIX, decode_cursor, encode_cursor, job_url, to_public
from service.api.submit import accept_job
from service.jobs.job import JobState
from service.vocabulary.case import EXTERNAL_ID_MAX_CHARS, EXTERNAL_ID_PATTERN
from service.vocabulary.errors import DscmError

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"])


def form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON-schema property as the multipart form sends it: optional (no null), a list as
    one comma-separated string (repeating the field works too), no pydantic title."""
    field = {k: v for k, v in schema.items() if k not in ("anyOf", "title", "default")}
    stated = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if stated:
        field.update(stated[0])
    if field.get("type") == "array":
        names = field.pop("items").get("enum", [])
        field["type"] = "string"
        field["example"] = ",".join(names[:2])
        field["description"] = f"{field.get('description', '')}; or the field repeated"
    return field


def multipart_body() -> dict[str, Any]:
    """The submit form's OpenAPI description, made from JobCreate and CaseIdentity: a field
    added there is described here without a second copy."""
    properties: dict[str, Any] = {
        "rcm": {"type": "string", "format": "binary", "description": "RCM image"},
        "fcm": {"type": "string", "format": "binary", "description": "FCM image"},
    }
    for model in (JobCreate, CaseIdentity):
        for name, schema in model.model_json_schema()["properties"].items():
            properties[name] = form_field(schema)
    form = {"type": "object", "required": ["rcm", "fcm"], "properties": properties}
    content = {"multipart/form-data": {"schema": form}}
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=multipart_body(),
    responses=problems(400, 401, 403, 408, 413, 415, 422, 503, 507),
    summary="Submit an RCM/FCM pair for staining",
)
async def create_job(
    request: Request,
    response: Response,
    principal: SubmitterDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255, min_length=1)] = None,
) -> JobPublic:
    """Receive an RCM/FCM pair with options as multipart, check it, store and queue the job (202).
    The same Idempotency-Key replays the first job."""
    started = time.perf_counter()
    try:
        require_room_for(request, services.files)
        job, replayed = await accept_job(request, principal, services, idempotency_key)
    except DscmError as exc:
        SUBMISSIONS.labels(outcome=exc.code).inc()
        raise
    except (OSError, SQLAlchemyError) as exc:  # writing the upload or its record
        error = storage_error(exc)
        SUBMISSIONS.labels(outcome=error.code).inc()
        raise error from exc
    ACCEPT_SECONDS.observe(time.perf_counter() - started)
    SUBMISSIONS.labels(outcome="replayed" if replayed else "accepted").inc()
    response.headers["Location"] = job_url(job.id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return to_public(job, services.outbox.delivery(job.id))


@router.get(
    "",
    response_model=JobList,
    responses=problems(401, 403, 422),
    summary="The caller's jobs, newest first",
)
def list_jobs(
    principal: ReaderDep,
    services: ServicesDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    external_id: Annotated[
        str | None,
        Query(
            max_length=EXTERNAL_ID_MAX_CHARS,
            pattern=EXTERNAL_ID_PATTERN,
            description="Only the jobs submitted with this accession number (exact match)",
        ),
    ] = None,
) -> JobList:
    """The caller's jobs, newest first, optionally by state or accession number, a page at a time
    (``cursor`` continues from the last page)."""
    before = decode_cursor(cursor) if cursor else None
    jobs = services.store.list_jobs(principal.tenant_scope, state, limit + 1, before, external_id)
    page, more = jobs[:limit], len(jobs) > limit
    next_url = None
    if more:
        query = f"limit={limit}&cursor={encode_cursor(page[-1])}"
        if state is not None:
            query += f"&state={state.value}"
        if external_id is not None:
            query += f"&{urlencode({'external_id': external_id})}"
        next_url = f"{API_PREFIX}/jobs?{query}"
    deliveries = services.outbox.deliveries(job.id for job in page)
    return JobList(items=[to_public(job, deliveries.get(job.id)) for job in page], next=next_url)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses=problems(401, 403, 404),
    summary="State, progress, report or error of one job",
)
def get_job(job: ViewableJobDep, services: ServicesDep) -> JobPublic:
    """The job's state, progress, report or error, with its delivery."""
    return to_public(job, services.outbox.delivery(job.id))


_RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "image/tiff": {},
            "application/zip": {},
            'multipart/related; type="application/dicom"': {},
        },
        "description": "The pyramidal TIFF; for output_format=dicom the DICOM series, as a "
        'zip of its instances or (Accept: multipart/related; type="application/dicom") '
        "as DICOMweb multipart; Accept: image/tiff gives a dicom job's TIFF pyramid",
    },
    206: {"content": {"image/tiff": {}}, "description": "A byte range of the TIFF"},
    **problems(400, 401, 403, 404, 409, 410, 416),
}


# HEAD answers as GET does, without the body (download clients probe before a Range request).
@router.head(
    "/{job_id}/result",
    response_class=FileResponse,
    responses=_RESULT_RESPONSES,
    summary="The headers of the result download (size, ETag, Accept-Ranges), without the body",
)
@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses=_RESULT_RESPONSES,
    summary="Download the stained pyramid: a TIFF (HTTP Range supported) or a DICOM series",
)
def get_result(
    request: Request, job_id: str, principal: ReaderDep, services: ServicesDep
) -> Response:
    """The result: the DICOM series (multipart) of a DICOM job unless image/tiff is asked for, else
    the TIFF with ETag, Repr-Digest and Range support."""
    job = find_job(services, principal, job_id)
    series = job.report.dicom_series if job.report else None
    if series is not None and "image/tiff" not in request.headers.get("accept", "").lower():
        folder = published_path(services.files, job, series, "DICOM series", folder=True)
        return series_response(request, folder, job.id)
    path = published_path(services.files, job, job.result_name, "result")
    headers = {}
    if job.result_sha256:
        digest = base64.b64encode(bytes.fromhex(job.result_sha256)).decode()
        headers = {"Repr-Digest": f"sha-256=:{digest}:", "ETag": f'"{job.result_sha256}"'}
    download_name = f"{job.id}{job.options.pyramid_suffix}"
    media_type = job.options.pyramid_media_type  # service.vocabulary.options.RESULT_FORMATS
    return file_response(request, path, media_type, download_name, headers)


@router.head(
    "/{job_id}/thumbnail",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **problems(401, 403, 404, 409, 410)},
    summary="The headers of the JPEG preview, without the body",
)
@router.get(
    "/{job_id}/thumbnail",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}, **problems(401, 403, 404, 409, 410)},
    summary="A JPEG preview of the result",
)
def get_thumbnail(
    request: Request, job_id: str, principal: ReaderDep, services: ServicesDep
) -> FileResponse:
    """The JPEG preview of a finished job's result."""
    job = find_job(services, principal, job_id)
    path = published_path(services.files, job, job.thumbnail_name, "thumbnail")
    return file_response(request, path, "image/jpeg")


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses=problems(401, 403, 404),
    summary="Cancel a queued or running job and delete its files",
)
async def delete_job(job_id: str, principal: SubmitterDep, services: ServicesDep) -> JobPublic:
    """Cancel the job if it is queued or running and delete its files; the record stays, marked
    purged. A full disk or database is 507/503 and the DELETE may be retried."""
    job = find_job(services, principal, job_id)
    try:  # a full disk or database is 507/503 (docs/api.md), the client may retry the DELETE
        await run_in_threadpool(services.store.cancel, job.id)
        services.tiles.forget(job)
        await run_in_threadpool(services.files.purge, job.id)
        await run_in_threadpool(services.store.mark_purged, job.id)
    except (OSError, SQLAlchemyError) as exc:
        raise storage_error(exc) from exc
    refreshed = services.store.get(job.id)
    if refreshed is None:
        raise ApiError(404, "job_not_found", "no such job")
    return to_public(refreshed, services.outbox.delivery(job.id))
