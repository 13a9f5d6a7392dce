"""Delivery of a DICOM series to a PACS over STOW-RS: a real Orthanc, and real servers that are
down, slow, answer errors or show a certificate nobody trusts. The job record and the result
never change; a retry stores each instance exactly once."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from support.dicom_series import Series, write_series
from support.jobs import job_inputs
from support.orthanc import Orthanc, orthanc_running
from support.polling import wait_until
from support.ports import free_port
from support.receivers import Answer, Receiver, always, self_signed
from support.settings import settings_in

from service.delivery.dispatcher import DispatchContext, Dispatcher, deliver_once
from service.delivery.outbox import OutboxStore, new_delivery
from service.jobs.files import JobFiles, series_files
from service.jobs.job import JobState, NewJob, new_job_id
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings
from service.vocabulary.options import JobOptions

TENANT = "st-marys"
FAST_RETRIES: dict[str, Any] = {
    "delivery_retry_base_s": 0.05,
    "delivery_retry_max_s": 0.2,
    "delivery_max_attempts": 3,
    "dispatch_interval_s": 0.05,
}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    yield from orthanc_running(tmp_path_factory)


def make_settings(root: Path, url: str, **destination: Any) -> Settings:
    pacs = {"name": "pacs", "url": url, "timeout_s": 5, **destination}
    return settings_in(
        root,
        [],
        destinations=[pacs],
        tenants={TENANT: {"destinations": ["pacs"], "default_destination": "pacs"}},
        **FAST_RETRIES,
    )


def dispatch_context(settings: Settings) -> DispatchContext:
    files = JobFiles(settings.storage_dir, settings.results_dir)
    files.create()
    store = JobStore(settings.effective_database_url)
    return DispatchContext(settings, store, OutboxStore(store), files)


def succeeded_dicom_job(ctx: DispatchContext, count: int = 3, side_px: int = 64) -> Series:
    """A job recorded with a delivery to ``pacs``, run to success with a DICOM series as its
    result (written by pydicom, laid out as the DICOM writer lays it out)."""
    job_id = new_job_id()
    new = NewJob(
        id=job_id,
        tenant=TENANT,
        options=JobOptions(output_format="dicom"),
        inputs=job_inputs(),
        max_attempts=1,
    )
    ctx.store.create(new, [new_delivery(job_id, TENANT, "pacs")])
    lease = "a" * 32
    assert ctx.store.claim(job_id, lease, seconds_ago(60)).outcome == "claimed"
    folder = ctx.files.result_dir(job_id) / "series"
    series = write_series(folder, count, side_px, seed=count)
    report = {
        "dicom": {
            "series": "series",
            "study_instance_uid": series.study_uid,
            "series_instance_uid": series.series_uid,
            "instances": [p.name for p in series.files],
        }
    }
    assert ctx.store.succeed(job_id, lease, report, "series", "0" * 64, 1, None)
    return series


def job_id_of(series: Series) -> str:
    return series.folder.parent.name


def deliver_until_settled(ctx: DispatchContext, job_id: str, timeout_s: float = 30) -> Any:
    """Run delivery attempts (retries included) until the delivery is no longer pending."""

    def settled() -> Any:
        deliver_once(ctx)
        delivery = ctx.outbox.delivery(job_id)
        assert delivery is not None
        return delivery if delivery.state != "pending" else None

    return wait_until(settled, timeout_s, f"the delivery of {job_id} to settle", interval_s=0.02)


def assert_result_untouched(ctx: DispatchContext, series: Series) -> None:
    job = ctx.store.get(job_id_of(series))
    assert job is not None and job.state == JobState.SUCCEEDED
    assert [p.name for p in series.files] == [f"{n:04d}.dcm" for n in range(1, 4)]


def test_a_series_lands_in_orthanc_once_and_a_retry_adds_no_copy(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    orthanc.clear()
    ctx = dispatch_context(make_settings(tmp_path, orthanc.dicomweb_url))
    series = succeeded_dicom_job(ctx, count=6, side_px=512)
    job_id = job_id_of(series)

    started = time.monotonic()
    assert deliver_once(ctx) == "delivered"
    took_s = time.monotonic() - started
    delivery = ctx.outbox.delivery(job_id)
    assert delivery is not None
    assert (delivery.state, delivery.attempts, delivery.instances) == ("delivered", 1, 6)
    assert delivery.delivered_at is not None and delivery.last_error is None
    stored = orthanc.series_instance_uids(series.study_uid, series.series_uid)
    assert sorted(stored) == sorted(series.sop_uids)
    print(f"6 instances of 0.75 MiB delivered to Orthanc in {took_s:.2f} s")

    ctx.outbox.retry(job_id, TENANT, None)  # POST /v1/jobs/{id}/deliveries
    assert deliver_once(ctx) == "delivered"
    assert sorted(orthanc.instance_uids()) == sorted(series.sop_uids)  # one copy each


def test_instances_go_in_the_order_the_download_serves_them(tmp_path: Path) -> None:
    """Level 0 first and level 10 after level 9 (not after level 1, as names sort)."""
    archive = Receiver(always(200))
    try:
        ctx = dispatch_context(make_settings(tmp_path, f"{archive.url}/dicom-web"))
        series = succeeded_dicom_job(ctx, count=12, side_px=8)
        for number, path in enumerate(series.files, start=1):  # as the DICOM writer names them
            path.rename(series.folder / f"level-{number - 1}.dcm")
        assert deliver_once(ctx) == "delivered"
    finally:
        archive.close()
    sent = []
    for request in archive.requests:
        part = request.body.split(b"\r\n\r\n", 1)[1]
        sent.append(int(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).InstanceNumber))
    assert sent == list(range(1, 13))
    assert [p.name for p in series_files(series.folder)] == [f"level-{n}.dcm" for n in range(12)]


def test_nothing_due_while_the_job_runs_and_a_failed_job_is_never_delivered(
    tmp_path: Path,
) -> None:
    ctx = dispatch_context(make_settings(tmp_path, "http://127.0.0.1:9/dicom-web"))
    job_id = new_job_id()
    new = NewJob(
        id=job_id, tenant=TENANT, options=JobOptions(), inputs=job_inputs(), max_attempts=1
    )
    ctx.store.create(new, [new_delivery(job_id, TENANT, "pacs")])
    assert deliver_once(ctx) is None  # queued: nothing to send yet
    lease = "b" * 32
    ctx.store.claim(job_id, lease, seconds_ago(60))
    ctx.store.fail(job_id, lease, "corrupt_slide", "bad pixels")
    assert deliver_once(ctx) is None
    delivery = ctx.outbox.delivery(job_id)
    assert delivery is not None and delivery.state == "failed" and delivery.attempts == 0
    assert delivery.last_error == "the job did not succeed: nothing to deliver"


def test_a_destination_that_is_down_fails_after_the_retries_and_a_retry_delivers_later(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    orthanc.clear()
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    ctx = dispatch_context(make_settings(tmp_path, down))
    series = succeeded_dicom_job(ctx)
    job_id = job_id_of(series)

    started = time.monotonic()
    delivery = deliver_until_settled(ctx, job_id)
    assert delivery.state == "failed" and delivery.attempts == 3
    assert "cannot connect" in delivery.last_error and "refused" in delivery.last_error
    assert time.monotonic() - started >= 0.05 + 0.1 * 0.9  # backed off between attempts
    assert_result_untouched(ctx, series)

    # The archive is back (the operator fixed its URL): a retry by hand delivers one copy.
    back = dispatch_context(make_settings(tmp_path, orthanc.dicomweb_url))
    back.outbox.retry(job_id, TENANT, None)
    delivery = deliver_until_settled(back, job_id)
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert sorted(orthanc.instance_uids()) == sorted(series.sop_uids)


def test_a_slow_destination_times_out_and_is_retried(tmp_path: Path) -> None:
    slow = Receiver(always(200, delay_s=3.0))
    try:
        ctx = dispatch_context(make_settings(tmp_path, f"{slow.url}/dicom-web", timeout_s=0.3))
        series = succeeded_dicom_job(ctx)
        started = time.monotonic()
        delivery = deliver_until_settled(ctx, job_id_of(series))
        assert time.monotonic() - started < 5  # three attempts of 0.3 s, not three of 3 s
    finally:
        slow.close()
    assert delivery.state == "failed" and delivery.attempts == 3
    assert "no answer within 0.3 s" in delivery.last_error
    assert len(slow.requests) == 3
    assert_result_untouched(ctx, series)


@pytest.mark.parametrize(("status", "said"), [(503, "answered 503"), (400, "answered 400")])
def test_an_archive_that_answers_an_error_is_retried_then_reported(
    tmp_path: Path, status: int, said: str
) -> None:
    refusing = Receiver(lambda _n: Answer(status, body=b"busy", content_type="text/plain"))
    try:
        ctx = dispatch_context(make_settings(tmp_path, f"{refusing.url}/dicom-web"))
        series = succeeded_dicom_job(ctx)
        delivery = deliver_until_settled(ctx, job_id_of(series))
    finally:
        refusing.close()
    assert delivery.state == "failed" and delivery.attempts == 3
    assert said in delivery.last_error and "instance 1 of 3" in delivery.last_error
    request = refusing.requests[0]
    assert request.path == "/dicom-web/studies"
    assert request.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert_result_untouched(ctx, series)


def test_a_stow_answer_with_failed_instances_is_a_failure(tmp_path: Path) -> None:
    failed = json.dumps({"00081198": {"vr": "SQ", "Value": [{"00081197": {"Value": [272]}}]}})
    partial = Receiver(lambda _n: Answer(202, body=failed.encode()))
    try:
        ctx = dispatch_context(make_settings(tmp_path, f"{partial.url}/dicom-web"))
        series = succeeded_dicom_job(ctx)
        assert deliver_once(ctx) == "retry"
    finally:
        partial.close()
    delivery = ctx.outbox.delivery(job_id_of(series))
    assert delivery is not None and "refused 1 instance(s)" in (delivery.last_error or "")


def test_a_certificate_nobody_trusts_is_refused_and_its_ca_file_accepted(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    archive = Receiver(always(200), tls=(cert, key))
    try:
        untrusted = dispatch_context(make_settings(tmp_path / "a", f"{archive.url}/dicom-web"))
        series = succeeded_dicom_job(untrusted)
        delivery = deliver_until_settled(untrusted, job_id_of(series))
        assert delivery.state == "failed" and delivery.attempts == 3
        assert "TLS certificate not trusted" in delivery.last_error
        assert archive.requests == []  # nothing was sent over the untrusted connection

        trusted = dispatch_context(
            make_settings(tmp_path / "b", f"{archive.url}/dicom-web", ca_file=cert)
        )
        series = succeeded_dicom_job(trusted)
        assert deliver_until_settled(trusted, job_id_of(series)).state == "delivered"
        assert len(archive.requests) == 3
    finally:
        archive.close()


def test_basic_auth_from_a_secret_file(tmp_path: Path, tmp_path_factory: Any) -> None:
    secured = Orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={"dscm": "s3cret-pw"})
    secured.start()
    try:
        secret = tmp_path / "pacs-password"
        secret.write_text("wrong-pw\n")
        auth = {"auth": "basic", "username": "dscm", "secret_file": secret}
        ctx = dispatch_context(make_settings(tmp_path, secured.dicomweb_url, **auth))
        series = succeeded_dicom_job(ctx)
        assert deliver_once(ctx) == "retry"
        delivery = ctx.outbox.delivery(job_id_of(series))
        assert delivery is not None and "answered 401" in (delivery.last_error or "")
        assert "wrong-pw" not in (delivery.last_error or "")

        secret.write_text("s3cret-pw\n")  # rotated by writing the file: no restart
        delivery = deliver_until_settled(ctx, job_id_of(series))
        assert delivery.state == "delivered"
        assert sorted(secured.instance_uids()) == sorted(series.sop_uids)
    finally:
        secured.stop()


def test_orthanc_killed_mid_stow_then_restarted_ends_with_one_copy_of_each_instance(
    tmp_path: Path, tmp_path_factory: Any
) -> None:
    archive = Orthanc(tmp_path_factory.mktemp("orthanc-killed")).start()
    settings = make_settings(
        tmp_path,
        archive.dicomweb_url,
        timeout_s=5,
    ).model_copy(update={"delivery_max_attempts": 50, "delivery_retry_max_s": 0.5})
    ctx = dispatch_context(settings)
    series = succeeded_dicom_job(ctx, count=16, side_px=1024)  # 3 MiB each
    job_id = job_id_of(series)
    dispatcher = Dispatcher(settings, ctx.store, ctx.files)
    try:
        dispatcher.start()
        wait_until(lambda: len(archive.json("/instances")) >= 2, 60, "the first instances")
        archive.kill()  # mid-series: some instances stored, one cut off, the rest unsent
        time.sleep(0.5)
        delivery = ctx.outbox.delivery(job_id)
        assert delivery is not None and delivery.state == "pending"
        archive.start()  # same port, same storage
        wait_until(
            lambda: (d := ctx.outbox.delivery(job_id)) is not None and d.state != "pending",
            120,
            "the delivery to finish",
        )
    finally:
        dispatcher.close()
        archive.stop()
    archive.start()
    try:
        delivery = ctx.outbox.delivery(job_id)
        assert delivery is not None and delivery.state == "delivered", delivery
        assert delivery.attempts >= 2  # the attempt Orthanc's death cut off counted
        uids = archive.instance_uids()
        assert sorted(uids) == sorted(series.sop_uids)  # every instance, exactly once
        assert sorted(archive.series_instance_uids(series.study_uid, series.series_uid)) == sorted(
            series.sop_uids
        )
    finally:
        archive.stop()


def test_two_dispatchers_deliver_a_series_once(tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.clear()
    settings = make_settings(tmp_path, orthanc.dicomweb_url)
    ctx = dispatch_context(settings)
    series = [succeeded_dicom_job(ctx) for _ in range(3)]
    outcomes: list[str | None] = []
    others = [dispatch_context(settings) for _ in range(2)]

    def run(other: DispatchContext) -> None:
        for _ in range(5):
            outcomes.append(deliver_once(other))

    threads = [threading.Thread(target=run, args=(other,)) for other in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("delivered") == 3
    for one in series:
        delivery = ctx.outbox.delivery(job_id_of(one))
        assert delivery is not None and (delivery.state, delivery.attempts) == ("delivered", 1)


def c_store_settings(root: Path, port: int) -> Settings:
    """Destination ``pacs`` over C-STORE to AE ORTHANC on 127.0.0.1:``port``."""
    pacs = {"name": "pacs", "kind": "c-store", "ae_title": "ORTHANC", "host": "127.0.0.1"}
    return settings_in(
        root,
        [],
        destinations=[{**pacs, "port": port, "timeout_s": 5}],
        tenants={TENANT: {"destinations": ["pacs"]}},
        **FAST_RETRIES,
    )


def test_c_store_to_an_archive_that_is_down_fails_after_the_retries_then_delivers_once(
    tmp_path: Path, tmp_path_factory: Any
) -> None:
    port = free_port()
    archive = Orthanc(tmp_path_factory.mktemp("orthanc-dimse"), dicom=True, dicom_port=port)
    ctx = dispatch_context(c_store_settings(tmp_path, port))  # not started yet
    series = succeeded_dicom_job(ctx)
    job_id = job_id_of(series)
    delivery = deliver_until_settled(ctx, job_id)
    assert (delivery.state, delivery.attempts) == ("failed", 3)
    peer = f"ORTHANC at 127.0.0.1:{port}"
    assert delivery.last_error == f"cannot connect to {peer} (or it aborted the association)"
    assert_result_untouched(ctx, series)
    try:
        archive.start()
        ctx.outbox.retry(job_id, TENANT, None)
        delivery = deliver_until_settled(ctx, job_id)
        assert (delivery.state, delivery.instances) == ("delivered", 3)
        ctx.outbox.retry(job_id, TENANT, None)
        assert deliver_until_settled(ctx, job_id).state == "delivered"
        assert sorted(archive.instance_uids()) == sorted(series.sop_uids)  # one copy each
    finally:
        archive.stop()


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"host": "h", "port": 104}, "c-store needs ae_title, host and port"),
        ({"ae_title": "PACS", "host": "h"}, "c-store needs ae_title, host and port"),
        ({"ae_title": "PACS", "host": "h", "port": 104, "url": "http://h"}, "c-store needs"),
        ({"ae_title": "PACS", "host": "h", "port": 104, "auth": "bearer"}, "no auth or TLS"),
        ({"ae_title": "A\\B", "host": "h", "port": 104}, "ae_title"),
        ({"ae_title": "X" * 17, "host": "h", "port": 104}, "ae_title"),
    ],
)
def test_a_destination_missing_what_its_kind_needs_is_refused(
    tmp_path: Path, fields: dict[str, Any], said: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        settings_in(tmp_path, [], destinations=[{"name": "pacs", "kind": "c-store", **fields}])
    with pytest.raises(ValueError, match=re.escape("stow-rs needs url")):
        settings_in(tmp_path, [], destinations=[{"name": "pacs"}])


def test_an_integrations_file_with_secrets_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "pacs.token").write_text("tkn\n")
    (folder / "hook.key").write_text("k\n")
    config = {
        "destinations": [
            {"name": "vna", "url": "https://vna.example.org/dicomweb/", "auth": "bearer",
             "secret_file": "pacs.token"}
        ],
        "tenants": {TENANT: {"destinations": ["vna"], "webhook_url": "https://h.example.org/x",
                             "webhook_secret_files": ["hook.key"]}},
    }  # fmt: skip
    (folder / "integrations.json").write_text(json.dumps(config))
    settings = settings_in(tmp_path, [], integrations_file=str(folder / "integrations.json"))
    vna = settings.destination("vna")
    assert vna is not None and vna.secret_file == folder / "pacs.token"
    assert vna.url == "https://vna.example.org/dicomweb" and vna.verify_tls
    assert settings.integration(TENANT).webhook_secret_files == [folder / "hook.key"]
    assert settings.integration("another").destinations == []

    config["tenants"][TENANT]["destinations"] = ["nowhere"]  # type: ignore[index]
    (folder / "integrations.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown destination"):
        settings_in(tmp_path, [], integrations_file=str(folder / "integrations.json"))
    (folder / "pacs.token").unlink()
    with pytest.raises(ValueError, match="not a readable file"):
        settings_in(tmp_path, [], integrations_file=str(folder / "integrations.json"))
