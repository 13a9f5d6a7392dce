"""A real Orthanc PACS for the tests: DICOMweb and whole-slide plugins, loopback only, unprivileged.

Debian's packages (``orthanc``, ``orthanc-dicomweb``, ``orthanc-wsi``; installed by ``.ci/run``).
A test folder holds its configuration, its storage and a plugins folder with only the two
plugins, so nothing of a system-wide Orthanc is touched. Use it from a session fixture::

    @pytest.fixture(scope="session")
    def orthanc(tmp_path_factory):
        yield from orthanc_running(tmp_path_factory)

and call ``orthanc.clear()`` where a test needs an empty archive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.polling import wait_until
from support.ports import free_port
from support.processes import Proc

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
PLUGINS_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancWSI.so")
START_TIMEOUT_S = 30.0


def require_orthanc() -> None:
    """Skip (with the reason) where Orthanc or its plugins are not installed."""
    if not ORTHANC_BINARY.exists():
        pytest.skip(
            f"{ORTHANC_BINARY} is missing: apt-get install orthanc orthanc-dicomweb orthanc-wsi"
        )
    missing = [name for name in PLUGINS if not (PLUGINS_DIR / name).exists()]
    if missing:
        pytest.skip(f"Orthanc plugins missing from {PLUGINS_DIR}: {', '.join(missing)}")


@dataclass
class Orthanc:
    """One Orthanc process on a loopback port, its storage under ``root``.

    ``users`` (name -> password) turns HTTP basic authentication on; without it Orthanc
    answers anyone on loopback (it never listens elsewhere: RemoteAccessAllowed is false).
    ``dicom`` also opens a DICOM (C-STORE) port on loopback, AE title ``ORTHANC``.
    """

    root: Path
    users: dict[str, str] = field(default_factory=dict)
    dicom: bool = False
    http_port: int = field(default_factory=free_port)
    dicom_port: int | None = None
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (STOW-RS: POST {dicomweb_url}/studies)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)

    def _write_config(self) -> Path:
        plugins = self.root / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        for name in PLUGINS:
            link = plugins / name
            if not link.exists():
                link.symlink_to((PLUGINS_DIR / name).resolve())
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        if self.dicom and self.dicom_port is None:
            self.dicom_port = free_port()
        config: dict[str, Any] = {
            "Name": "dscm-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomServerEnabled": self.dicom,
            "DicomPort": self.dicom_port or 0,
            "DicomAet": "ORTHANC",
            "Plugins": [str(plugins)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpTimeout": 30,
            # Every instance is kept as sent: no transcoding, no compression on disk.
            "StorageCompression": False,
            "OverwriteInstances": True,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> Orthanc:
        """Start it (again, on the same port and storage) and wait until /system answers."""
        require_orthanc()
        config = self._write_config()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)}
        self.proc = Proc(
            "orthanc", [str(ORTHANC_BINARY), str(config)], env, self.root / "orthanc.log"
        )
        try:
            wait_until(self._answers, START_TIMEOUT_S, "Orthanc", interval_s=0.1, watch=[self.proc])
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(f"Orthanc did not start: {exc}") from None
        return self

    def _answers(self) -> bool:
        try:
            return self.get("/system").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace_s=10)

    def kill(self) -> None:
        """SIGKILL: as a crash or a power cut (a STOW in flight is cut off)."""
        if self.proc is not None:
            self.proc.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    # ---- reading it back ----

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=30)

    def json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        response.raise_for_status()
        return response.json()

    def instance_uids(self) -> list[str]:
        """The SOP Instance UID of every instance stored, one entry per stored copy."""
        uids = []
        for orthanc_id in self.json("/instances"):
            tags = self.json(f"/instances/{orthanc_id}/simplified-tags")
            uids.append(str(tags["SOPInstanceUID"]))
        return uids

    def series_instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of one series, through DICOMweb QIDO-RS."""
        response = httpx.get(
            f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances",
            auth=self.auth,
            timeout=30,
        )
        if response.status_code == 204 or not response.content:
            return []
        response.raise_for_status()
        return [str(item["00080018"]["Value"][0]) for item in response.json()]

    def clear(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient in self.json("/patients"):
            httpx.delete(f"{self.url}/patients/{patient}", auth=self.auth, timeout=30)


def orthanc_running(tmp_path_factory: pytest.TempPathFactory, **options: Any) -> Iterator[Orthanc]:
    """For a (session) fixture: a started Orthanc, stopped afterwards; skipped without one."""
    require_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), **options).start()
    try:
        yield server
    finally:
        server.stop()
