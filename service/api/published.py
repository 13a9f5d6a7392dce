"""Files a finished job published (result, thumbnail, extra layers), by name, inside its folder."""

from __future__ import annotations

from pathlib import Path

from service.api.problems import ApiError
from service.api.serialise import job_url
from service.jobs.files import JobFiles
from service.jobs.job import Job, JobState


def require_succeeded(job: Job, what: str) -> None:
    """409 while the job runs or when it did not succeed; 410 once its files were deleted."""
    if job.state in (JobState.QUEUED, JobState.RUNNING):
        raise ApiError(
            409, "job_not_finished", f"the job is {job.state.value}; poll {job_url(job.id)}"
        )
    if job.state != JobState.SUCCEEDED:
        raise ApiError(
            409, f"job_{job.state.value}", f"the job {job.state.value}: it has no {what}"
        )
    if job.purged_at is not None:
        raise ApiError(410, "purged", f"the {what} was deleted")


def published_path(
    files: JobFiles, job: Job, name: str | None, what: str, folder: bool = False
) -> Path:
    """The path of a file (or, with ``folder``, a DICOM series folder) the job published, or
    the API error that says why there is none."""
    require_succeeded(job, what)
    if name is None:
        raise ApiError(410, "purged", f"the {what} was deleted")
    try:
        path = files.published_file(job.id, name)
    except ValueError as exc:  # a record naming something outside the job's folder
        raise ApiError(410, "purged", f"the {what} is not stored") from exc
    if not (path.is_dir() if folder else path.is_file()):
        raise ApiError(410, "purged", f"the {what} is no longer stored")
    return path
