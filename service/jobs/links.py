"""A job's addresses: its API paths and its viewer page, relative, or absolute under the
service's public URL (DSCM_PUBLIC_URL) where a reader outside the API needs them (webhooks)."""

from __future__ import annotations

API_PREFIX = "/v1"
VIEWER_PREFIX = "/viewer"


def job_url(job_id: str, tail: str = "", base: str = "") -> str:
    """``/v1/jobs/{id}{tail}``, after ``base`` (an origin and path prefix without a trailing
    slash, or "" for a relative path)."""
    return f"{base}{API_PREFIX}/jobs/{job_id}{tail}"


def viewer_url(job_id: str, base: str = "") -> str:
    """``/viewer/{id}``, after ``base`` as for job_url."""
    return f"{base}{VIEWER_PREFIX}/{job_id}"
