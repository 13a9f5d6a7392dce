"""Real processes: redis-server, `dscm serve` under uvicorn, `dscm worker` (Celery), and faults."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openslide
import pytest
from processes import Cluster, get_job, poll, post_pair
from service_helpers import Keys, Pair
from support.polling import wait_until
from support.tmpfs import mount_tmpfs, unmount

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def download(cluster: Cluster, key: str, job: dict[str, Any], target: Path) -> Path:
    response = httpx.get(
        f"{cluster.url}{job['links']['result']}", headers=Keys.auth(key), timeout=30
    )
    assert response.status_code == 200
    target.write_bytes(response.content)
    assert hashlib.sha256(response.content).hexdigest() == job["result"]["sha256"]
    return target


def test_post_poll_download_open_with_openslide(
    cluster: Cluster, keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    cluster.start_redis()
    cluster.start_api()
    cluster.start_worker()
    ready = httpx.get(f"{cluster.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    job = poll(cluster, keys.alice, post_pair(cluster, keys.alice, pair.files())["id"])
    assert job["state"] == "succeeded", job
    path = download(cluster, keys.alice, job, tmp_path / "out.tiff")
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.dimensions == (256, 256)
        assert slide.read_region((0, 0), 0, (64, 64)).size == (64, 64)
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=10).text
    assert 'dscm_jobs{state="succeeded"} 1.0' in metrics and "dscm_queue_length 0.0" in metrics


def test_worker_sigkill_mid_job_is_redelivered_and_succeeds(
    cluster: Cluster, keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    cluster.start_redis()
    cluster.start_api()
    slow = cluster.start_worker("slow", slow=True, DSCM_TEST_TILE_DELAY_S="0.4")
    job_id = post_pair(cluster, keys.alice, pair.files())["id"]
    running = poll(cluster, keys.alice, job_id, 30, ("running",))
    wait_until(
        lambda: get_job(cluster, keys.alice, job_id)["progress"]["done"] >= 2, 30, "two tiles"
    )
    assert running["attempts"] == 1
    slow.kill()  # SIGKILL: no shutdown handler runs, the message stays unacknowledged
    assert not slow.alive
    cluster.start_worker("w2")
    job = poll(cluster, keys.alice, job_id, 60)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    with openslide.OpenSlide(str(download(cluster, keys.alice, job, tmp_path / "o.tiff"))):
        pass
    results = cluster.root / "storage" / "results" / job_id
    assert sorted(p.name for p in results.iterdir()) == sorted(
        [job["report"]["output"], job["report"]["output"].replace(".tiff", ".jpg")]
    )


def test_redis_restart_loses_no_accepted_job(cluster: Cluster, keys: Keys, pair: Pair) -> None:
    redis = cluster.start_redis()
    cluster.start_api()
    ids = [post_pair(cluster, keys.alice, pair.files())["id"] for _ in range(3)]
    # No worker yet: all three wait in Redis. Redis restarts without persistence: all are lost.
    redis.stop()
    cluster.start_redis()
    cluster.start_worker()
    for job_id in ids:
        job = poll(cluster, keys.alice, job_id, 60)
        assert job["state"] == "succeeded", job


def test_redis_restart_while_a_worker_runs(cluster: Cluster, keys: Keys, pair: Pair) -> None:
    redis = cluster.start_redis()
    cluster.start_api()
    cluster.start_worker("slow", slow=True, DSCM_TEST_TILE_DELAY_S="0.2")
    ids = [post_pair(cluster, keys.alice, pair.files())["id"] for _ in range(3)]
    poll(cluster, keys.alice, ids[0], 30, ("running",))
    redis.stop()
    time.sleep(1)
    cluster.start_redis()
    for job_id in ids:
        job = poll(cluster, keys.alice, job_id, 90)
        assert job["state"] in ("succeeded", "failed"), job
        if job["state"] == "failed":
            assert job["error"]["code"] and job["error"]["detail"]


def test_api_restart_keeps_records(
    cluster: Cluster, keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    cluster.start_redis()
    api = cluster.start_api()
    cluster.start_worker()
    done = poll(cluster, keys.alice, post_pair(cluster, keys.alice, pair.files())["id"])
    api.stop()
    queued_while_down = httpx.Client(timeout=1)
    with pytest.raises(httpx.HTTPError):
        queued_while_down.get(f"{cluster.url}/livez")
    cluster.start_api()
    again = get_job(cluster, keys.alice, done["id"])
    for field in ("state", "result", "report", "created_at", "finished_at", "attempts"):
        assert again[field] == done[field]
    download(cluster, keys.alice, again, tmp_path / "again.tiff")


@pytest.mark.parametrize("fault", ["unwritable", "full"])
def test_output_fault_fails_job_with_clear_code_and_no_partial_result(
    cluster: Cluster, keys: Keys, pair: Pair, tmp_path: Path, fault: str
) -> None:
    results = tmp_path / "results"
    mounted = False
    if fault == "unwritable":
        results.mkdir()
        if os.geteuid() == 0:
            mounted = mount_tmpfs(results, "ro,size=1m")
            if not mounted:
                pytest.skip("running as root without mount: cannot make a folder unwritable")
        else:
            results.chmod(0o555)
    else:
        mounted = mount_tmpfs(results, "size=40k")
        if not mounted:
            pytest.skip("a full disk is simulated with a tiny tmpfs, which needs mount rights")
    try:
        cluster.extra_env["DSCM_RESULTS_DIR"] = str(results)
        cluster.start_redis()
        cluster.start_api()
        cluster.start_worker()
        job = poll(cluster, keys.alice, post_pair(cluster, keys.alice, pair.files())["id"])
        assert job["state"] == "failed", job
        assert job["error"]["code"] == "output_unwritable", job
        assert job["result"] is None
        leftovers = [p for p in results.rglob("*") if p.is_file()]
        assert leftovers == []
        conflict = httpx.get(
            f"{cluster.url}{job['links']['result']}", headers=Keys.auth(keys.alice), timeout=10
        )
        assert conflict.status_code == 409
    finally:
        cluster.stop_all()
        if mounted:
            unmount(results)
        elif results.exists():
            results.chmod(0o755)


def test_oversize_upload_is_refused_early_over_real_http(cluster: Cluster, keys: Keys) -> None:
    cluster.extra_env["DSCM_MAX_UPLOAD_BYTES"] = "1000000"
    cluster.start_redis()
    cluster.start_api()
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="rcm"; filename="r.tif"\r\n\r\n'
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(16 * 64):  # 64 MiB, if the server read it all
            yield b"\0" * 65536

    started = time.monotonic()
    try:
        response = httpx.post(
            f"{cluster.url}/v1/jobs",
            content=body(),
            headers={
                **Keys.auth(keys.alice),
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            timeout=30,
        )
    except httpx.HTTPError:
        pass  # the server may close the connection while the client is still sending
    else:
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")
    assert time.monotonic() - started < 20
    assert list((cluster.root / "storage" / "uploads").iterdir()) == []
    assert httpx.get(f"{cluster.url}/livez", timeout=5).status_code == 200


def test_worker_sigterm_releases_the_job_for_another_worker(
    cluster: Cluster, keys: Keys, pair: Pair
) -> None:
    cluster.start_redis()
    cluster.start_api()
    slow = cluster.start_worker("slow", slow=True, DSCM_TEST_TILE_DELAY_S="0.4")
    job_id = post_pair(cluster, keys.alice, pair.files())["id"]
    poll(cluster, keys.alice, job_id, 30, ("running",))
    slow.signal_group(signal.SIGTERM)
    assert slow.popen is not None
    slow.popen.wait(30)
    cluster.start_worker("w2")
    job = poll(cluster, keys.alice, job_id, 60)
    assert job["state"] == "succeeded" and job["attempts"] == 1, job
