"""Browser test helpers: a confocal-like synthetic pair, the running server, screenshot copies."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("DSCM_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DSCM_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))


@dataclass
class Server:
    url: str
    key: str
    tenant: str
    root: Path
    popen: subprocess.Popen[bytes]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def submit(self, pair: dict[str, Path], **fields: str) -> dict[str, Any]:
        files = {name: (path.name, path.read_bytes(), "image/tiff") for name, path in pair.items()}
        answer = httpx.post(
            f"{self.url}/v1/jobs", files=files, data=fields, headers=self.auth, timeout=60
        )
        assert answer.status_code == 202, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.auth, timeout=10)
        body: dict[str, Any] = answer.json()
        return body

    def wait(self, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (job := self.job(job_id))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job still {job['state']}"
            time.sleep(0.2)
        return job

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def copy_for_docs(source: Path) -> None:
    """With DSCM_SCREENSHOTS_DIR set (docs/screenshots), keep a small copy of a screenshot."""
    target_dir = os.environ.get("DSCM_SCREENSHOTS_DIR")
    if not target_dir:
        return
    from PIL import Image

    Path(target_dir).mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        small = image.convert("RGB")
        small.thumbnail((800, 800))
        small = small.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        small.save(Path(target_dir) / source.name, optimize=True)
