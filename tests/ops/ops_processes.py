"""The compose topology as plain processes: each service started from its compose entry, with
the environment the container would get (image ENV + compose environment), its hosts, ports and
volumes mapped onto this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops_compose import REPO, Dockerfile, command, environment

VENV_BIN = Path(sys.executable).parent
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child in its own process group, its output in a file; stop() ends the whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name, self.argv = name, argv
        self.log_path = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail_chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail_chars:]

    def signal(self, sig: int) -> None:
        """To the main process only, as `docker stop` does to PID 1's child via init."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float) -> float | None:
        """Seconds until it exited, None if it is still running after ``timeout_s``."""
        started = time.monotonic()
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL after ``grace_s``; safe to call twice."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if not self.alive:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
            self.wait(wait_s)
        # Children left in the group (there should be none) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def wait_until(
    what: str, ready: Callable[[], bool], timeout_s: float, procs: list[Proc] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for proc in procs or []:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log()}" for p in procs or [])
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")
        time.sleep(0.1)


@dataclass
class HostMapping:
    """Where a container's hosts, ports and paths are on this machine."""

    hosts: dict[str, str]  # "redis:6379" -> "127.0.0.1:40123"
    volumes_root: Path  # named volume "storage" -> volumes_root / "storage"
    image_paths: dict[str, Path]  # "/opt/dscm/models" -> repo models/
    database_url: Callable[[str], str]  # rewrites the compose DSCM_DATABASE_URL
    ports: dict[str, int] = field(default_factory=dict)  # "8000" (in the container) -> host port

    def path(self, value: str, volumes: list[str]) -> str:
        for volume in volumes:
            name, _, mount = volume.partition(":")
            mount = mount.split(":")[0]
            if value == mount or value.startswith(mount + "/"):
                return str(self.volumes_root / name) + value[len(mount) :]
        for inside, outside in self.image_paths.items():
            if value == inside or value.startswith(inside + "/"):
                return str(outside) + value[len(inside) :]
        return value


def container_env(
    service: dict[str, Any], image: Dockerfile, mapping: HostMapping
) -> dict[str, str]:
    """The variables a container of ``service`` sees, mapped onto this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCM_")}
    image_env = image.env()
    image_env.pop("PATH", None)  # the image's venv is ours
    values = {**image_env, **environment(service)}
    volumes = list(service.get("volumes", []))
    for key, value in values.items():
        if key == "DSCM_DATABASE_URL":
            value = mapping.database_url(value)
        for inside, outside in mapping.hosts.items():
            value = value.replace(f"@{inside}/", f"@{outside}/")
        if key.endswith("_PORT") and value in mapping.ports:
            value = str(mapping.ports[value])
        env[key] = mapping.path(value, volumes) if value.startswith("/") else value
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def container_argv(service: dict[str, Any], image: Dockerfile, ports: dict[str, int]) -> list[str]:
    """The service's command (or the image CMD), run from our venv, bound to loopback."""
    argv = command(service) or _exec_form(image.final.all("CMD")[-1])
    argv = [str(VENV_BIN / argv[0]) if (VENV_BIN / argv[0]).exists() else argv[0], *argv[1:]]
    out: list[str] = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if previous == "--host" and arg == "0.0.0.0":
            arg = "127.0.0.1"  # tests listen on loopback only
        elif previous == "--port" and arg in ports:
            arg = str(ports[arg])
        out.append(arg)
    return out


def healthcheck_argv(test: list[str], ports: dict[str, int]) -> list[str]:
    """A compose healthcheck test (["CMD", "python", "/opt/dscm/healthcheck.py", URL])."""
    assert test[0] == "CMD" and test[1] == "python" and test[2] == "/opt/dscm/healthcheck.py"
    url = test[3]
    for inside, outside in ports.items():
        url = url.replace(f"127.0.0.1:{inside}/", f"127.0.0.1:{outside}/")
    return [sys.executable, str(HEALTHCHECK_SCRIPT), url]


def healthy(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=15).returncode == 0


def _exec_form(cmd: str) -> list[str]:
    import json

    parsed = json.loads(cmd)
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]
