"""Browser test helpers: the running server (`dscm serve` in a subprocess), screenshot copies."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from onnx_factory import make_eraser_generator
from support.api import accepted, bearer, read_job, submit, wait_for
from support.polling import wait_until
from support.ports import free_port
from support.processes import Proc

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
    proc: Proc

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.key)

    def client(self, timeout_s: float = 60) -> httpx.Client:
        """An HTTP client of the server (the caller closes it)."""
        return httpx.Client(base_url=self.url, timeout=timeout_s)

    def submit(self, pair: dict[str, Path], **fields: str) -> dict[str, Any]:
        """Submit the pair with the form ``fields``; it must be accepted."""
        files = {name: (path.name, path.read_bytes(), "image/tiff") for name, path in pair.items()}
        with self.client() as client:
            return accepted(submit(client, self.key, files, fields))

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as the API shows it now."""
        with self.client() as client:
            return read_job(client, self.key, job_id)

    def wait(self, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """The job once it finished; fails early if the server exits."""
        with self.client() as client:
            return wait_for(client, self.key, job_id, timeout_s=timeout_s, watch=[self.proc])

    def log(self) -> str:
        return self.proc.output()


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
    ``extra_env`` adds or overrides DSCM_ settings (destinations, dispatcher timing, models)."""
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
    )
    env.update(extra_env)  # may replace the defaults above (the real models, another tile size)
    port = free_port()
    argv = [sys.executable, "-m", "service.cli", "serve", "--host=127.0.0.1", f"--port={port}"]
    proc = Proc("server", argv, env, root / "server.log", cwd=REPO)
    running = Server(f"http://127.0.0.1:{port}", key, "st-marys", root, proc)
    try:
        wait_until(lambda: _live(running.url), 60, "/livez", interval_s=0.1, watch=[proc])
        yield running
    finally:
        proc.stop(grace_s=15)


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# The share of the drawn view's pixels that are coloured (the stain), not grey (the
# placeholder) nor white (glass): read from OpenSeadragon's canvas, cheaper than a screenshot.
STAINED_FRACTION = """
const viewer = window.dscmViewer && window.dscmViewer.viewer;
if (!viewer || !viewer.drawer || !viewer.drawer.canvas) return 0;
const canvas = viewer.drawer.canvas;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let coloured = 0;
for (let i = 0; i < data.length; i += 4) {
  const high = Math.max(data[i], data[i + 1], data[i + 2]);
  const low = Math.min(data[i], data[i + 1], data[i + 2]);
  if (high - low > 40) coloured += 1;
}
return coloured / (data.length / 4);
"""
