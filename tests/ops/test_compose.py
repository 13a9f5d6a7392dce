"""The compose topology, checked offline: Debian's docker-compose (v1) where installed, and the
rules of issue 5 on the parsed files always."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose files (pip install pyyaml)")

from ops_compose import (  # noqa: E402 (after the importorskip)
    COMPOSE_FILE,
    DOCKERFILES,
    ENV_EXAMPLE,
    REPO,
    WORKER_OVERRIDE,
    MissingVariable,
    command,
    duration_s,
    environment,
    load_compose,
    parse_dockerfile,
    required_variables,
)

SECRETS = {"REDIS_PASSWORD": "redis-secret-1", "POSTGRES_PASSWORD": "pg-secret-2"}
REMOTE = {"DSCM_MAIN_HOST": "10.9.8.7", "DSCM_NFS_SERVER": "10.9.8.6", "DSCM_NFS_EXPORT": "/x"}
WORKERS = ("worker-gpu0", "worker-cpu")
DOCKER_DEFAULT_STOP_S = 10.0


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_compose(SECRETS)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# ---- docker-compose itself (needs the binary, not an engine) ----


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    return found


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose with only ``env_file`` as its variables (no developer .env or shell)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DSCM_", "REDIS_", "POST"))}
    return subprocess.run(
        [compose_binary(), "--env-file", str(env_file), *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "--profile", "cpu"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.worker.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.worker.yml", "--profile", "remote"],
    ],
    ids=["base", "cpu-profile", "worker-override", "worker-override-remote"],
)
def test_docker_compose_config_validates(args: list[str], tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "env", {**SECRETS, **REMOTE})
    run = run_compose(env_file, *args, "config", "-q")
    assert run.returncode == 0, run.stderr


def test_docker_compose_refuses_unset_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    shutil.copyfile(ENV_EXAMPLE, env_file)  # as shipped: the secrets are empty
    run = run_compose(env_file, "-f", "docker-compose.yml", "config", "-q")
    assert run.returncode != 0
    assert "set REDIS_PASSWORD in .env" in run.stderr or "POSTGRES_PASSWORD" in run.stderr
    override = write_env(tmp_path / "env2", SECRETS)
    args = ["-f", "docker-compose.yml", "-f", "docker-compose.worker.yml", "config", "-q"]
    run = run_compose(override, *args)
    assert run.returncode != 0 and "DSCM_MAIN_HOST" in run.stdout + run.stderr


def test_our_interpolation_matches_docker_compose(tmp_path: Path) -> None:
    """The topology test reads the compose file through ops_compose; prove it reads it right."""
    env_file = write_env(tmp_path / "env", {**SECRETS, "DSCM_TILE_PX": "64"})
    run = run_compose(env_file, "-f", "docker-compose.yml", "--profile", "cpu", "config")
    assert run.returncode == 0, run.stderr
    theirs = yaml.safe_load(run.stdout)["services"]
    ours = services(load_compose({**SECRETS, "DSCM_TILE_PX": "64"}))
    assert set(theirs) == set(ours)
    for name, service in ours.items():
        assert environment(theirs[name]) == environment(service), name
        assert command(theirs[name]) == command(service), name
        assert theirs[name].get("image") == service.get("image"), name


# ---- the rules, on the parsed files ----


def test_unset_secrets_fail_in_every_service_that_needs_them() -> None:
    assert {"REDIS_PASSWORD", "POSTGRES_PASSWORD"} <= required_variables(COMPOSE_FILE)
    for name in SECRETS:
        with pytest.raises(MissingVariable, match=name):
            load_compose({k: v for k, v in SECRETS.items() if k != name})
        with pytest.raises(MissingVariable, match=name):
            load_compose({**SECRETS, name: ""})  # ":?" refuses an empty value too


def test_no_literal_credentials(base: dict[str, Any]) -> None:
    raw = COMPOSE_FILE.read_text() + WORKER_OVERRIDE.read_text()
    for url in re.findall(r"\w+(?:\+\w+)?://[^\s\"]+", raw):
        credentials = url.split("://", 1)[1].split("@", 1)
        if len(credentials) == 2:
            assert "${" in credentials[0], f"credentials in {url} are not a variable"
    assert "pg-secret-2" in environment(services(base)["api"])["DSCM_DATABASE_URL"]


def test_redis_is_durable_and_never_evicts_jobs(base: dict[str, Any]) -> None:
    redis = services(base)["redis"]
    cmd = command(redis)
    assert cmd[0] == "redis-server"
    options = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--requirepass"] == SECRETS["REDIS_PASSWORD"]
    assert "redis-data:/data" in redis["volumes"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert environment(redis)["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_postgres_keeps_its_data_in_a_volume(base: dict[str, Any]) -> None:
    postgres = services(base)["postgres"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "postgres-data" in base["volumes"]


def test_every_service_has_a_healthcheck_and_waits_for_healthy_deps(
    base: dict[str, Any],
) -> None:
    for name, service in services(base).items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
        if name in ("redis", "postgres", "orthanc"):  # orthanc: the trial PACS, stand-alone
            continue
        deps = service["depends_on"]
        assert deps == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }, name


def test_images_and_compose_agree_on_healthchecks(base: dict[str, Any]) -> None:
    api_image = parse_dockerfile(DOCKERFILES["api"])
    worker_image = parse_dockerfile(DOCKERFILES["worker"])
    api_check = services(base)["api"]["healthcheck"]["test"]
    assert " ".join(api_check[1:]) in api_image.final.all("HEALTHCHECK")[0].replace('", "', " ")
    gpu_check = services(base)["worker-gpu0"]["healthcheck"]["test"]
    assert " ".join(gpu_check[1:]) in worker_image.final.all("HEALTHCHECK")[0].replace('", "', " ")
    for name in WORKERS:
        port = environment(services(base)[name])["DSCM_WORKER_METRICS_PORT"]
        assert f"127.0.0.1:{port}/metrics" in services(base)[name]["healthcheck"]["test"][-1]


def test_gpu_worker_reserves_one_nvidia_gpu_and_runs_solo(base: dict[str, Any]) -> None:
    worker = services(base)["worker-gpu0"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    cmd = command(worker)
    assert cmd[:2] == ["dscm", "worker"]
    assert cmd[cmd.index("--pool") + 1] == "solo" and cmd[cmd.index("--concurrency") + 1] == "1"
    assert "profiles" not in worker


def test_cpu_worker_is_an_optional_profile_on_the_api_image(base: dict[str, Any]) -> None:
    worker, api = services(base)["worker-cpu"], services(base)["api"]
    assert worker["profiles"] == ["cpu"]
    assert worker["image"] == api["image"] and worker["build"] == api["build"]
    assert "deploy" not in worker
    cmd = command(worker)
    assert cmd[:2] == ["dscm", "worker"] and cmd[cmd.index("--pool") + 1] == "solo"


def test_workers_outlive_their_soft_shutdown(base: dict[str, Any]) -> None:
    """docker stop sends SIGTERM, then SIGKILL after stop_grace_period; the worker needs the time
    to stop at a tile boundary and queue its job again (measured in test_topology.py)."""
    for name in WORKERS:
        worker = services(base)[name]
        assert duration_s(worker["stop_grace_period"]) >= 60.0, name
        assert worker["init"] is True, f"{name}: PID 1 must forward SIGTERM"
    api = services(base)["api"]
    assert duration_s(api["stop_grace_period"]) > DOCKER_DEFAULT_STOP_S


def test_api_and_workers_share_one_storage_volume(base: dict[str, Any]) -> None:
    assert "storage" in base["volumes"]
    for name in ("api", *WORKERS):
        service = services(base)[name]
        assert "storage:/data" in service["volumes"], name
        assert environment(service)["DSCM_STORAGE_DIR"] == "/data", name
    api = services(base)["api"]
    assert "api-keys:/keys" in api["volumes"]
    assert environment(api)["DSCM_API_KEYS_FILE"].startswith("/keys/")
    for name in WORKERS:
        assert "api-keys:/keys" not in services(base)[name]["volumes"]


def test_published_ports_default_to_loopback() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert re.match(r"^\$\{[A-Z_]+_BIND:-127\.0\.0\.1\}:", port), f"{name}: {port}"


def test_env_example_documents_every_variable() -> None:
    example = ENV_EXAMPLE.read_text()
    raw = COMPOSE_FILE.read_text() + WORKER_OVERRIDE.read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw))
    documented = set(re.findall(r"^#? ?([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert used <= documented, sorted(used - documented)
    for name in required_variables(COMPOSE_FILE):
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} must be set, empty"


def test_remote_workers_are_the_base_workers_pointed_at_the_main_host(
    base: dict[str, Any],
) -> None:
    override = load_compose({**SECRETS, **REMOTE}, WORKER_OVERRIDE)
    assert override["volumes"]["storage"]["driver_opts"]["type"] == "nfs"
    pairs = {"worker-remote-gpu0": "worker-gpu0", "worker-remote-cpu": "worker-cpu"}
    assert set(services(override)) == set(pairs)
    for remote_name, local_name in pairs.items():
        remote, local = services(override)[remote_name], services(base)[local_name]
        assert remote["profiles"] == ["remote"] and "depends_on" not in remote
        for key in ("image", "build", "healthcheck", "stop_grace_period", "init", "volumes"):
            assert remote[key] == local[key], f"{remote_name}.{key}"
        assert remote.get("deploy") == local.get("deploy"), remote_name
        assert command(remote) == command(local), remote_name
        remote_env, local_env = environment(remote), environment(local)
        for url in ("DSCM_BROKER_URL", "DSCM_DATABASE_URL"):
            assert "@10.9.8.7:" in remote_env.pop(url) and local_env.pop(url)
        assert remote_env == local_env, remote_name
