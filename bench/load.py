"""Service load benchmark: concurrent uploads of a small pair to a real API on loopback.

    .venv/bin/python bench/load.py [--uploads 20] [--concurrency 20] [--size-px 256]
                                   [--mode celery|embedded] [--workers 1] [--json-out PATH]

Starts its own processes in a scratch folder (redis-server on a free port, `dscm serve`, and
``--workers`` `dscm worker` processes in celery mode; only `dscm serve` in embedded mode), sends
``--uploads`` POST /v1/jobs with at most ``--concurrency`` in flight, then waits until every job
has finished. Prints accept latency percentiles (POST sent -> 202 received), accept throughput,
and end-to-end throughput; as the baseline, GET /livez at the same concurrency on the same server.
Every process is stopped by its process-group id at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synthetic import write_pair  # noqa: E402
from service.api.auth import hash_key, new_key  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Processes:
    def __init__(self, scratch: Path, env: dict[str, str]) -> None:
        self.scratch, self.env = scratch, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.scratch / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"load: timed out waiting for {what}")
        time.sleep(0.1)


def api_env(scratch: Path, tenant: str, **settings: str) -> tuple[str, dict[str, str]]:
    """A fresh API key for ``tenant`` and the environment of a `dscm serve` that accepts it
    (storage in ``scratch``, no models: Gareau-only jobs), without the caller's DSCM_ settings."""
    key_id, key = new_key()
    entry = {"id": key_id, "tenant": tenant, "roles": ["submit", "read"], "sha256": hash_key(key)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCM_")}
    env.update(
        PYTHONPATH=str(REPO),
        DSCM_STORAGE_DIR=str(scratch / "storage"),
        DSCM_MODELS_DIR=str(scratch / "no-models"),
        DSCM_API_KEYS=json.dumps([entry]),
        **settings,
    )
    return key, env


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def timed_requests(
    count: int, concurrency: int, send: Any
) -> tuple[list[float], list[Any], float]:
    """Run ``send()`` ``count`` times, ``concurrency`` at once; latencies, results, wall time."""
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    results: list[Any] = []

    async def one() -> None:
        async with limit:
            started = time.perf_counter()
            result = await send()
            latencies.append(time.perf_counter() - started)
            results.append(result)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return latencies, results, time.perf_counter() - started


async def run_load(
    base: str, key: str, rcm: bytes, fcm: bytes, args: argparse.Namespace
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def livez() -> int:
            return (await client.get("/livez")).status_code

        async def upload() -> httpx.Response:
            return await client.post(
                "/v1/jobs",
                headers=headers,
                files={
                    "rcm": ("rcm.tif", rcm, "image/tiff"),
                    "fcm": ("fcm.tif", fcm, "image/tiff"),
                },
                data={"stages": "gareau"},
            )

        base_lat, _, base_wall = await timed_requests(args.uploads, args.concurrency, livez)
        lat, responses, wall = await timed_requests(args.uploads, args.concurrency, upload)
        statuses = [r.status_code for r in responses]
        ids = [r.json()["id"] for r in responses if r.status_code == 202]
        accepted_at = time.perf_counter()
        states: dict[str, str] = {}
        while len(states) < len(ids):
            for job_id in ids:
                if job_id in states:
                    continue
                body = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
                if body["state"] in ("succeeded", "failed", "cancelled"):
                    states[job_id] = body["state"]
            if time.perf_counter() - accepted_at > args.finish_timeout_s:
                break
            await asyncio.sleep(0.2)
        drained_s = time.perf_counter() - accepted_at
    finished = list(states.values())
    return {
        "uploads": args.uploads,
        "concurrency": args.concurrency,
        "accepted": statuses.count(202),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "succeeded": finished.count("succeeded"),
        "failed": finished.count("failed"),
        "accept_latency_ms": {f"p{q}": round(1000 * percentile(lat, q), 1) for q in (50, 95, 99)}
        | {"mean": round(1000 * statistics.fmean(lat), 1)},
        "accept_throughput_per_s": round(len(ids) / wall, 2),
        "accept_wall_s": round(wall, 2),
        "all_finished_s": round(wall + drained_s, 2),
        "end_to_end_jobs_per_s": round(len(finished) / (wall + drained_s), 2),
        "baseline_livez_latency_ms": {
            f"p{q}": round(1000 * percentile(base_lat, q), 1) for q in (50, 95, 99)
        },
        "baseline_livez_per_s": round(args.uploads / base_wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--mode", choices=["celery", "embedded"], default="celery")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--finish-timeout-s", type=float, default=600)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="dscm-load-"))
    pair = write_pair(scratch / "pair", args.size_px, args.size_px, tissue_fraction=0.6)
    pair_bytes = pair.rcm.stat().st_size
    key, env = api_env(scratch, "load", DSCM_THREADS="1")
    redis_port, api_port = free_port(), free_port()
    if args.mode == "celery":
        env["DSCM_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    procs = Processes(scratch, env)
    try:
        if args.mode == "celery":
            server = shutil.which("redis-server") or sys.exit("load: redis-server not found")
            redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
            redis_args += ["--appendonly", "no", "--dir", str(scratch)]
            procs.spawn("redis", [server, *redis_args])
            for n in range(args.workers):
                worker = ["-m", "service.cli", "worker", f"--hostname=load{n}@%h"]
                procs.spawn(f"worker{n}", [sys.executable, *worker])
        serve = ["-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(api_port)]
        procs.spawn("api", [sys.executable, *serve, "--log-level", "warning"])
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: http_ok(f"{base}/readyz"), 60, "the API to be ready")
        figures = asyncio.run(
            run_load(base, key, pair.rcm.read_bytes(), pair.fcm.read_bytes(), args)
        )
    finally:
        procs.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    figures |= {
        "mode": args.mode,
        "workers": args.workers if args.mode == "celery" else 1,
        "pair": f"{args.size_px}x{args.size_px} TIFF x2, {pair_bytes} bytes each",
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    print(json.dumps(figures, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
