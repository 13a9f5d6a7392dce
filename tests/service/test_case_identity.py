"""Case identity on the service: stored, returned, filterable, in the result, never logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import tifffile
from fastapi.testclient import TestClient
from processes import Cluster
from service_helpers import Keys, Pair, assert_problem
from support.api import submit, wait_for
from support.polling import wait_until

# Distinctive enough that any trace of them in a log is this test's case.
LABEL = "Zebra-Quokka 7731, left cheek"
EXTERNAL_ID = "ZQK-7731/XQ"
CASE = {"label": LABEL, "external_id": EXTERNAL_ID}


def test_case_is_stored_returned_and_written_into_the_result(
    client: TestClient, keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    accepted = submit(client, keys.alice, pair, data=CASE)
    assert accepted.status_code == 202, accepted.text
    assert (accepted.json()["label"], accepted.json()["external_id"]) == (LABEL, EXTERNAL_ID)
    done = wait_for(client, keys.alice, accepted.json()["id"])
    assert done["state"] == "succeeded", done
    assert (done["label"], done["external_id"]) == (LABEL, EXTERNAL_ID)
    assert "label" not in done["options"] and "external_id" not in done["options"]

    result = client.get(done["links"]["result"], headers=Keys.auth(keys.alice))
    path = tmp_path / "result.tiff"
    path.write_bytes(result.content)
    with tifffile.TiffFile(path) as tiff:
        description = tiff.pages[0].tags["ImageDescription"].value
    assert f"label: {LABEL}" in description and f"external_id: {EXTERNAL_ID}" in description

    plain = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    assert plain["label"] is None and plain["external_id"] is None


def test_jobs_are_found_by_external_id(client: TestClient, keys: Keys, pair: Pair) -> None:
    def ids(query: str, key: str = keys.alice) -> tuple[list[str], str | None]:
        answer = client.get(f"/v1/jobs?{query}", headers=Keys.auth(key))
        assert answer.status_code == 200, answer.text
        return [job["id"] for job in answer.json()["items"]], answer.json()["next"]

    older = submit(client, keys.alice, pair, data={"external_id": "HP 2024/0193"}).json()["id"]
    submit(client, keys.alice, pair, data={"external_id": "HP 2024/0194"})
    submit(client, keys.alice, pair)
    newer = submit(client, keys.alice, pair, data={"external_id": "HP 2024/0193"}).json()["id"]
    submit(client, keys.bob, pair, data={"external_id": "HP 2024/0193"})  # another tenant's

    query = "external_id=HP%202024%2F0193"
    assert ids(query) == ([newer, older], None)
    first_page, next_url = ids(f"{query}&limit=1")
    assert first_page == [newer] and next_url is not None
    second = client.get(next_url, headers=Keys.auth(keys.alice)).json()
    assert [job["id"] for job in second["items"]] == [older] and second["next"] is None
    assert len(ids(query, keys.admin)[0]) == 3  # operators see every tenant's
    assert ids("external_id=HP%202024%2F0999") == ([], None)
    assert ids(f"{query}&state=cancelled") == ([], None)
    bad = client.get("/v1/jobs?external_id=HP%23QX9", headers=Keys.auth(keys.alice))
    assert_problem(bad, 422, "invalid_request")
    assert "QX9" not in bad.text


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"label": "QX9" * 67}, "label"),
        ({"label": "QX9 first line\nsecond line"}, "label"),
        ({"label": "QX9 \u202e reversed"}, "label"),
        ({"label": ["QX9 one", "QX9 two"]}, "label"),
        ({"external_id": "QX9#1"}, "external_id"),
        ({"external_id": "QX9" * 22}, "external_id"),
        ({"external_id": "QX9 Ü"}, "external_id"),
    ],
)
def test_bad_case_fields_are_refused_without_repeating_them(
    client: TestClient, keys: Keys, pair: Pair, data: dict[str, object], field: str
) -> None:
    answer = client.post(
        "/v1/jobs",
        files=pair.files(),
        data={"stages": "gareau", **data},
        headers=Keys.auth(keys.alice),
    )
    body = assert_problem(answer, 422, "invalid_option")
    assert body["errors"][0]["loc"] == [field]
    assert "QX9" not in answer.text
    listed = client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"]
    assert listed == []


def test_blank_case_fields_mean_none(client: TestClient, keys: Keys, pair: Pair) -> None:
    answer = submit(client, keys.alice, pair, data={"label": "  ", "external_id": ""})
    assert answer.status_code == 202, answer.text
    assert answer.json()["label"] is None and answer.json()["external_id"] is None


def test_idempotency_key_covers_the_case(client: TestClient, keys: Keys, pair: Pair) -> None:
    headers = {"Idempotency-Key": "case-2024-0193"}
    first = submit(client, keys.alice, pair, data=CASE, headers=headers)
    again = submit(client, keys.alice, pair, data=CASE, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = submit(client, keys.alice, pair, data={**CASE, "label": "another"}, headers=headers)
    assert_problem(other, 422, "idempotency_key_reused")


# ---- never logged: real `dscm serve` and `dscm worker` processes ----


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_case_identity_never_reaches_the_logs(cluster: Cluster, keys: Keys, pair: Pair) -> None:
    cluster.extra_env.update(DSCM_LOG_LEVEL="DEBUG", DSCM_LOG_FORMAT="json")
    cluster.start_redis()
    api = cluster.start_api()
    worker = cluster.start_worker()
    auth = Keys.auth(keys.alice)

    def post(**data: str) -> httpx.Response:
        return httpx.post(
            f"{cluster.url}/v1/jobs",
            files=pair.files(),
            data={"stages": "gareau", "layers": "fcm", **data},
            headers={**auth, "Idempotency-Key": "k1"},
            timeout=30,
        )

    accepted = post(**CASE)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert post(**CASE).json()["id"] == job_id  # a replay
    assert post(label=LABEL, external_id=f"{EXTERNAL_ID}#").status_code == 422

    def finished() -> bool:
        job = httpx.get(f"{cluster.url}/v1/jobs/{job_id}", headers=auth, timeout=10).json()
        return bool(job["state"] == "succeeded")

    wait_until(finished, 60, "the job", interval_s=0.2)
    found = httpx.get(f"{cluster.url}/v1/jobs", params={"external_id": EXTERNAL_ID}, headers=auth)
    assert [job["id"] for job in found.json()["items"]] == [job_id]
    for spelling in ("external%5Fid", "%65xternal_id", "external%5fi%64"):  # the same filter
        url = f"{cluster.url}/v1/jobs?{spelling}={EXTERNAL_ID}"
        assert [job["id"] for job in httpx.get(url, headers=auth).json()["items"]] == [job_id]
    assert httpx.get(f"{cluster.url}/viewer/{job_id}", timeout=10).status_code == 200
    cluster.stop_all()  # flushes every log

    api_log, worker_log = api.output(), worker.output()
    # The logs were written and cover this job, so a leak would show.
    assert job_id in api_log and job_id in worker_log
    assert "external_id=[redacted]" in api_log  # the filtered list was logged, redacted
    for log in (api_log, worker_log):
        for trace in ("Quokka", "Zebra", "ZQK", "7731"):
            assert trace.lower() not in log.lower(), trace
