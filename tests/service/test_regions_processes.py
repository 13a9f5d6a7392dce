"""One slide across two Celery workers, as real processes: redis-server, `dscm serve` and two
`dscm worker`s (solo pool), the shipped models (onnxruntime fp32 on the CPU), a SQLite job
database. The second worker is SIGKILLed while it stains a region; another worker stains that
region again and the result is byte-identical to a one-worker run (issue 20)."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from processes import REPO, Cluster, get_job, poll, post_pair, tiff_files
from service_helpers import Keys
from support.pairs import write_tissue_pair
from support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

SHIPPED = {"DSCM_MODELS_DIR": str(REPO / "models"), "DSCM_TILE_PX": "128"}


def regions(cluster: Cluster) -> list[tuple[int, str, str | None, int]]:
    """(region, state, holder, runs) of every region the database holds now."""
    database = cluster.root / "storage" / "dscm.sqlite3"
    if not database.exists():
        return []
    with sqlite3.connect(database, timeout=5) as connection:
        try:
            rows = connection.execute(
                "SELECT region, state, holder, runs FROM dscm_regions ORDER BY region"
            ).fetchall()
        except sqlite3.OperationalError:  # the table is made by the first worker
            return []
    return [(int(r[0]), str(r[1]), r[2], int(r[3])) for r in rows]


def test_two_workers_stain_one_slide_and_survive_a_killed_one(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    (tmp_path / "pair").mkdir()
    pair = write_tissue_pair(tmp_path / "pair", 3584, 2816, 0.75)
    files = tiff_files(pair["rcm"].read_bytes(), pair["fcm"].read_bytes())
    cluster.extra_env.update(SHIPPED)
    redis = cluster.start_redis()
    api = cluster.start_api()

    # one worker, no regions: today's behaviour, the reference
    alone = cluster.start_worker("alone", DSCM_REGION_TILES="0")
    reference = poll(cluster, keys.alice, post_pair(cluster, keys.alice, files)["id"], 180)
    assert reference["state"] == "succeeded", reference
    alone.stop()

    # two workers: whichever receives the job plans it, the other gets region tasks
    workers = [cluster.start_worker(name, DSCM_REGION_TILES="4") for name in ("w1", "w2")]
    job = post_pair(cluster, keys.alice, files)
    received = f"Task dscm.stain_job[{job['id']}"
    wait_until(lambda: any(received in w.output() for w in workers), 30, "the job's worker")
    planner, helper = workers if received in workers[0].output() else workers[::-1]
    helper_pid = f":{helper.pid}"

    def helper_in_a_region() -> bool:
        return any(
            s == "running" and (h or "").endswith(helper_pid) for _, s, h, _ in regions(cluster)
        )

    wait_until(helper_in_a_region, 60, "the helper in a region", watch=[planner])
    progress = [get_job(cluster, keys.alice, job["id"])["progress"]]
    helper.signal_group(signal.SIGKILL)  # mid-region: no ack, no release, no heartbeat
    assert helper.wait(10) is not None
    # the broker and the API restart meanwhile: regions do not depend on either
    redis.stop()
    api.stop()
    redis = cluster.start_redis()
    api = cluster.start_api()

    taken_over = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        current = get_job(cluster, keys.alice, job["id"])
        progress.append(current["progress"])
        taken_over |= any(runs >= 2 for _, _, _, runs in regions(cluster))
        if current["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert current["state"] == "succeeded", (current, planner.log())
    assert taken_over, "no region was stained a second time after the kill"
    assert current["result"]["sha256"] == reference["result"]["sha256"]
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents), percents  # progress never went back
    # the attempt's regions are dropped with it, just after the job is marked succeeded
    wait_until(lambda: regions(cluster) == [], 10, "the attempt's regions dropped")
