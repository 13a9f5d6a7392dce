"""The regions of a running attempt in the job store (SQLite and PostgreSQL): the planner's
board stains what is claimable, takes over a region whose worker died, fails with a region's
error, and stops when its attempt lost the job (service.jobs.regions)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from support.jobs import job_inputs

from service.jobs.errors import AttemptLost
from service.jobs.job import NewJob, new_job_id
from service.jobs.regions import RegionBoard, RegionFailed
from service.jobs.store import JobStore, seconds_ago
from service.runtime.config import Settings
from service.vocabulary.options import JobOptions

SETTINGS = Settings(heartbeat_interval_s=0.2, stale_after_s=1.0)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    job_store = JobStore(database_url)
    yield job_store
    job_store.close()


def running_job(store: JobStore) -> tuple[str, str]:
    """A job claimed by an attempt: (job id, the attempt's lease)."""
    new = NewJob(new_job_id(), "t", JobOptions(stages=("gareau",)), job_inputs(), 2, None)
    store.create(new)
    lease = uuid.uuid4().hex
    assert store.claim(new.id, lease, seconds_ago(60)).outcome == "claimed"
    return new.id, lease


def test_without_other_workers_the_planner_stains_every_region_once(store: JobStore) -> None:
    job_id, attempt = running_job(store)
    stained: list[int] = []
    sent: list[int] = []
    board = RegionBoard(store, SETTINGS, job_id, attempt, lambda j, a, r: sent.append(r))
    board.run_regions(5, stained.append, lambda: None)
    assert stained == [0, 1, 2, 3, 4] and sent == [0, 1, 2, 3, 4]
    assert [row.state for row in store.regions(job_id, attempt)] == ["done"] * 5
    assert {row.runs for row in store.regions(job_id, attempt)} == {1}


def test_a_region_whose_worker_died_is_taken_over(store: JobStore) -> None:
    job_id, attempt = running_job(store)
    board = RegionBoard(store, SETTINGS, job_id, attempt, None)
    stained: list[int] = []
    dead = threading.Event()

    def stain_here(region: int) -> None:
        if region == 0 and not dead.is_set():
            # another worker claims region 1 and dies without a heartbeat
            taken = store.claim_region(job_id, attempt, "dead", "host:1", seconds_ago(60), 1)
            assert taken == 1
            dead.set()
        stained.append(region)

    started = time.monotonic()
    board.run_regions(3, stain_here, lambda: None)
    assert sorted(stained) == [0, 1, 2] and stained.count(1) == 1
    assert time.monotonic() - started >= SETTINGS.stale_after_s  # waited for it to go stale
    rows = store.regions(job_id, attempt)
    assert [row.state for row in rows] == ["done"] * 3 and rows[1].runs == 2


def test_a_live_worker_keeps_its_region(store: JobStore) -> None:
    """A region whose worker still heartbeats is not taken: the planner waits for it."""
    job_id, attempt = running_job(store)
    threads: list[threading.Thread] = []

    def other_worker() -> None:
        for _ in range(10):  # 2 s of heartbeats, then done
            time.sleep(0.2)
            store.beat_region(job_id, attempt, 0, "other")
        store.finish_region(job_id, attempt, 0, "other")

    def enqueue(job: str, planned_by: str, region: int) -> None:
        """Region 0's task reaches another worker at once; the rest are never delivered."""
        if region == 0:
            assert store.claim_region(job, planned_by, "other", "host:2", seconds_ago(60), 0) == 0
            threads.append(threading.Thread(target=other_worker))
            threads[0].start()

    board = RegionBoard(store, SETTINGS, job_id, attempt, enqueue)
    stained: list[int] = []
    board.run_regions(2, stained.append, lambda: None)
    threads[0].join()
    assert stained == [1]
    assert store.regions(job_id, attempt)[0].runs == 1


def test_a_failed_region_fails_the_attempt_with_its_error(store: JobStore) -> None:
    job_id, attempt = running_job(store)
    board = RegionBoard(store, SETTINGS, job_id, attempt, None)

    def stain_here(region: int) -> None:
        if region == 0:
            store.claim_region(job_id, attempt, "bad", "host:3", seconds_ago(60), 2)
            store.fail_region(job_id, attempt, 2, "bad", "corrupt_slide", "bad pixels at tile 9")

    with pytest.raises(RegionFailed) as caught:
        board.run_regions(3, stain_here, lambda: None)
    assert caught.value.code == "corrupt_slide" and caught.value.detail == "bad pixels at tile 9"


def test_an_attempt_that_lost_its_job_opens_no_regions(store: JobStore) -> None:
    job_id, attempt = running_job(store)
    store.cancel(job_id)
    board = RegionBoard(store, SETTINGS, job_id, attempt, None)
    with pytest.raises(AttemptLost):
        board.run_regions(2, lambda r: None, lambda: None)
    assert store.regions(job_id, attempt) == []


def test_regions_are_dropped_with_the_attempt_and_the_job(store: JobStore) -> None:
    job_id, attempt = running_job(store)
    assert store.open_regions(job_id, attempt, 2)
    store.drop_regions(job_id, "someoneelse")
    assert len(store.regions(job_id, attempt)) == 2
    store.delete(job_id)
    assert store.regions(job_id, attempt) == []
