"""Browser test helpers: the running server (`dscm serve` in a subprocess), screenshot copies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from onnx_factory import make_eraser_generator
from support.polling import wait_until
from support.ports import free_port

from service.api.auth import hash_key, new_key

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


def wait_drawn(browser: Any) -> None:
    """Until every tile of the current view is drawn and the view is still."""
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.dscmViewer.whenDrawn(45000).then(() => done(true), (e) => done(String(e)));"
    )
    assert browser.execute_script("return document.body.dataset.state") == "ready"


def sign_in(browser: Any, server: Server, path: str = "/viewer") -> None:
    """Open ``path`` and put the API key in the tab's session storage, as the key form does."""
    browser.get(f"{server.url}{path}")
    browser.execute_script("sessionStorage.setItem('dscm.apiKey', arguments[0])", server.key)


def open_job_list(browser: Any, server: Server) -> None:
    """The job list as a signed-in user sees it, once it is drawn."""
    sign_in(browser, server)
    browser.refresh()
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.state") == "ready", 15, "list"
    )


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


@contextlib.contextmanager
def running_server(root: Path, **extra_env: str) -> Iterator[Server]:
    """`dscm serve` (embedded worker) for the tenant st-marys, its storage under ``root``;
    ``extra_env`` adds or overrides DSCM_ settings (destinations, dispatcher timing)."""
    key_id, key = new_key()
    entry = {
        "id": key_id,
        "tenant": "st-marys",
        "roles": ["submit", "read"],
        "sha256": hash_key(key),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCM_")}
    env.update(
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        DSCM_STORAGE_DIR=str(root / "storage"),
        # no model runs by default; a nuclei-erasing generator is there for the faithfulness
        # flag, when a job asks for it (its card keeps it out of the default chain)
        DSCM_MODELS_DIR=str(make_eraser_generator(root / "models").parent),
        DSCM_API_KEYS=json.dumps([entry]),
        DSCM_TILE_PX="512",
        DSCM_THREADS="1",
        DSCM_VIEWER_SECRET="browser-test-secret-" + "x" * 20,
        **extra_env,
    )
    port = free_port()
    with (root / "server.log").open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host=127.0.0.1", f"--port={port}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Server(f"http://127.0.0.1:{port}", key, "st-marys", root, popen)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert popen.poll() is None, f"the server exited:\n{running.log()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{running.url}/livez", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no /livez:\n{running.log()[-3000:]}"
            time.sleep(0.1)
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
