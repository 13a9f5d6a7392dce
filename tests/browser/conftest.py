"""Browser tests: a real `dscm serve` (uvicorn, embedded worker) and headless Debian Chromium.

Skipped cleanly when /usr/bin/chromium, /usr/bin/chromedriver or the selenium package is
missing. Chromium is driven through chromedriver only; no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_helpers import CHROMEDRIVER, CHROMIUM, REPO, Server
from onnx_factory import make_eraser_generator
from support.ports import free_port

from service.api.auth import hash_key, new_key

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,860",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = f"needs Debian chromium + chromium-driver ({CHROMIUM}, {CHROMEDRIVER})"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            reason = "needs the selenium package"
    if reason:
        for item in items:
            if "tests/browser" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser-server")
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


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")
