"""Job records and the sweeper on SQLite and, when reachable, PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, SlowStainer, make_app
from sqlalchemy import text
from support.api import submit, wait_for
from support.databases import postgres_url
from support.jobs import job_inputs

from service.jobs.files import JobFiles
from service.jobs.job import JobState, NewJob, new_job_id
from service.jobs.runner import WorkerContext, run_job
from service.jobs.store import JobStore, seconds_ago
from service.jobs.sweeper import sweep_once
from service.runtime.config import Settings
from service.vocabulary.options import JobOptions


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    job_store = JobStore(database_url)
    yield job_store
    job_store.close()


@pytest.fixture
def files(tmp_path: Path) -> JobFiles:
    """The job folders (uploads, results), created under ``tmp_path``."""
    job_files = JobFiles(tmp_path / "st")
    job_files.create()
    return job_files


def new_job(tenant: str = "t", key: str | None = None, max_attempts: int = 2) -> NewJob:
    options = JobOptions(stages=("gareau",))
    return NewJob(new_job_id(), tenant, options, job_inputs(), max_attempts, key)


class ListQueue:
    """A queue that remembers what it was given and holds nothing (as after a Redis loss)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.held: set[str] | None = set()

    def enqueue(self, job_id: str) -> None:
        self.sent.append(job_id)

    def held_job_ids(self) -> set[str] | None:
        return self.held

    def length(self) -> int | None:
        return len(self.sent)

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_claim_is_exclusive_and_idempotent(store: JobStore) -> None:
    job, created = store.create(new_job())
    assert created and job.state == JobState.QUEUED
    stale = seconds_ago(60)
    first = store.claim(job.id, "lease-a", stale)
    assert first.outcome == "claimed" and first.job is not None and first.job.attempts == 1
    assert store.claim(job.id, "lease-b", stale).outcome == "busy"
    assert not store.heartbeat(job.id, "lease-b", "tiles", 1, 2)
    assert store.heartbeat(job.id, "lease-a", "staining 1 of 2 tiles", 1, 2)
    beating = store.get(job.id)
    assert beating is not None and beating.message == "staining 1 of 2 tiles"
    with store.database.connect() as connection:  # the column keeps its first name
        column = connection.execute(text("SELECT stage FROM dscm_jobs")).scalar_one()
    assert column == "staining 1 of 2 tiles"
    assert store.succeed(job.id, "lease-a", {"ok": True}, "r.tiff", "c" * 64, 10, None)
    assert store.claim(job.id, "lease-c", stale).outcome == "finished"
    done = store.get(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED and done.progress_done == 1000
    assert store.claim(new_job_id(), "x", stale).outcome == "missing"


def test_cancel_beats_a_late_success(store: JobStore) -> None:
    job, _ = store.create(new_job())
    store.claim(job.id, "lease", seconds_ago(60))
    assert store.cancel(job.id)
    assert not store.heartbeat(job.id, "lease", "tiles", 2, 4)
    assert not store.succeed(job.id, "lease", {}, "r.tiff", "c" * 64, 1, None)
    assert store.get(job.id).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert not store.cancel(job.id)


def test_tenant_scoping_and_idempotency_keys(store: JobStore) -> None:
    job, _ = store.create(new_job("alice", key="k1"))
    again, created = store.create(new_job("alice", key="k1"))
    assert not created and again.id == job.id
    other, created = store.create(new_job("bob", key="k1"))
    assert created and other.id != job.id
    assert store.get(job.id, "bob") is None and store.get(job.id, "alice") is not None
    assert [j.id for j in store.list_jobs("alice", None, 10)] == [job.id]


def test_lost_worker_is_requeued_then_fails_after_max_attempts(
    store: JobStore, make_settings: Callable[..., Settings], files: JobFiles
) -> None:
    settings = make_settings(stale_after_s=0.5, heartbeat_interval_s=0.1, requeue_grace_s=0)
    queue = ListQueue()
    job, _ = store.create(new_job(max_attempts=2))
    store.claim(job.id, "dead-worker-1", seconds_ago(60))
    time.sleep(0.7)
    assert sweep_once(settings, store, files, queue).recovered == 1
    assert queue.sent == [job.id]
    requeued = store.get(job.id)
    assert requeued is not None and requeued.state == JobState.QUEUED and requeued.attempts == 1
    # A redelivery (or the sweeper's message) claims it again; that worker dies too.
    assert store.claim(job.id, "dead-worker-2", seconds_ago(0.5)).outcome == "claimed"
    time.sleep(0.7)
    assert sweep_once(settings, store, files, queue).failed == 1
    failed = store.get(job.id)
    assert failed is not None and failed.state == JobState.FAILED
    assert failed.error_code == "attempts_exhausted" and "2 times" in (failed.error_detail or "")


def test_sweeper_requeues_only_jobs_no_queue_holds(
    store: JobStore, make_settings: Callable[..., Settings], files: JobFiles
) -> None:
    settings = make_settings(requeue_grace_s=0.2)
    queue = ListQueue()
    held, _ = store.create(new_job())
    lost, _ = store.create(new_job())
    store.mark_enqueued(held.id)
    store.mark_enqueued(lost.id)
    queue.held = {held.id}
    assert sweep_once(settings, store, files, queue).requeued == 0  # within the grace time
    time.sleep(0.3)
    assert sweep_once(settings, store, files, queue).requeued == 1
    assert queue.sent == [lost.id]
    queue.held = None  # broker unreadable: do nothing rather than guess
    time.sleep(0.3)
    assert sweep_once(settings, store, files, queue).requeued == 0


def test_retention_purges_old_finished_jobs_and_files(
    store: JobStore, make_settings: Callable[..., Settings], files: JobFiles
) -> None:
    settings = make_settings(retention_s=0.2)
    job, _ = store.create(new_job())
    files.result_dir(job.id).mkdir(parents=True)
    (files.result_dir(job.id) / "x.tiff").write_bytes(b"x")
    store.claim(job.id, "l", seconds_ago(60))
    store.fail(job.id, "l", "boom", "it broke")
    active, _ = store.create(new_job())
    time.sleep(0.3)
    assert sweep_once(settings, store, files, ListQueue()).purged == 1
    assert store.get(job.id) is None and not files.result_dir(job.id).exists()
    assert store.get(active.id) is not None


def test_runner_reports_unwritable_output_and_leaves_nothing(
    store: JobStore, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The results folder is a file, so even root cannot write there."""
    blocker = tmp_path / "results-blocker"
    blocker.write_text("not a folder")
    settings = make_settings(results_dir=blocker / "results")
    files = JobFiles(tmp_path / "st", settings.results_dir)
    files.create()
    job, _ = store.create(new_job())
    files.upload_dir(job.id).mkdir(parents=True)
    ctx = WorkerContext(settings, store, files, SlowStainer(tiles=1, tile_s=0))
    assert run_job(job.id, ctx) == "failed"
    failed = store.get(job.id)
    assert failed is not None and failed.error_code == "output_unwritable"
    assert failed.result_name is None


def test_runner_does_nothing_for_a_duplicate_delivery(
    store: JobStore, make_settings: Callable[..., Settings], files: JobFiles
) -> None:
    settings = make_settings()
    stainer = SlowStainer(tiles=1, tile_s=0)
    job, _ = store.create(new_job())
    files.upload_dir(job.id).mkdir(parents=True)
    ctx = WorkerContext(settings, store, files, stainer)
    assert run_job(job.id, ctx) == "succeeded"
    assert run_job(job.id, ctx) == "finished"
    assert store.get(job.id).attempts == 1  # type: ignore[union-attr]


def test_api_on_postgresql(make_settings: Callable[..., Settings], keys: Keys, pair: Pair) -> None:
    """The whole API with PostgreSQL as the job database (DSCM_DATABASE_URL)."""
    for url in postgres_url():
        with TestClient(make_app(make_settings(database_url=url))) as client:
            job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
            assert job["state"] == "succeeded"
            listed = client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"]
            assert [j["id"] for j in listed] == [job["id"]]
            assert client.get("/readyz").status_code == 200
