"""Signed completion webhooks, sent to real HTTP receivers: the documented check accepts them
and catches forged and replayed ones; receivers that fail, hang or are unreachable are
retried with the same event; nothing is sent to an internal address."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support.jobs import job_inputs
from support.polling import wait_until
from support.ports import free_port
from support.receivers import Answer, Receiver, always
from support.settings import settings_in

from service.delivery.dispatcher import DispatchContext, deliver_once, webhooks_once
from service.delivery.outbox import OutboxStore, new_delivery, new_hook
from service.delivery.webhooks import signature
from service.jobs.files import JobFiles
from service.jobs.job import NewJob, new_job_id
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings
from service.vocabulary.options import JobOptions

TENANT = "st-marys"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
FAST: dict[str, Any] = {
    "webhook_retry_base_s": 0.05,
    "webhook_retry_max_s": 0.2,
    "webhook_max_attempts": 3,
    "webhook_timeout_s": 0.5,
}


def documented_check() -> Any:
    """verify_dscm_signature exactly as docs/api.md shows it to receivers."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    snippet = next(b for b in blocks if "def verify_dscm_signature" in b)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, str(DOCS), "exec"), namespace)
    return namespace["verify_dscm_signature"]


def secret_file(folder: Path, name: str, secret: str) -> Path:
    path = folder / name
    path.write_text(secret + "\n")
    return path


def hook_settings(root: Path, webhook_url: str, secrets: list[Path], **more: Any) -> Settings:
    tenant = {"webhook_url": webhook_url, "webhook_secret_files": secrets}
    return settings_in(
        root,
        [],
        tenants={TENANT: tenant},
        **{**FAST, "webhook_allowed_networks": ["127.0.0.0/8"], **more},
    )


def context(settings: Settings) -> DispatchContext:
    files = JobFiles(settings.storage_dir, settings.results_dir)
    files.create()
    store = JobStore(settings.effective_database_url)
    return DispatchContext(settings, store, OutboxStore(store), files)


def finished_job(ctx: DispatchContext, succeed: bool = True, related: Any = ()) -> str:
    job_id = new_job_id()
    new = NewJob(
        id=job_id, tenant=TENANT, options=JobOptions(), inputs=job_inputs(), max_attempts=1
    )
    ctx.store.create(new, [new_hook(job_id, TENANT, None), *related])
    lease = "c" * 32
    ctx.store.claim(job_id, lease, seconds_ago(60))
    if succeed:
        assert ctx.store.succeed(job_id, lease, {}, "r.tiff", "0" * 64, 1, None)
    else:
        assert ctx.store.fail(job_id, lease, "corrupt_slide", "the RCM does not decode")
    return job_id


def send_until_settled(ctx: DispatchContext, job_id: str, timeout_s: float = 20) -> Any:
    """Run webhook sends (retries included) until every event of the job is sent or failed."""

    def settled() -> Any:
        webhooks_once(ctx)
        events = ctx.outbox.events(job_id)
        return events if events and all(e.state != "pending" for e in events) else None

    return wait_until(settled, timeout_s, f"the events of {job_id} to settle", interval_s=0.02)


def test_the_documented_check_accepts_a_real_event_and_catches_forgery_and_replay(
    tmp_path: Path,
) -> None:
    verify = documented_check()
    receiver = Receiver(always(204))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "whsec-one")]
        ctx = context(hook_settings(tmp_path, f"{receiver.url}/hooks?src=dscm", secrets))
        job_id = finished_job(ctx)
        assert webhooks_once(ctx) == "sent"
    finally:
        receiver.close()
    (request,) = receiver.requests
    assert request.path == "/hooks?src=dscm"
    header = request.headers["Dscm-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify(request.body, header, "whsec-one")
    event = json.loads(request.body)
    assert event["type"] == request.headers["Dscm-Event-Type"] == "job.succeeded"
    assert event["id"] == request.headers["Dscm-Event-Id"]
    assert event["tenant"] == TENANT and event["data"]["job"]["id"] == job_id
    assert event["data"]["job"]["state"] == "succeeded"

    forged_body = request.body.replace(b'"succeeded"', b'"failed"')
    assert not verify(forged_body, header, "whsec-one")  # body changed
    assert not verify(request.body, header, "someone-elses-secret")  # wrong key
    old = int(time.time()) - 3600
    replayed = signature(request.body, ["whsec-one"], old)  # a genuine but old signature
    assert not verify(request.body, replayed, "whsec-one")
    restamped = re.sub(r"t=\d+", f"t={int(time.time())}", replayed)  # new t, old mac
    assert not verify(request.body, restamped, "whsec-one")
    assert not verify(request.body, "v1=" + "0" * 64, "whsec-one")
    assert not verify(request.body, "garbage", "whsec-one")
    stored = ctx.outbox.events(job_id)
    assert [(e.state, e.attempts, e.last_status) for e in stored] == [("sent", 1, 204)]


def test_a_failed_job_sends_job_failed_with_its_error(tmp_path: Path) -> None:
    receiver = Receiver(always(200))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        ctx = context(hook_settings(tmp_path, receiver.url, secrets))
        finished_job(ctx, succeed=False)
        assert webhooks_once(ctx) == "sent"
        assert webhooks_once(ctx) is None  # written once, sent once
    finally:
        receiver.close()
    event = json.loads(receiver.requests[0].body)
    assert event["type"] == "job.failed"
    assert event["data"]["job"]["error"]["code"] == "corrupt_slide"


@pytest.mark.parametrize(
    ("public_url", "base"),
    [
        (None, ""),  # unset: relative to the API's address, as in GET /v1/jobs/{id}
        ("https://dscm.example.org", "https://dscm.example.org"),
        ("https://example.org/pathology/dscm/", "https://example.org/pathology/dscm"),
    ],
)
def test_event_links_are_absolute_under_the_public_url(
    tmp_path: Path, public_url: str | None, base: str
) -> None:
    receiver = Receiver(always(200))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        ctx = context(hook_settings(tmp_path, receiver.url, secrets, public_url=public_url))
        job_id = finished_job(ctx)
        assert webhooks_once(ctx) == "sent"
    finally:
        receiver.close()
    links = json.loads(receiver.requests[0].body)["data"]["job"]["links"]
    own = f"{base}/v1/jobs/{job_id}"
    assert links == {"self": own, "result": f"{own}/result"}


@pytest.mark.parametrize(
    "bad",
    [
        "dscm.example.org",
        "ftp://dscm.example.org",
        "https://",
        "https://user:password@dscm.example.org",
        "https://dscm.example.org/?tenant=x",
        "https://dscm.example.org/#top",
    ],
)
def test_a_public_url_that_is_not_an_http_origin_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("DSCM_PUBLIC_URL", bad)
    with pytest.raises(ValidationError) as caught:
        Settings()
    (error,) = caught.value.errors()
    assert error["loc"] == ("public_url",)


def test_the_public_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSCM_PUBLIC_URL", "https://dscm.example.org/")
    assert Settings().public_url == "https://dscm.example.org"
    monkeypatch.setenv("DSCM_PUBLIC_URL", "")  # compose passes an unset variable as ""
    assert Settings().public_url is None


def test_during_a_rotation_both_secrets_sign(tmp_path: Path) -> None:
    verify = documented_check()
    receiver = Receiver(always(200))
    try:
        secrets = [secret_file(tmp_path, "new.key", "new-key"), secret_file(tmp_path, "old", "old")]
        ctx = context(hook_settings(tmp_path, receiver.url, secrets))
        finished_job(ctx)
        assert webhooks_once(ctx) == "sent"
    finally:
        receiver.close()
    request = receiver.requests[0]
    header = request.headers["Dscm-Signature"]
    assert header.count("v1=") == 2
    assert verify(request.body, header, "new-key") and verify(request.body, header, "old")


def test_a_receiver_answering_500_gets_the_same_event_again_until_it_takes_it(
    tmp_path: Path,
) -> None:
    receiver = Receiver(lambda n: Answer(500 if n < 3 else 200))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        ctx = context(hook_settings(tmp_path, receiver.url, secrets))
        job_id = finished_job(ctx)
        (event,) = send_until_settled(ctx, job_id)
    finally:
        receiver.close()
    assert (event.state, event.attempts, event.last_status) == ("sent", 3, 200)
    bodies = {r.body for r in receiver.requests}
    ids = {r.headers["Dscm-Event-Id"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(bodies) == 1 and ids == {event.id}
    gaps = [b.at_s - a.at_s for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9  # backed off, doubling


def test_a_hanging_receiver_times_out_and_ends_failed(tmp_path: Path) -> None:
    receiver = Receiver(always(200, delay_s=10))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        ctx = context(hook_settings(tmp_path, receiver.url, secrets))
        job_id = finished_job(ctx)
        started = time.monotonic()
        (event,) = send_until_settled(ctx, job_id)
        took_s = time.monotonic() - started
    finally:
        receiver.close()
    assert took_s < 4  # three sends of 0.5 s and two short waits, not three of 10 s
    assert (event.state, event.attempts) == ("failed", 3)
    assert event.last_error == "no answer within 0.5 s"


def test_an_unreachable_receiver_is_retried(tmp_path: Path) -> None:
    secrets = [secret_file(tmp_path, "hook.key", "k")]
    ctx = context(hook_settings(tmp_path, f"http://127.0.0.1:{free_port()}/x", secrets))
    job_id = finished_job(ctx)
    (event,) = send_until_settled(ctx, job_id)
    assert (event.state, event.attempts) == ("failed", 3)
    assert "cannot reach the receiver" in event.last_error


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_an_internal_address_is_refused_when_sending_too(tmp_path: Path, host: str) -> None:
    receiver = Receiver(always(200))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        url = f"http://{host}:{receiver.port}/hooks"
        ctx = context(hook_settings(tmp_path, url, secrets, webhook_allowed_networks=[]))
        job_id = finished_job(ctx)
        (event,) = send_until_settled(ctx, job_id)
    finally:
        receiver.close()
    assert receiver.requests == []  # never connected
    assert event.state == "failed" and "loopback, link-local or private" in event.last_error


def test_a_delivery_sends_job_delivered(tmp_path: Path, database_url: str) -> None:
    """On SQLite and PostgreSQL: the outbox's leases, marks and events."""
    receiver, archive = Receiver(always(200)), Receiver(always(200))
    try:
        secrets = [secret_file(tmp_path, "hook.key", "k")]
        url = f"{receiver.url}/hooks"
        settings = hook_settings(tmp_path, url, secrets, database_url=database_url)
        settings = settings.model_copy(
            update={
                "destinations": settings.model_validate(
                    {"destinations": [{"name": "pacs", "url": f"{archive.url}/dicom-web"}]}
                ).destinations
            }
        )
        ctx = context(settings)
        job_id = new_job_id()
        new = NewJob(
            id=job_id, tenant=TENANT, options=JobOptions(), inputs=job_inputs(), max_attempts=1
        )
        ctx.store.create(
            new, [new_hook(job_id, TENANT, None), new_delivery(job_id, TENANT, "pacs")]
        )
        ctx.store.claim(job_id, "d" * 32, seconds_ago(60))
        folder = ctx.files.result_dir(job_id) / "series"
        folder.mkdir(parents=True)
        (folder / "level-0.dcm").write_bytes(b"DICM")
        report = {"dicom": {"series": "series", "study_instance_uid": "1.2.3"}}
        assert ctx.store.succeed(job_id, "d" * 32, report, "r.tiff", "0" * 64, 1, None)
        assert deliver_once(ctx) == "delivered"
        events = send_until_settled(ctx, job_id)
    finally:
        receiver.close()
        archive.close()
    kinds = sorted(json.loads(r.body)["type"] for r in receiver.requests)
    assert kinds == ["job.delivered", "job.succeeded"]
    assert all(e.state == "sent" for e in events)
    delivered = next(json.loads(r.body) for r in receiver.requests if b"delivered" in r.body)
    assert delivered["data"]["delivery"]["destination"] == "pacs"
    assert delivered["data"]["delivery"]["instances"] == 1
    assert delivered["data"]["delivery"]["study_instance_uid"] == "1.2.3"
