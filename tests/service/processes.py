"""Real processes for the integration tests: redis-server, the API under uvicorn, Celery workers;
and the HTTP calls the tests make to that API.

Every process runs in its own session and is killed by its process group id on teardown, so a
failing test leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from support.api import FINISHED, accepted, read_job, submit, wait_for
from support.polling import wait_until
from support.ports import free_port
from support.processes import Proc

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass
class Cluster:
    """One test's processes and their shared configuration."""

    root: Path
    api_keys: list[dict[str, Any]]
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSCM_")}
        env.update(
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            DSCM_STORAGE_DIR=str(self.root / "storage"),
            DSCM_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            DSCM_MODELS_DIR=str(self.root / "no-models"),
            DSCM_TILE_PX="64",
            DSCM_THREADS="1",
            DSCM_API_KEYS=json.dumps(self.api_keys),
            DSCM_HEARTBEAT_INTERVAL_S="0.3",
            DSCM_STALE_AFTER_S="2",
            DSCM_SWEEP_INTERVAL_S="0.5",
            DSCM_REQUEUE_GRACE_S="1",
            DSCM_JOB_TIME_LIMIT_S="120",
            DSCM_THUMBNAIL_PX="128",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def _spawn(self, name: str, args: list[str], **env: str) -> Proc:
        proc = Proc(name, args, self.env(**env), self.root / f"{name}.log", cwd=REPO)
        self.procs.append(proc)
        return proc

    def start_redis(self) -> Proc:
        redis_dir = self.root / "redis"
        redis_dir.mkdir(exist_ok=True)
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed"
        args = [server, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        args += ["--dir", str(redis_dir), "--save", "", "--appendonly", "no"]
        proc = self._spawn("redis", args)
        wait_until(lambda: _redis_ping(self.redis_port), 10, "redis-server")
        return proc

    def start_api(self, **env: str) -> Proc:
        args = [PYTHON, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
        proc = self._spawn("api", [*args, "--port", str(self.api_port)], **env)
        wait_until(lambda: self._livez(proc), 30, f"the API\n{proc.output()[-2000:]}")
        return proc

    def _livez(self, proc: Proc) -> bool:
        if not proc.alive:
            raise AssertionError(f"the API exited:\n{proc.output()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, name: str = "w1", slow: bool = False, **env: str) -> Proc:
        if slow:
            args = [PYTHON, str(REPO / "tests" / "service" / "slow_worker.py"), name]
        else:
            args = [PYTHON, "-m", "service.cli", "worker", f"--hostname={name}@%h"]
        proc = self._spawn(f"worker-{name}", args, **env)
        wait_until(lambda: _worker_ready(proc), 30, f"worker {name}")
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self, timeout_s: float = 30) -> httpx.Client:
        """An HTTP client of the API (the caller closes it)."""
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _worker_ready(proc: Proc) -> bool:
    if not proc.alive:
        raise AssertionError(f"the worker exited:\n{proc.output()[-3000:]}")
    return " ready." in proc.output()


# ---- the API over real HTTP --------------------------------------------------------------------

UploadFiles = dict[str, tuple[str, bytes, str]]


def tiff_files(rcm: bytes, fcm: bytes) -> UploadFiles:
    """The multipart files of a job: the two TIFFs as a client names them."""
    return {"rcm": ("rcm.tif", rcm, "image/tiff"), "fcm": ("fcm.tif", fcm, "image/tiff")}


def post_pair(cluster: Cluster, key: str, files: UploadFiles, **data: str) -> dict[str, Any]:
    """Submit a job (Gareau only unless ``data`` says otherwise); it must be accepted."""
    with cluster.client(timeout_s=60) as client:
        return accepted(submit(client, key, files, data))


def get_job(cluster: Cluster, key: str, job_id: str) -> dict[str, Any]:
    """The job as the API shows it now (200 required)."""
    with cluster.client() as client:
        return read_job(client, key, job_id)


def poll(
    cluster: Cluster,
    key: str,
    job_id: str,
    timeout_s: float = 60,
    states: tuple[str, ...] = FINISHED,
) -> dict[str, Any]:
    """The job once it is in one of ``states``; AssertionError after ``timeout_s`` (processes
    are not watched: tests kill workers on purpose)."""
    with cluster.client() as client:
        return wait_for(client, key, job_id, states, timeout_s)
