"""Delivery and webhooks across real process deaths: redis-server, `dscm serve` (uvicorn) and
`dscm worker` (Celery) as plain processes, a real Orthanc that is down at first and a real
webhook receiver. The dispatcher runs in the worker only; killing it (SIGKILL) and restarting
the API loses nothing: a new worker delivers the series exactly once and the receiver gets
job.succeeded and job.delivered."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from processes import Cluster, get_job, poll, post_pair
from service_helpers import Keys, Pair
from support.orthanc import Orthanc, require_orthanc
from support.pairs import write_gray_tiff
from support.polling import wait_until
from support.receivers import Receiver, always

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

TENANT = "alice-hospital"  # the tenant of keys.alice
RETRY_EVERY_S = {
    "DSCM_DISPATCH_INTERVAL_S": "0.2",
    "DSCM_DELIVERY_RETRY_BASE_S": "0.3",
    "DSCM_DELIVERY_RETRY_MAX_S": "1",
    "DSCM_DELIVERY_MAX_ATTEMPTS": "100",
    "DSCM_WEBHOOK_RETRY_BASE_S": "0.3",
    "DSCM_WEBHOOK_RETRY_MAX_S": "1",
}


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Configured on its port, not started: the test starts it."""
    require_orthanc()
    archive = Orthanc(tmp_path / "orthanc")
    try:
        yield archive
    finally:
        archive.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(always(200))
    try:
        yield server
    finally:
        server.close()


def integrate(cluster: Cluster, orthanc: Orthanc, receiver: Receiver) -> None:
    """alice's tenant delivers to the Orthanc and sends its events to the receiver."""
    key_file = cluster.root / "webhook.key"
    key_file.write_text("whsec-processes\n")
    tenant = {
        "destinations": ["orthanc"],
        "webhook_url": f"{receiver.url}/events",
        "webhook_secret_files": [str(key_file)],
    }
    destination = {"name": "orthanc", "url": orthanc.dicomweb_url, "timeout_s": 10}
    cluster.extra_env.update(
        DSCM_DESTINATIONS=json.dumps([destination]),
        DSCM_TENANTS=json.dumps({TENANT: tenant}),
        DSCM_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8"]',
        **RETRY_EVERY_S,
    )


def delivery(cluster: Cluster, key: str, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = get_job(cluster, key, job_id)["delivery"]
    return found


def events_by_id(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """The events received, once each (at least once: a repeat carries the same id)."""
    return {r.headers["Dscm-Event-Id"]: json.loads(r.body) for r in receiver.requests}


def test_a_delivery_survives_a_killed_worker_and_a_restarted_api(
    cluster: Cluster, keys: Keys, orthanc: Orthanc, receiver: Receiver, tmp_path: Path
) -> None:
    started = time.monotonic()
    # 640 px: a pyramid of several levels, so a series of several instances
    pair = Pair(
        write_gray_tiff(tmp_path / "rcm.tif", 640, 640, 1),
        write_gray_tiff(tmp_path / "fcm.tif", 640, 640, 2),
    )
    integrate(cluster, orthanc, receiver)
    cluster.start_redis()
    api = cluster.start_api()
    first = cluster.start_worker("w1")
    job = post_pair(cluster, keys.alice, pair.files(), output_format="dicom", deliver_to="orthanc")
    done = poll(cluster, keys.alice, job["id"], 60)
    assert done["state"] == "succeeded", done

    # The archive is down: the worker's dispatcher retries.
    wait_until(
        lambda: delivery(cluster, keys.alice, job["id"])["attempts"] >= 2,
        30,
        "two failed attempts",
        watch=[first],
    )
    first.kill()  # SIGKILL, between or during attempts: no shutdown handler runs
    assert not first.alive
    pending = delivery(cluster, keys.alice, job["id"])
    assert pending["state"] == "pending" and "cannot connect" in pending["last_error"], pending
    time.sleep(1.5)  # several retry periods: nobody else delivers (the API has no dispatcher)
    assert delivery(cluster, keys.alice, job["id"])["attempts"] == pending["attempts"]

    api.stop()
    cluster.start_api()
    orthanc.start()  # before the worker, so its first attempt is the one that delivers
    second = cluster.start_worker("w2")

    def delivered() -> dict[str, Any] | None:
        found = delivery(cluster, keys.alice, job["id"])
        return found if found["state"] != "pending" else None

    # Within a lease (the destination's timeout + 60 s) even if w1 died holding one.
    final = wait_until(delivered, 90, "the delivery", interval_s=0.2, watch=[second])
    assert final["state"] == "delivered", final
    assert final["attempts"] == pending["attempts"] + 1 and final["last_error"] is None

    # Exactly one copy of each instance of the job's series, with the job's own UIDs.
    dicom = done["report"]["dicom"]
    folder = cluster.root / "storage" / "results" / job["id"] / dicom["series"]
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.iterdir()]
    assert final["instances"] == len(sops) >= 2
    assert sorted(orthanc.instance_uids()) == sorted(sops)
    stored = orthanc.series_instance_uids(dicom["study_instance_uid"], dicom["series_instance_uid"])
    assert sorted(stored) == sorted(sops)
    again = get_job(cluster, keys.alice, job["id"])
    assert again["state"] == "succeeded" and again["result"] == done["result"]

    # The receiver: job.succeeded (sent by w1) and job.delivered (by w2), each once by id.
    wait_until(
        lambda: (
            {e["type"] for e in events_by_id(receiver).values()}
            >= {"job.succeeded", "job.delivered"}
        ),
        30,
        "job.succeeded and job.delivered",
        watch=[second],
    )
    kinds = sorted(e["type"] for e in events_by_id(receiver).values())
    assert kinds == ["job.delivered", "job.succeeded"]
    event = next(e for e in events_by_id(receiver).values() if e["type"] == "job.delivered")
    assert event["data"]["job"]["id"] == job["id"]
    assert event["data"]["delivery"]["destination"] == "orthanc"
    assert event["data"]["delivery"]["series_instance_uid"] == dicom["series_instance_uid"]
    took_s = time.monotonic() - started
    print(f"{len(sops)} instances delivered, worker killed, API restarted: {took_s:.1f} s")
