"""Browser test helpers: a confocal-like synthetic pair, the running server, screenshot copies."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("DSCM_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DSCM_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))


def write_tissue_pair(
    folder: Path, width_px: int, height_px: int, mpp_um: float
) -> dict[str, Path]:
    """A confocal-like pair: nuclei bright in FCM, fibres in RCM, tissue in an ellipse."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    cx, cy = width_px / 2, height_px / 2
    wobble = 1 + 0.08 * np.sin(np.arctan2(yy - cy, xx - cx) * 5)
    inside = ((xx - cx) / (0.42 * width_px)) ** 2 + ((yy - cy) / (0.4 * height_px)) ** 2
    tissue = (inside < wobble**2).astype(np.float32)
    fcm = np.full((height_px, width_px), 0.12, np.float32)
    count = width_px * height_px // 900
    for x, y, radius_px, value in zip(
        rng.uniform(0, width_px, count),
        rng.uniform(0, height_px, count),
        rng.uniform(3, 7, count),
        rng.uniform(0.55, 0.95, count),
        strict=True,
    ):
        x0, x1 = int(max(0, x - radius_px - 1)), int(min(width_px, x + radius_px + 2))
        y0, y1 = int(max(0, y - radius_px - 1)), int(min(height_px, y + radius_px + 2))
        disc = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= radius_px**2
        fcm[y0:y1, x0:x1][disc] = value
    fibres = 0.45 + 0.2 * np.sin(xx / 11 + 3 * np.sin(yy / 37)) * np.cos(yy / 17)
    rcm = fibres * rng.uniform(0.6, 1.0, fibres.shape)  # speckle
    resolution = (1e4 / mpp_um, 1e4 / mpp_um)
    paths = {}
    for name, image in (("rcm", rcm * tissue), ("fcm", fcm * tissue)):
        paths[name] = folder / f"{name}.tif"
        tifffile.imwrite(
            paths[name],
            (np.clip(image, 0, 1) * 255).astype(np.uint8),
            resolution=resolution,
            resolutionunit="CENTIMETER",
        )
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
