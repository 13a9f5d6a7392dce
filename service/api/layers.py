"""The viewer's layers of a job: fixed names mapped to files the runner recorded, never paths."""

from __future__ import annotations

from service.jobs.job import Job, JobState
from service.vocabulary.options import VIEW_LAYERS, ViewLayer


def job_layers(job: Job) -> list[ViewLayer]:
    """The layers a succeeded, unpurged job can show: the stain and its recorded extra outputs."""
    if job.state != JobState.SUCCEEDED or job.purged_at is not None or not job.result_name:
        return []
    extra = job.report.layer_files if job.report else {}
    return [layer for layer in VIEW_LAYERS if layer == "stain" or layer in extra]


def layer_file_name(job: Job, layer: ViewLayer) -> str | None:
    """The file name (in the job's result folder) behind ``layer``, if the job kept it."""
    if layer == "stain":
        return job.result_name
    return job.report.layer_files.get(layer) if job.report else None
