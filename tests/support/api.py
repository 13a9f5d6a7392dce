"""The job API as every test calls it: submit a pair, read a job, wait for a state.

One definition for the in-process app (a TestClient is an httpx.Client), the integration
cluster, the browser tests' server and the compose topology: each passes its own client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from support.polling import wait_until
from support.processes import Proc

FINISHED = ("succeeded", "failed", "cancelled")

# field -> (file name, content: bytes or an open file, media type)
Files = Mapping[str, tuple[str, Any, str]]


class HasFiles(Protocol):
    """A pair that knows its multipart files (service_helpers.Pair)."""

    def files(self) -> Files:
        """The rcm and fcm parts."""
        ...


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header of an API key; none for an anonymous call."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def submit(
    client: httpx.Client,
    key: str | None,
    pair: Files | HasFiles,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST /v1/jobs with the pair as multipart, Gareau only unless ``data`` names the stages;
    the response as it came (the caller checks 202 or the refusal)."""
    files = pair if isinstance(pair, Mapping) else pair.files()
    return client.post(
        "/v1/jobs",
        files=dict(files),
        data={"stages": "gareau", **(data or {})},
        headers={**bearer(key), **(headers or {})},
    )


def accepted(response: httpx.Response) -> dict[str, Any]:
    """The job of a submit that must have been accepted (202)."""
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def read_job(client: httpx.Client, key: str | None, job_id: str) -> dict[str, Any]:
    """GET /v1/jobs/{job_id}, which must answer 200."""
    response = client.get(f"/v1/jobs/{job_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(
    client: httpx.Client,
    key: str | None,
    job_id: str,
    states: tuple[str, ...] = FINISHED,
    timeout_s: float = 30,
    watch: Sequence[Proc] = (),
) -> dict[str, Any]:
    """The job once it is in one of ``states``; AssertionError with its last state after
    ``timeout_s``, or as soon as a process in ``watch`` exits."""
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(read_job(client, key, job_id))
        return found["state"] in states

    try:
        wait_until(reached, timeout_s, f"job {job_id} to reach {states}", watch=watch)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast seen: {found}") from None
    return found
