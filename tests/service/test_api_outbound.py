"""Delivery and webhooks through the API, with the embedded worker: a DICOM job that ends in a
real Orthanc, the job's delivery in GET and the list, a retry by hand, refusals at submit, and
a hanging webhook receiver that holds up no stain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, assert_problem, make_app, stained
from support.api import submit, wait_for
from support.orthanc import Orthanc, orthanc_running
from support.polling import wait_until
from support.receivers import Receiver, always

from service.runtime.config import Settings

TENANT = "alice-hospital"  # the tenant of keys.alice
FAST: dict[str, Any] = {
    "dispatch_interval_s": 0.1,
    "delivery_retry_base_s": 0.1,
    "delivery_retry_max_s": 0.5,
    "webhook_retry_base_s": 0.1,
    "webhook_retry_max_s": 0.5,
    "webhook_timeout_s": 1.0,
}


def assert_series_in_archive(orthanc: Orthanc, settings: Settings, job: dict) -> list[str]:
    """The SOP Instance UIDs of the job's series files, after checking the archive holds
    exactly those instances."""
    dicom = job["report"]["dicom"]
    folder = settings.storage_dir / "results" / job["id"] / dicom["series"]
    files = sorted(folder.glob("*.dcm"))
    sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    assert job["delivery"]["instances"] == len(files) >= 1
    stored = orthanc.series_instance_uids(dicom["study_instance_uid"], dicom["series_instance_uid"])
    assert sorted(stored) == sorted(sops)
    return [str(uid) for uid in sops]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    yield from orthanc_running(tmp_path_factory, dicom=True)  # DICOMweb and a DICOM port


@pytest.fixture
def hook_key(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.key"
    path.write_text("whsec-test\n")
    return path


LOOPBACK_ALLOWED = {"webhook_allowed_networks": ["127.0.0.0/8"]}


def integration(
    make_settings: Callable[..., Settings],
    pacs_url: str,
    hook_key: Path,
    more: dict[str, Any] | None = None,
    **tenant: Any,
) -> Settings:
    """Destination ``orthanc`` at ``pacs_url``, allowed to alice's tenant, with a webhook key,
    four callback hosts, the ``tenant`` fields and the settings in ``more``."""
    return make_settings(
        destinations=[{"name": "orthanc", "url": pacs_url, "timeout_s": 30}],
        tenants={
            TENANT: {
                "destinations": ["orthanc"],
                "webhook_secret_files": [hook_key],
                "callback_hosts": ["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3"],
                **tenant,
            }
        },
        **{**FAST, **(more or {})},
    )


def delivered_job(client: TestClient, key: str, job_id: str, timeout_s: float = 60) -> Any:
    def settled() -> Any:
        job = client.get(f"/v1/jobs/{job_id}", headers=Keys.auth(key)).json()
        delivery = job["delivery"]
        return job if delivery and delivery["state"] != "pending" else None

    return wait_until(settled, timeout_s, f"the delivery of job {job_id}", interval_s=0.1)


def test_a_dicom_job_ends_in_orthanc_with_its_uids_and_a_retry_adds_no_copy(
    make_settings: Callable[..., Settings],
    keys: Keys,
    pair: Pair,
    orthanc: Orthanc,
    hook_key: Path,
) -> None:
    orthanc.clear()
    receiver = Receiver(always(200))
    settings = integration(
        make_settings,
        orthanc.dicomweb_url,
        hook_key,
        LOOPBACK_ALLOWED,
        webhook_url=f"{receiver.url}/events",
    )
    try:
        with TestClient(make_app(settings), raise_server_exceptions=False) as client:
            job = stained(
                client, keys.alice, pair, {"output_format": "dicom", "deliver_to": "orthanc"}
            )
            assert job["options"]["deliver_to"] == "orthanc"
            job = delivered_job(client, keys.alice, job["id"])
            delivery = job["delivery"]
            assert delivery["state"] == "delivered", delivery
            assert delivery["destination"] == "orthanc" and delivery["attempts"] == 1
            assert job["state"] == "succeeded"

            sops = assert_series_in_archive(orthanc, settings, job)
            series = orthanc.json("/series")
            assert len(series) == 1
            assert len(orthanc.json(f"/series/{series[0]}")["Instances"]) == len(sops)

            listed = client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"]
            assert listed[0]["delivery"]["state"] == "delivered"

            again = client.post(f"/v1/jobs/{job['id']}/deliveries", headers=Keys.auth(keys.alice))
            assert again.status_code == 202, again.text
            assert again.json()["state"] == "pending" and again.json()["attempts"] == 0
            job = delivered_job(client, keys.alice, job["id"])
            assert job["delivery"]["state"] == "delivered"
            assert sorted(orthanc.instance_uids()) == sorted(sops)  # still one copy each

            metrics = client.get("/metrics").text
            assert 'dscm_deliveries{state="delivered"} 1.0' in metrics
            assert 'dscm_delivery_attempts_total{outcome="delivered"}' in metrics
            wait_until(lambda: len(receiver.requests) >= 3, 20, "three events")
    finally:
        receiver.close()
    kinds = sorted(json.loads(r.body)["type"] for r in receiver.requests)
    assert kinds == ["job.delivered", "job.delivered", "job.succeeded"]


def test_a_dicom_job_delivered_by_c_store_lands_once_with_its_uids(
    make_settings: Callable[..., Settings],
    keys: Keys,
    pair: Pair,
    orthanc: Orthanc,
    hook_key: Path,
) -> None:
    """The same job to the same archive over DIMSE: its JPEG-coded instances sent as stored."""
    orthanc.clear()
    assert orthanc.dicom_port is not None
    dimse = {
        "name": "orthanc-dimse",
        "kind": "c-store",
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "timeout_s": 30,
    }
    settings = make_settings(
        destinations=[dimse],
        tenants={TENANT: {"destinations": ["orthanc-dimse"], "webhook_secret_files": [hook_key]}},
        **FAST,
    )
    with TestClient(make_app(settings), raise_server_exceptions=False) as client:
        options = {"output_format": "dicom", "deliver_to": "orthanc-dimse"}
        job = delivered_job(client, keys.alice, stained(client, keys.alice, pair, options)["id"])
        delivery = job["delivery"]
        assert (delivery["state"], delivery["attempts"]) == ("delivered", 1), delivery
        sops = assert_series_in_archive(orthanc, settings, job)
        again = client.post(f"/v1/jobs/{job['id']}/deliveries", headers=Keys.auth(keys.alice))
        assert again.status_code == 202, again.text
        assert delivered_job(client, keys.alice, job["id"])["delivery"]["state"] == "delivered"
        assert sorted(orthanc.instance_uids()) == sorted(sops)  # still one copy each
    # Stored as sent: the archive's copy has the file's transfer syntax (JPEG baseline).
    instance = orthanc.json("/instances")[0]
    syntax = orthanc.get(f"/instances/{instance}/metadata/TransferSyntax").text
    assert syntax == pydicom.uid.JPEGBaseline8Bit  # the writer's, as stored


def test_a_dicom_job_without_deliver_to_goes_to_the_tenants_default(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair, hook_key: Path
) -> None:
    settings = integration(
        make_settings, "http://127.0.0.1:9/dicom-web", hook_key, default_destination="orthanc"
    )
    with TestClient(make_app(settings), raise_server_exceptions=False) as client:
        tiff = stained(client, keys.alice, pair)
        assert tiff["delivery"] is None  # a TIFF job is never delivered
        dicom = submit(client, keys.alice, pair, {"output_format": "dicom"})
        assert dicom.status_code == 202, dicom.text
        assert dicom.json()["delivery"]["destination"] == "orthanc"
        assert dicom.json()["delivery"]["state"] == "pending"
        refused = client.post(f"/v1/jobs/{tiff['id']}/deliveries", headers=Keys.auth(keys.alice))
        assert_problem(refused, 409, "not_dicom")


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"output_format": "dicom", "deliver_to": "x"}, "destination_not_allowed", "deliver_to"),
        ({"deliver_to": "orthanc"}, "invalid_option", "deliver_to"),
        ({"callback_url": "https://hooks.example.org/x"}, "callback_not_allowed", "callback_url"),
        ({"callback_url": "ftp://127.0.0.1/x"}, "invalid_option", "callback_url"),
        ({"callback_url": "http://127.0.0.1:8000/x"}, "callback_url_refused", "callback_url"),
        ({"callback_url": "http://169.254.169.254/latest"}, "callback_url_refused", "callback_url"),
        ({"callback_url": "http://10.1.2.3/x"}, "callback_url_refused", "callback_url"),
        ({"callback_url": "http://localhost:8000/x"}, "callback_url_refused", "callback_url"),
    ],
)  # fmt: skip
def test_refused_at_submit_naming_the_field(
    make_settings: Callable[..., Settings],
    keys: Keys,
    pair: Pair,
    hook_key: Path,
    data: dict[str, str],
    code: str,
    field: str,
) -> None:
    settings = integration(make_settings, "http://127.0.0.1:9/dicom-web", hook_key)
    with TestClient(make_app(settings), raise_server_exceptions=False) as client:
        body = assert_problem(submit(client, keys.alice, pair, data), 422, code)
        assert body["detail"].startswith(f"{field}: ")
        assert body["errors"][0]["loc"] == [field]
        other_tenant = submit(
            client, keys.bob, pair, {"output_format": "dicom", "deliver_to": "orthanc"}
        )
        assert_problem(other_tenant, 422, "destination_not_allowed")  # not bob's destination
        assert client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"] == []


def test_an_allowed_network_lets_a_callback_through(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair, hook_key: Path
) -> None:
    receiver = Receiver(always(200))
    settings = integration(
        make_settings, "http://127.0.0.1:9/dicom-web", hook_key, LOOPBACK_ALLOWED
    )
    try:
        with TestClient(make_app(settings), raise_server_exceptions=False) as client:
            job = stained(client, keys.alice, pair, {"callback_url": f"{receiver.url}/cb?job=1"})
            wait_until(lambda: receiver.requests, 20, "the callback")
    finally:
        receiver.close()
    event = json.loads(receiver.requests[0].body)
    assert receiver.requests[0].path == "/cb?job=1"
    assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job["id"]


def test_a_hanging_webhook_receiver_holds_up_no_stain(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair, hook_key: Path
) -> None:
    hanging = Receiver(always(200, delay_s=30))
    more = {**LOOPBACK_ALLOWED, "webhook_timeout_s": 3.0}
    settings = integration(
        make_settings, "http://127.0.0.1:9/dicom-web", hook_key, more, webhook_url=hanging.url
    )
    try:
        with TestClient(make_app(settings), raise_server_exceptions=False) as client:
            first = stained(client, keys.alice, pair)
            wait_until(lambda: hanging.requests, 10, "the first event to be sent")
            # The dispatcher now waits on the hanging receiver; stains go on meanwhile.
            started = time.monotonic()
            jobs = [submit(client, keys.alice, pair).json()["id"] for _ in range(2)]
            for job_id in jobs:
                assert wait_for(client, keys.alice, job_id, timeout_s=30)["state"] == "succeeded"
            took_s = time.monotonic() - started
            assert len(hanging.requests) <= 2  # still on the first event or its retry
            hanging.behaviour = always(200)  # the receiver recovers: every event arrives
            wait_until(
                lambda: (
                    {json.loads(r.body)["data"]["job"]["id"] for r in hanging.requests}
                    >= {first["id"], *jobs}
                ),
                30,
                "every job's event",
            )
    finally:
        hanging.close()
    print(f"two stains took {took_s:.1f} s while the receiver hung")
