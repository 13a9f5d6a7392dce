"""Hardening with real processes: `dscm serve` under uvicorn, redis-server, `dscm worker`.

Memory and open files are read from /proc of the server and worker processes; the full disk is
a small tmpfs (mounted when the tests run as root, else that test is skipped).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_inputs import gray_tiff_bytes, undecodable_tiff
from processes import Cluster, get_job, poll, post_pair, tiff_files
from service_helpers import Keys
from support.api import FINISHED
from support.polling import wait_until
from support.processes import Proc
from support.tmpfs import fill, mount_tmpfs, unmount

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc"),
]
NEEDS_REDIS = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
EMBEDDED = {"DSCM_BROKER_URL": ""}  # the API runs jobs in its own worker thread
MIB = 1 << 20
JOB_WAIT_S = 120  # dozens of jobs queue behind one slow worker


# ---- /proc readings -------------------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh (``5`` to clear_refs), so a later reading is this test's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def deleted_open_files(pid: int, under: Path) -> list[str]:
    """Files under ``under`` that ``pid`` holds open although they were deleted."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.endswith(" (deleted)") and target.startswith(str(under)):
            held.append(target)
    return held


# ---- HTTP helpers ---------------------------------------------------------------------------


def exchange(port: int, request: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send ``request`` on a fresh connection; read until the server closes it (or ``wait_s``
    passes: then the connection was still open). Returns what came back and when it closed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        if request:
            sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, float("inf")
        except ConnectionResetError:
            pass
    return received, time.monotonic() - started


def problem_of(raw: bytes) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), raw[:300]
    problem: dict[str, Any] = json.loads(body)
    return problem


# ---- 1. credentials before bodies, bounded bodies --------------------------------------------


def test_a_keyless_body_does_not_grow_the_api(cluster: Cluster, keys: Keys) -> None:
    api = cluster.start_api(**EMBEDDED)
    url = f"{cluster.url}/v1/jobs/{uuid.uuid4().hex}/viewer-link"
    baseline_kib = status_kib(api.pid, "VmRSS")
    reset_peak_rss(api.pid)

    def body(mib: int) -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        block = b"{" + b" " * (MIB - 1)
        for _ in range(mib):
            yield block

    answer = httpx.post(url, content=body(256), timeout=60)
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "unauthenticated"
    try:  # with a key: refused after 16 KiB, and the connection is closed
        capped = httpx.post(url, content=body(256), headers=Keys.auth(keys.alice), timeout=60)
    except httpx.HTTPError:
        pass  # the server closed the connection while the client was still sending
    else:
        assert capped.status_code == 413 and capped.json()["code"] == "body_too_large"
    declared = f"POST {url.removeprefix(cluster.url)} HTTP/1.1\r\nHost: x\r\n"
    raw, closed_s = exchange(
        cluster.api_port, (declared + "Content-Length: 500000000\r\n\r\n").encode(), 5
    )
    assert raw.startswith(b"HTTP/1.1 413") and closed_s < 5
    peak_kib = status_kib(api.pid, "VmHWM")
    assert peak_kib - baseline_kib < 64 * 1024, f"RSS {baseline_kib} -> peak {peak_kib} KiB"


# ---- 7. connection limits: request heads, keep-alive, stalled uploads ------------------------


def test_slow_heads_idle_connections_and_stalled_uploads_are_cut_off(
    cluster: Cluster, keys: Keys
) -> None:
    cluster.start_api(
        **EMBEDDED,
        DSCM_HTTP_HEADER_TIMEOUT_S="1",
        DSCM_HTTP_KEEP_ALIVE_S="1",
        DSCM_UPLOAD_IDLE_TIMEOUT_S="1",
    )
    port = cluster.api_port
    # Nothing sent at all, and a head that never ends.
    for request in (b"", b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: 1"):
        raw, closed_s = exchange(port, request, wait_s=10)
        assert closed_s < 5, f"still open after 10 s: {raw[:200]!r}"
        assert raw.startswith(b"HTTP/1.1 408") and problem_of(raw)["code"] == "request_timeout"
    # A head dripped one header a third of a second at a time: the deadline holds anyway.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(OSError):
            for i in range(60):
                sock.sendall(f"X-Drip-{i}: 1\r\n".encode())
                time.sleep(0.3)
    assert time.monotonic() - started < 5
    # Keep-alive: a finished exchange, then silence.
    raw, closed_s = exchange(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=10)
    assert raw.startswith(b"HTTP/1.1 200") and closed_s < 5
    # A head over 16 KiB: 431 when it arrives whole, 400 while it is still coming in; both
    # problems, not uvicorn's plain text.
    big = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 * 1024) + b"\r\n\r\n"
    raw, _ = exchange(port, big, wait_s=10)
    assert raw.startswith(b"HTTP/1.1 431") and problem_of(raw)["code"] == "head_too_large"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
        raw = b""
        for _ in range(40):  # stop sending once the answer is there (no reset)
            sock.sendall(b"a" * 1024)
            if select.select([sock], [], [], 0.02)[0]:
                raw = sock.recv(65536)
                break
    assert raw.startswith(b"HTTP/1.1 400") and problem_of(raw)["code"] == "malformed_request"
    # An upload that stops sending: 408 after the idle timeout, nothing left in storage/tmp.
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {keys.alice}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="rcm"; filename="r.tif"\r\n\r\nII*\x00'
    chunk = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    raw, closed_s = exchange(port, head.encode() + chunk, wait_s=10)
    assert raw.startswith(b"HTTP/1.1 408") and problem_of(raw)["code"] == "request_timeout"
    assert list((cluster.root / "storage" / "tmp").iterdir()) == []
    assert httpx.get(f"{cluster.url}/livez", timeout=5).status_code == 200


def test_an_upload_dripped_slowly_is_cut_off_at_its_deadline(cluster: Cluster, keys: Keys) -> None:
    """One byte every 0.3 s never trips the idle timeout; the whole-body deadline stops it:
    408 with a problem body, the connection closed, its tmp/upload-* folder removed."""
    cluster.start_api(**EMBEDDED, DSCM_UPLOAD_IDLE_TIMEOUT_S="1", DSCM_UPLOAD_DEADLINE_S="3")
    tmp = cluster.root / "storage" / "tmp"
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {keys.alice}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="rcm"; filename="r.tif"\r\n\r\nII*\x00'
    started = time.monotonic()
    raw, folders_while_dripping = b"", set()
    with socket.create_connection(("127.0.0.1", cluster.api_port), timeout=10) as sock:
        sock.sendall(head.encode() + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        try:
            while time.monotonic() - started < 10 and not raw:
                sock.sendall(b"1\r\n\0\r\n")  # one more byte of the file, chunked
                folders_while_dripping |= {p.name for p in tmp.glob("upload-*")}
                if select.select([sock], [], [], 0.3)[0]:
                    raw = sock.recv(65536)
            while chunk := sock.recv(65536):
                raw += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    elapsed_s = time.monotonic() - started
    assert folders_while_dripping, "the upload never reached its folder"
    assert raw.startswith(b"HTTP/1.1 408"), raw[:300]
    problem = problem_of(raw)
    assert problem["code"] == "request_timeout" and "DSCM_UPLOAD_DEADLINE_S" in problem["detail"]
    assert 2.5 < elapsed_s < 6, elapsed_s
    wait_until(lambda: not list(tmp.glob("upload-*")), 5, "the upload folder to go")
    assert httpx.get(f"{cluster.url}/livez", timeout=5).status_code == 200


# ---- 4d. a full disk -------------------------------------------------------------------------


def test_an_upload_to_a_full_disk_is_507_and_readyz_says_so(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    storage = tmp_path / "small-storage"
    if not mount_tmpfs(storage, "size=4m"):
        pytest.skip("a full disk is a small tmpfs, which needs mount rights (root)")
    try:
        cluster.start_api(
            **EMBEDDED,
            DSCM_STORAGE_DIR=str(storage),
            DSCM_DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        )
        rcm, fcm = gray_tiff_bytes(256, 256, 1), gray_tiff_bytes(256, 256, 2)
        filler = fill(storage)
        files = tiff_files(rcm, fcm)
        auth = Keys.auth(keys.alice)
        declared = httpx.post(f"{cluster.url}/v1/jobs", files=files, headers=auth, timeout=30)
        assert declared.status_code == 507, declared.text
        assert declared.json()["code"] == "storage_full"
        assert declared.headers["retry-after"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the disk fills while writing
            boundary = "fullb"
            for name, data in (("rcm", rcm), ("fcm", fcm)):
                yield (
                    (
                        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                        f'filename="{name}.tif"\r\n\r\n'
                    ).encode()
                    + data
                    + b"\r\n"
                )
            yield f"--{boundary}--\r\n".encode()

        streamed = httpx.post(
            f"{cluster.url}/v1/jobs",
            content=chunked(),
            headers={**auth, "Content-Type": "multipart/form-data; boundary=fullb"},
            timeout=30,
        )
        assert streamed.status_code == 507, streamed.text
        assert streamed.json()["code"] == "storage_full"
        ready = httpx.get(f"{cluster.url}/readyz", timeout=30)
        assert ready.status_code == 503
        storage_check = next(c for c in ready.json()["checks"] if c["name"] == "storage")
        assert "No space left" in storage_check["detail"], storage_check
        assert str(storage) not in ready.text  # names the folder, not the server's path
        filler.unlink()
        accepted = httpx.post(f"{cluster.url}/v1/jobs", files=files, headers=auth, timeout=30)
        assert accepted.status_code == 202, accepted.text
        assert "internal_error" not in cluster.procs[-1].output()
        assert "Traceback" not in cluster.procs[-1].output()
    finally:
        cluster.stop_all()
        unmount(storage)


# ---- 2. disk space: no deleted file stays open -----------------------------------------------


@NEEDS_REDIS
def test_fifty_jobs_some_failed_some_deleted_leave_no_deleted_file_open(
    cluster: Cluster, keys: Keys, tmp_path: Path
) -> None:
    """A Celery worker and the API serve 50 jobs: succeeded (tiles viewed, some deleted by
    DELETE, some removed behind the API's back as another replica would), failed in the
    worker, cancelled while queued or running. Afterwards neither process holds a deleted file."""
    cluster.extra_env.update(DSCM_TILE_PX="64", DSCM_SWEEP_INTERVAL_S="0.5")
    cluster.start_redis()
    api = cluster.start_api()
    worker = cluster.start_worker("slow", slow=True, DSCM_TEST_TILE_DELAY_S="0.03")
    storage = cluster.root / "storage"
    auth = Keys.auth(keys.alice)
    small = [gray_tiff_bytes(128, 128, seed) for seed in (1, 2)]
    big = [gray_tiff_bytes(512, 512, seed) for seed in (3, 4)]  # 64 tiles: long enough to cancel
    noise = undecodable_tiff(tmp_path / "noise.tif").read_bytes()

    good = [post_pair(cluster, keys.alice, tiff_files(*small))["id"] for _ in range(20)]
    broken = [post_pair(cluster, keys.alice, tiff_files(noise, small[1]))["id"] for _ in range(10)]
    queued = [post_pair(cluster, keys.alice, tiff_files(*small))["id"] for _ in range(10)]
    for job_id in queued:  # most are still waiting behind the others
        assert httpx.delete(f"{cluster.url}/v1/jobs/{job_id}", headers=auth).status_code == 200
    running = []
    for _ in range(10):
        job_id = post_pair(cluster, keys.alice, tiff_files(*big))["id"]
        poll(cluster, keys.alice, job_id, JOB_WAIT_S, ("running", *FINISHED))
        assert httpx.delete(f"{cluster.url}/v1/jobs/{job_id}", headers=auth).status_code == 200
        running.append(job_id)
    jobs = {job_id: poll(cluster, keys.alice, job_id, JOB_WAIT_S) for job_id in good + broken}
    assert {jobs[j]["state"] for j in good} == {"succeeded"}
    assert {(jobs[j]["state"], jobs[j]["error"]["code"]) for j in broken} == {
        ("failed", "corrupt_slide")
    }
    for job_id in good[:10]:  # the API opens their pyramids for the viewer
        tile = httpx.get(f"{cluster.url}/v1/jobs/{job_id}/dzi_files/7/0_0.jpeg", headers=auth)
        assert tile.status_code == 200, tile.text
    for job_id in good[:5]:
        assert httpx.delete(f"{cluster.url}/v1/jobs/{job_id}", headers=auth).status_code == 200
    for job_id in good[5:8]:  # deleted by someone else: the API learns it at its next sweep
        shutil.rmtree(storage / "results" / job_id)
    states = [get_job(cluster, keys.alice, j)["state"] for j in queued + running]
    assert set(states) == {"cancelled"}, states

    def nothing_held() -> bool:
        return not deleted_open_files(api.pid, storage) and not deleted_open_files(
            worker.pid, storage
        )

    wait_until(nothing_held, 10, "no deleted file held open")
    assert sorted(p.name for p in (storage / "uploads").iterdir()) == []
    kept = sorted(p.name for p in (storage / "results").iterdir())
    assert kept == sorted(good[8:]), kept
    assert "Traceback" not in api.output()


# ---- 7. readyz names the live workers -------------------------------------------------------


@NEEDS_REDIS
def test_readyz_reports_live_workers(cluster: Cluster) -> None:
    cluster.start_redis()
    cluster.start_api(DSCM_WORKER_PING_TIMEOUT_S="2")

    def workers() -> tuple[int, dict[str, Any], str]:
        ready = httpx.get(f"{cluster.url}/readyz", timeout=30)
        check = next(c for c in ready.json()["checks"] if c["name"] == "workers")
        metrics = httpx.get(f"{cluster.url}/metrics", timeout=30).text
        live = next(line for line in metrics.splitlines() if line.startswith("dscm_workers_live"))
        return ready.status_code, check, live

    status, check, live = workers()
    assert status == 200  # no worker: jobs wait, the API still serves
    assert check["ok"] is False and check["required"] is False
    assert "no worker answered" in check["detail"] and live == "dscm_workers_live 0.0"
    worker = cluster.start_worker("w7")
    seen: list[Any] = []
    wait_until(lambda: seen.append(workers()) or seen[-1][1]["ok"], 30, "the worker's pong")
    status, check, live = seen[-1]
    assert status == 200 and "1 live: w7@" in check["detail"], check
    assert live == "dscm_workers_live 1.0"
    worker.stop()
    wait_until(lambda: not workers()[1]["ok"], 30, "the stopped worker to be missed")
    assert workers()[2] == "dscm_workers_live 0.0"


# ---- 6. an upload cut off by an API crash ---------------------------------------------------


def test_an_upload_cut_off_by_an_api_crash_is_swept(cluster: Cluster, keys: Keys) -> None:
    api = cluster.start_api(**EMBEDDED)
    tmp = cluster.root / "storage" / "tmp"
    with socket.create_connection(("127.0.0.1", cluster.api_port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {keys.alice}\r\nContent-Length: 10000000\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                '--b\r\nContent-Disposition: form-data; name="rcm"; filename="r.tif"\r\n\r\n'
            ).encode()
            + b"\0" * 300_000
        )
        wait_until(lambda: any(tmp.glob("upload-*/rcm.tif")), 10, "the upload to start")
        api.kill()  # SIGKILL mid-upload: nothing cleans up
    orphan = next(tmp.glob("upload-*"))
    assert (orphan / "rcm.tif").stat().st_size > 0
    cluster.start_api(**EMBEDDED, DSCM_ORPHAN_GRACE_S="3", DSCM_UPLOAD_IDLE_TIMEOUT_S="1")
    wait_until(lambda: not orphan.exists(), 20, "the sweeper to delete the orphaned upload")


# ---- 7. one purge rule for failed jobs -------------------------------------------------------


@NEEDS_REDIS
def test_a_job_failed_with_attempts_exhausted_keeps_no_uploads(
    cluster: Cluster, keys: Keys
) -> None:
    cluster.extra_env.update(DSCM_MAX_ATTEMPTS="1")
    cluster.start_redis()
    cluster.start_api()
    slow: Proc = cluster.start_worker("slow", slow=True, DSCM_TEST_TILE_DELAY_S="0.5")
    job_id = post_pair(
        cluster, keys.alice, tiff_files(*[gray_tiff_bytes(256, 256, s) for s in (1, 2)])
    )["id"]
    poll(cluster, keys.alice, job_id, JOB_WAIT_S, ("running",))
    uploads = cluster.root / "storage" / "uploads" / job_id
    assert uploads.is_dir()
    slow.signal_group(signal.SIGKILL)
    job = poll(cluster, keys.alice, job_id, JOB_WAIT_S)
    assert job["state"] == "failed" and job["error"]["code"] == "attempts_exhausted", job
    wait_until(lambda: not uploads.exists(), 10, "the failed job's uploads to be deleted")
