"""The compose topology as plain processes: each service started from its compose entry, with
the environment the container would get (image ENV + compose environment), its hosts, ports and
volumes mapped onto this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops_compose import REPO, Dockerfile, command, environment

VENV_BIN = Path(sys.executable).parent
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"


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
