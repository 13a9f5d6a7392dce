"""The compose topology as plain processes: redis-server (the compose command: AOF, noeviction,
password), PostgreSQL (a fresh database on the local server), the API and two workers, each run
with the command and environment docker-compose.yml gives its container.

Skips when redis-server is missing or PostgreSQL at 127.0.0.1:5432 is unreachable
(DSCM_TEST_POSTGRES overrides the connection string).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pyvips

pytest.importorskip("yaml", reason="PyYAML reads the compose files (pip install pyyaml)")

from ops_compose import (
    REPO,
    Dockerfile,
    command,
    duration_s,
    environment,
    load_compose,
    parse_dockerfile,
)
from ops_processes import (
    VENV_BIN,
    HostMapping,
    container_argv,
    container_env,
    healthcheck_argv,
    healthy,
)
from support.api import FINISHED, accepted, read_job, submit
from support.pairs import Texture, textured_tissue, write_uint8_tiff
from support.polling import wait_until
from support.ports import free_port
from support.processes import Proc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TENANT = "ops-hospital"
# Small tiles, so that a 256 px pair has 16 tiles and a 4096 px pair runs for seconds.
TILE_PX = "64"
STAGES = "median,gareau"  # independent of which models are installed


@dataclass
class Topology:
    workdir: Path
    compose: dict[str, Any]
    mapping: HostMapping
    redis_url: str
    api_url: str
    api_key: str
    procs: list[Proc] = field(default_factory=list)
    workers: dict[str, tuple[Proc, int]] = field(default_factory=dict)  # name -> (proc, metrics)

    def service(self, name: str) -> dict[str, Any]:
        return dict(self.compose["services"][name])

    def image(self, service: str) -> Dockerfile:
        dockerfile = self.service(service)["build"]["dockerfile"]
        return parse_dockerfile(REPO / dockerfile)

    def start(self, name: str, service: str, ports: dict[str, int]) -> Proc:
        spec, image = self.service(service), self.image(service)
        mapping = HostMapping(
            hosts=self.mapping.hosts,
            volumes_root=self.mapping.volumes_root,
            image_paths=self.mapping.image_paths,
            database_url=self.mapping.database_url,
            ports={**ports},
        )
        env = container_env(spec, image, mapping)
        argv = container_argv(spec, image, ports)
        proc = Proc(name, argv, env, self.workdir / name / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str, service: str) -> Proc:
        port = free_port()
        spec = self.service(service)
        inside = (
            environment(spec).get("DSCM_WORKER_METRICS_PORT")
            or (self.image(service).env()["DSCM_WORKER_METRICS_PORT"])
        )
        proc = self.start(name, service, {inside: port})
        check = healthcheck_argv(spec["healthcheck"]["test"], {inside: port})
        self.workers[name] = (proc, port)
        wait_until(lambda: healthy(check), 60, f"{name} healthy", 0.1, [proc])
        wait_until(lambda: " ready." in proc.log(), 60, f"{name} consuming", 0.1, [proc])
        return proc

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=60,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log(3000)}" for p in self.procs)


# ---- fixtures ----


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    dsn = os.environ.get("DSCM_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres")
    try:
        admin = psycopg.connect(f"{dsn} dbname=postgres connect_timeout=3", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is unreachable ({dsn}): {str(exc).strip()[:200]}")
    name = f"dscm_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: str
) -> Iterator[Topology]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    from sqlalchemy.engine import make_url

    workdir = tmp_path_factory.mktemp("topology")
    secrets_env = {
        "REDIS_PASSWORD": secrets.token_hex(16),
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "DSCM_TILE_PX": TILE_PX,
    }
    compose = load_compose(secrets_env)
    redis_port, api_port = free_port(), free_port()

    def database_url(url: str) -> str:
        # The compose URL (driver, password) with the local server, its user and a fresh db.
        parsed = make_url(url).set(
            host="127.0.0.1", port=5432, database=postgres_database, username="postgres"
        )
        return parsed.render_as_string(hide_password=False)

    models = REPO / "models" if (REPO / "models").is_dir() else workdir / "models"
    models.mkdir(exist_ok=True)
    mapping = HostMapping(
        hosts={"redis:6379": f"127.0.0.1:{redis_port}"},
        volumes_root=workdir / "volumes",
        image_paths={"/opt/dscm/models": models, "/opt/dscm": REPO / "docker"},
        database_url=database_url,
    )
    for volume in compose["volumes"]:
        (workdir / "volumes" / volume).mkdir(parents=True)
    broker_url = environment(compose["services"]["api"])["DSCM_BROKER_URL"]
    redis_url = broker_url.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
    topo = Topology(workdir, compose, mapping, redis_url, f"http://127.0.0.1:{api_port}", "")
    try:
        # Redis: the compose command, on a free loopback port, its /data volume in a tmp dir.
        redis_cmd = command(compose["services"]["redis"])
        redis_argv = [redis_server, *redis_cmd[1:], "--port", str(redis_port)]
        redis_argv += ["--bind", "127.0.0.1", "--dir", str(workdir / "volumes" / "redis-data")]
        redis = Proc("redis", redis_argv, dict(os.environ), workdir / "redis" / "redis.log")
        topo.procs.append(redis)
        wait_until(lambda: _redis_ping(topo.redis_url), 20, "redis", 0.1, [redis])

        api = topo.start("api", "api", {"8000": api_port})
        check = healthcheck_argv(
            compose["services"]["api"]["healthcheck"]["test"], {"8000": api_port}
        )
        wait_until(lambda: healthy(check), 60, "api /readyz", 0.1, [api])
        topo.api_key = _create_key(topo)
        with ThreadPoolExecutor(2) as pool:
            started = [
                pool.submit(topo.start_worker, "worker-gpu0", "worker-gpu0"),
                pool.submit(topo.start_worker, "worker-cpu", "worker-cpu"),
            ]
            for future in started:
                future.result()
        yield topo
    finally:
        for proc in reversed(topo.procs):
            proc.stop()


def _redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _create_key(topo: Topology) -> str:
    """`docker compose exec api dscm keys create --tenant ...`: the API container's env."""
    env = container_env(topo.service("api"), topo.image("api"), topo.mapping)
    run = subprocess.run(
        [str(VENV_BIN / "dscm"), "keys", "create", "--tenant", TENANT, "--roles", "submit,read"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


# ---- helpers ----


def write_pair(folder: Path, size_px: int, seed: int) -> tuple[Path, Path]:
    """A synthetic confocal-like uint8 pair: textured tissue on the left, dark background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name, gain in (("rcm", 0.5 * 255), ("fcm", 0.35 * 255)):
        look = Texture(periods_px=(7.0, 11.0), tissue_fraction=0.7, speckle_low=0.6, gain=gain)
        pixels = textured_tissue(size_px, size_px, rng, look)
        paths.append(write_uint8_tiff(folder / f"{name}.tif", pixels))
    return paths[0], paths[1]


def submit_pair(client: httpx.Client, pair: tuple[Path, Path]) -> dict[str, Any]:
    """Submit the pair to the chain under test (STAGES); it must be accepted."""
    rcm, fcm = pair
    with rcm.open("rb") as r, fcm.open("rb") as f:
        files = {"rcm": ("rcm.tif", r, "image/tiff"), "fcm": ("fcm.tif", f, "image/tiff")}
        return accepted(submit(client, None, files, {"stages": STAGES}))


def wait_job(
    client: httpx.Client, job_id: str, topo: Topology, timeout_s: float = 90, **want: Any
) -> dict[str, Any]:
    """The job once it matches ``want`` (or, without ``want``, finished); AssertionError with
    the job and the topology's logs after ``timeout_s``."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(read_job(client, None, job_id))
        if want:
            return all(_matches(seen, k, v) for k, v in want.items())
        return seen["state"] in FINISHED

    try:
        wait_until(reached, timeout_s, f"job {job_id} to match {want or FINISHED}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}\n{topo.logs()}") from None
    return seen


def _matches(job: dict[str, Any], key: str, value: Any) -> bool:
    if key == "min_done":
        return bool(job["progress"]["done"] >= value and job["state"] == "running")
    return bool(job.get(key) == value)


def succeeded_attempts(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(
        r'^dscm_job_attempts_finished_total\{outcome="succeeded"\} (\S+)$', text, re.M
    )
    return float(found[1]) if found else 0.0


# ---- tests (in file order: the last one stops the workers) ----


def test_compose_redis_settings_are_live(topology: Topology) -> None:
    import redis

    client = redis.Redis.from_url(topology.redis_url)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    wrong_password = re.sub(r"//:[^@]*@", "//:wrong@", topology.redis_url)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong_password).ping()


def test_stain_a_pair_end_to_end(topology: Topology, tmp_path: Path) -> None:
    pair = write_pair(tmp_path / "pair", 256, seed=1)
    with topology.client() as client:
        job = submit_pair(client, pair)
        done = wait_job(client, job["id"], topology)
        assert done["state"] == "succeeded", f"{done}\n{topology.logs()}"
        assert done["progress"]["percent"] == 100.0 and done["attempts"] == 1
        result = client.get(done["links"]["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/tiff"
        assert done["result"]["sha256"] == hashlib.sha256(result.content).hexdigest()
        (tmp_path / "out.tiff").write_bytes(result.content)
        stained = pyvips.Image.new_from_file(str(tmp_path / "out.tiff"))
        assert (stained.width, stained.height, stained.bands) == (256, 256, 3)
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        metrics = httpx.get(f"{topology.api_url}/metrics", timeout=10).text
        assert re.search(r'^dscm_jobs\{state="succeeded"\} [1-9]', metrics, re.M), metrics[:2000]
    # The durable record is in PostgreSQL (the compose DSCM_DATABASE_URL), not in SQLite.
    import psycopg

    url = topology.mapping.database_url("postgresql://x@postgres/x")
    with psycopg.connect(url) as db:
        row = db.execute("SELECT state, tenant FROM dscm_jobs WHERE id = %s", (job["id"],))
        assert row.fetchone() == ("succeeded", TENANT)
    storage = topology.workdir / "volumes" / "storage"
    assert list((storage / "results" / job["id"]).glob("*.tiff"))
    assert not (storage / "uploads" / job["id"]).exists(), "inputs are purged after success"


def test_two_workers_share_one_queue(topology: Topology, tmp_path: Path) -> None:
    pair = write_pair(tmp_path / "pair", 256, seed=2)
    before = {name: succeeded_attempts(port) for name, (_, port) in topology.workers.items()}
    with topology.client() as client, ThreadPoolExecutor(6) as pool:
        jobs = list(pool.map(lambda _: submit_pair(client, pair), range(8)))
        done = [wait_job(client, job["id"], topology) for job in jobs]
    assert [job["state"] for job in done] == ["succeeded"] * 8, topology.logs()
    # a worker counts an attempt just after the job is marked succeeded (its files cleaned up
    # first), so the counters may trail the job states by a moment
    ports = {name: port for name, (_, port) in topology.workers.items()}
    ran: dict[str, float] = {}

    def counted() -> bool:
        ran.update({name: succeeded_attempts(port) - before[name] for name, port in ports.items()})
        return sum(ran.values()) >= 8

    wait_until(counted, 10, "the workers' attempt counters")
    assert sum(ran.values()) == 8, ran
    assert all(count >= 1 for count in ran.values()), f"one worker did everything: {ran}"


def worker_records(topology: Topology) -> list[dict[str, Any]]:
    """The JSON lines of every worker's output (Celery's start-up banner is plain text)."""
    found = []
    for proc, _ in topology.workers.values():
        for line in proc.log(500_000).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
    return found


def test_worker_logs_are_json_with_the_job_id(topology: Topology) -> None:
    """DSCM_LOG_FORMAT=json (set by the compose file): each job's outcome line names it."""
    records = worker_records(topology)
    assert records, "no JSON log lines: is DSCM_LOG_FORMAT honoured?"
    outcomes = [r for r in records if re.match(r"job \w+ attempt \d+: ", r.get("message", ""))]
    assert outcomes, records[-5:]
    for record in outcomes:
        assert record["job_id"] == record["message"].split()[1], record
        assert {"ts", "level", "logger", "host", "pid"} <= record.keys()
    assert not [r for r in records if r.get("logger") == "pyvips" and r["level"] == "INFO"]


def test_worker_logs_carry_the_tenant(topology: Topology) -> None:
    with_job = [r for r in worker_records(topology) if r.get("job_id")]
    assert any(r.get("tenant") == TENANT for r in with_job), with_job[-5:]


def holder_of(topology: Topology, job_id: str) -> str:
    """The worker whose log shows it received the job's task."""
    found: list[str] = []

    def received() -> bool:
        found[:] = [
            name
            for name, (proc, _) in topology.workers.items()
            if re.search(rf"{job_id}-\w+\] received", proc.log(200_000))
        ]
        return len(found) == 1

    wait_until(received, 30, f"a worker to receive {job_id}", 0.1)
    return found[0]


def grace_period_s(topology: Topology, worker: str) -> float:
    service = "worker-cpu" if worker.startswith("worker-cpu") else "worker-gpu0"
    return duration_s(topology.service(service)["stop_grace_period"])


def test_sigterm_hands_the_running_job_to_another_worker(
    topology: Topology, tmp_path: Path
) -> None:
    """`docker compose stop worker-gpu0` mid-slide (a rolling restart): the worker exits well
    inside its stop_grace_period, the job is queued again without spending an attempt, and the
    other worker finishes it."""
    pair = write_pair(tmp_path / "big", 4096, seed=3)
    with topology.client() as client:
        job = submit_pair(client, pair)
        wait_job(client, job["id"], topology, timeout_s=60, min_done=1)
        busy_name = holder_of(topology, job["id"])
        busy, _ = topology.workers.pop(busy_name)
        (other_name, (_, other_port)), *_ = topology.workers.items()
        before = succeeded_attempts(other_port)
        busy.signal(signal.SIGTERM)
        grace_s = grace_period_s(topology, busy_name)
        stop_s = busy.wait(grace_s)
        assert stop_s is not None, f"still running after {grace_s} s\n{topology.logs()}"
        print(f"{busy_name} stopped {stop_s:.2f} s after SIGTERM (grace period {grace_s:g} s)")
        assert f"job {job['id']} attempt 1: released" in busy.log(200_000), busy.log()
        done = wait_job(client, job["id"], topology, timeout_s=120)
        assert done["state"] == "succeeded" and done["attempts"] == 1, done
        # counted just after the job is marked succeeded: the counter may trail by a moment
        wait_until(
            lambda: succeeded_attempts(other_port) == before + 1,
            10,
            f"{other_name} to count the attempt it finished",
        )
    # compose's restart policy brings the stopped service back; so do we, for the next test.
    service = "worker-cpu" if busy_name.startswith("worker-cpu") else "worker-gpu0"
    topology.start_worker(f"{busy_name}-restarted", service)


def test_stopping_every_worker_leaves_the_job_in_the_queue(
    topology: Topology, tmp_path: Path
) -> None:
    """`docker compose stop` (all workers at once) mid-slide: the job must wait in Redis,
    queued, for the next worker."""
    pair = write_pair(tmp_path / "big", 4096, seed=4)
    with topology.client() as client:
        job = submit_pair(client, pair)
        wait_job(client, job["id"], topology, timeout_s=60, min_done=1)
        workers = dict(topology.workers)
        topology.workers.clear()
        for proc, _ in workers.values():
            proc.signal(signal.SIGTERM)
        for name, (proc, _) in workers.items():
            assert proc.wait(grace_period_s(topology, name)) is not None, name
        released = client.get(f"/v1/jobs/{job['id']}").json()
        assert released["state"] == "queued" and released["attempts"] == 0, released
        import redis

        queue = environment(topology.service("worker-gpu0"))["DSCM_QUEUE_NAME"]
        waiting = redis.Redis.from_url(topology.redis_url).lrange(queue, 0, -1)
        assert any(job["id"].encode() in message for message in waiting), "not in the queue"
