"""The viewer's layers of a job: fixed names mapped to files the runner recorded, never paths."""

from __future__ import annotations

from typing import get_args

from service.api.schemas import ViewLayer
from service.jobs.job import Job, JobState

VIEW_LAYERS: tuple[ViewLayer, ...] = get_args(ViewLayer)


def _extra_outputs(job: Job) -> dict[str, object]:
    extra = (job.report or {}).get("extra_outputs")
    return extra if isinstance(extra, dict) else {}


def job_layers(job: Job) -> list[ViewLayer]:
    """The layers a succeeded, unpurged job can show: the stain and its recorded extra outputs."""
    if job.state != JobState.SUCCEEDED or job.purged_at is not None or not job.result_name:
        return []
    extra = _extra_outputs(job)
    return [layer for layer in VIEW_LAYERS if layer == "stain" or layer in extra]


def layer_file_name(job: Job, layer: ViewLayer) -> str | None:
    """The file name (in the job's result folder) behind ``layer``, if the job kept it."""
    if layer == "stain":
        return job.result_name
    name = _extra_outputs(job).get(layer)
    return name if isinstance(name, str) else None
