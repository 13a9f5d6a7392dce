"""Why an attempt stopped early. All are JobCancelled, so the engine stops between tiles."""

from __future__ import annotations

from service.vocabulary.errors import JobCancelled


class AttemptStopped(JobCancelled):
    """Base: the engine must stop; the runner decides what the job record says."""


class AttemptLost(AttemptStopped):
    """The job was cancelled, or another worker took it over; this attempt owns nothing."""

    code = "attempt_lost"


class JobTimedOut(AttemptStopped):
    code = "time_limit_exceeded"
    title = "Job time limit exceeded"


class WorkerStopping(AttemptStopped):
    """The worker is shutting down; the job goes back to the queue."""

    code = "worker_stopping"
