"""Accepting a job: receive, check headers, record durably, then enqueue."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api.auth import Principal
from service.api.metrics import UPLOAD_BYTES
from service.api.outbound import Outbound, check_outbound
from service.api.problems import ApiError
from service.api.schemas import CaseIdentity, JobCreate
from service.api.services import Services
from service.api.uploads import FILE_FIELDS, ReceivedForm, receive_form
from service.core.grid import check_work_pixels, work_size_px
from service.jobs.job import Job, JobInputs, NewJob, StoredFile, new_job_id
from service.vocabulary.case import CASE_FIELDS
from service.vocabulary.errors import DscmError, InputError, ModelError
from service.vocabulary.options import stated_mpp_um

if TYPE_CHECKING:
    from service.slide import PairInfo

log = logging.getLogger(__name__)
FormModel = TypeVar("FormModel", bound=BaseModel)


def parse_options(form: ReceivedForm) -> JobCreate:
    """The job options from the form's fields (case fields apart); 422 for invalid options."""
    return _validated(JobCreate, {k: v for k, v in form.fields.items() if k not in CASE_FIELDS})


def parse_case(form: ReceivedForm) -> CaseIdentity:
    """The label and external id; a refusal names the field, never its value (never logged)."""
    return _validated(CaseIdentity, {k: v for k, v in form.fields.items() if k in CASE_FIELDS})


def _validated(model: type[FormModel], fields: dict[str, list[str]]) -> FormModel:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        unknown = [e["loc"][-1] for e in errors if e["type"] == "extra_forbidden"]
        if unknown:
            detail = f"unknown option(s): {', '.join(unknown)}; see docs/api.md"
            raise ApiError(422, "unknown_option", detail, extra={"errors": errors}) from exc
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        raise ApiError(422, "invalid_option", detail, extra={"errors": errors}) from exc


def check_stages(options: JobCreate, services: Services) -> None:
    """Refuse, at submit time, stages whose model is not installed (the worker would fail)."""
    try:
        services.stainer.check_stages(options.stages, services.settings.models_dir)
    except ModelError as exc:
        raise ApiError(422, "stage_unavailable", exc.detail) from exc
    except InputError as exc:
        raise ApiError(422, "invalid_option", exc.detail) from exc


def fingerprint(form: ReceivedForm, options: JobCreate, case: CaseIdentity) -> str:
    """The sha256 of what defines the request: input hashes, options, case. A replayed
    Idempotency-Key must carry the same one."""
    request: dict[str, Any] = {
        "rcm": form.files["rcm"].sha256,
        "fcm": form.files["fcm"].sha256,
        "options": _fingerprinted_options(options),
    }
    stated = case.model_dump(mode="json", exclude_none=True)
    if stated:  # keys recorded before the case (or the patient) fields existed still replay
        request["case"] = {"label": case.label, "external_id": case.external_id, **stated}
    canonical = json.dumps(request, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fingerprinted_options(options: JobCreate) -> dict[str, Any]:
    dumped = options.model_dump(mode="json")
    # As before these options existed, so that old keys still replay.
    for name in ("layers", "deliver_to", "callback_url"):
        if dumped.get(name) is None:
            dumped.pop(name, None)
    if not dumped.get("allow_swapped"):
        dumped.pop("allow_swapped", None)
    return dumped


def replay(services: Services, tenant: str, key: str, print_: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key made, if the request was the same."""
    earlier = services.store.find_by_idempotency_key(tenant, key)
    if earlier is None:
        return None
    return same_request(earlier, print_)


def same_request(job: Job, print_: str) -> Job:
    """``job``, if it was made by a request with this fingerprint; refused otherwise."""
    if job.inputs.fingerprint != print_:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
    return job


@dataclass(frozen=True)
class Submission:
    """One request's validated parts: the uploaded files, the options, the case and the
    fingerprint that an Idempotency-Key replay is checked against."""

    form: ReceivedForm
    options: JobCreate
    case: CaseIdentity
    fingerprint: str


async def accept_job(
    request: Request, principal: Principal, services: Services, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Returns ``(job, replayed)``; raises ApiError/DscmError for a request it refuses."""
    temp = services.files.temp_upload_dir()
    try:
        submission = parse_submission(await receive_files(request, temp, services))
        if idempotency_key is not None:
            earlier = replay(services, principal.tenant, idempotency_key, submission.fingerprint)
            if earlier is not None:
                return earlier, True
        check_stages(submission.options, services)
        outbound = await run_in_threadpool(
            check_outbound, submission.options, principal.tenant, services.settings
        )
        info = await probe_upload(submission.form, services)
        await check_pixel_size(info, submission.options, services)
        await check_pair(submission, services)
        job, replayed = await record_job(
            services, temp, submission, info, principal.tenant, idempotency_key, outbound
        )
        if not replayed:
            log.info(
                "job %s accepted: %d x %d px",
                job.id,
                info.width_px,
                info.height_px,
                extra={"job_id": job.id, "tenant": job.tenant},
            )
            await run_in_threadpool(enqueue, services, job.id, job.tenant)
        return job, replayed
    finally:
        shutil.rmtree(temp, ignore_errors=True)


async def receive_files(request: Request, temp: Path, services: Services) -> ReceivedForm:
    """The multipart form, streamed into ``temp`` within the upload limits; both files required."""
    settings = services.settings
    form = await receive_form(
        request,
        temp,
        settings.max_upload_bytes,
        settings.upload_idle_timeout_s,
        settings.upload_deadline_s,
    )
    UPLOAD_BYTES.inc(sum(f.size_bytes for f in form.files.values()))
    missing = [name for name in FILE_FIELDS if name not in form.files]
    if missing:
        raise ApiError(422, "missing_file", f"missing file field(s): {', '.join(missing)}")
    return form


def parse_submission(form: ReceivedForm) -> Submission:
    """The options and the case, validated, and the request's fingerprint."""
    options, case = parse_options(form), parse_case(form)
    return Submission(form, options, case, fingerprint(form, options, case))


async def probe_upload(form: ReceivedForm, services: Services) -> PairInfo:
    """The pair's size and tags, read from the headers; a refusal names the client's files."""
    # pyvips is imported on first use, never at API import time
    from service.slide import SlideInputs, probe_pair

    rcm, fcm = form.files["rcm"], form.files["fcm"]
    try:
        return await run_in_threadpool(
            probe_pair, SlideInputs(rcm.path, fcm.path), services.settings.max_pixels
        )
    except DscmError as error:  # name the files the client sent, not our stored copies
        for received in (rcm, fcm):
            shown = received.filename or f"the {received.field} upload"
            error.detail = error.detail.replace(received.path.name, shown)
        error.args = (error.detail,)
        raise


async def check_pixel_size(info: PairInfo, options: JobCreate, services: Services) -> None:
    """Refuse, at submit time, what the worker would refuse: a pair whose pixel size nobody
    states or no confocal microscope makes, and one whose resampled size exceeds the limit."""
    settings = services.settings
    how = "send the mpp_um field"
    mpp_um, _ = stated_mpp_um(options.mpp_um, info.mpp_um, settings.default_mpp_um, how)
    model_mpp_um = await run_in_threadpool(
        services.stainer.trained_mpp_um, options.stages, settings.models_dir
    )
    work_px = work_size_px(info.width_px, info.height_px, mpp_um, model_mpp_um)
    check_work_pixels((info.width_px, info.height_px), work_px, mpp_um, settings.max_pixels)


async def check_pair(submission: Submission, services: Services) -> None:
    """Refuse, at submit time, a pair the worker's input check would refuse (FCM and RCM
    clearly swapped, or one image twice): 422 inputs_swapped / inputs_identical, unless the
    request says allow_swapped."""
    files = submission.form.files
    await run_in_threadpool(
        services.stainer.check_pair,
        files["rcm"].path,
        files["fcm"].path,
        submission.options.allow_swapped,
        services.settings.max_pixels,
    )


async def record_job(
    services: Services,
    temp: Path,
    submission: Submission,
    info: PairInfo,
    tenant: str,
    idempotency_key: str | None,
    outbound: Outbound | None = None,
) -> tuple[Job, bool]:
    """Move the upload under a new job id and record the job durably, with its delivery and
    webhook records (``outbound``): ``(job, replayed)``, replayed when a concurrent request
    with the same Idempotency-Key recorded it first."""
    job_id = new_job_id()
    upload_dir = services.files.adopt_upload(temp, job_id)
    new = NewJob(
        id=job_id,
        tenant=tenant,
        options=submission.options.to_options(),
        inputs=recorded_inputs(submission, info),
        max_attempts=services.settings.max_attempts,
        idempotency_key=idempotency_key,
        label=submission.case.label,
        external_id=submission.case.external_id,
        patient=submission.case.patient,
    )
    try:
        related = outbound.rows(job_id, tenant) if outbound else []
        job, created = await run_in_threadpool(services.store.create, new, related)
    except BaseException:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise
    if not created:  # a concurrent request with the same key won the race
        shutil.rmtree(upload_dir, ignore_errors=True)
        return same_request(job, submission.fingerprint), True
    return job, False


def recorded_inputs(submission: Submission, info: PairInfo) -> JobInputs:
    """What the job records of its inputs: each file's name, size and hash, the pair's size
    and pixel size, and the request's fingerprint."""
    stored = {
        name: StoredFile(f.filename, f.path.name, f.size_bytes, f.sha256)
        for name, f in submission.form.files.items()
    }
    return JobInputs(
        rcm=stored["rcm"],
        fcm=stored["fcm"],
        width_px=info.width_px,
        height_px=info.height_px,
        mpp_um=info.mpp_um,
        fingerprint=submission.fingerprint,
    )


def enqueue(services: Services, job_id: str, tenant: str) -> None:
    """Hand the job to the queue; if the broker is down the job stays queued for the sweeper."""
    try:
        services.queue.enqueue(job_id)
    except Exception as exc:
        log.warning(
            "job %s accepted but not enqueued (the sweeper will retry): %s",
            job_id,
            exc,
            extra={"job_id": job_id, "tenant": tenant},
        )
        return
    services.store.mark_enqueued(job_id)
