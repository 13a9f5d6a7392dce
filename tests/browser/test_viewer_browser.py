"""The viewer in headless Chromium against a running `dscm serve`: key, tiles, zoom, layers, links.

Screenshots are checked for content (pixel variance) and colour: the stain purple/pink (green
the weakest channel), FCM and RCM gray. With DSCM_SCREENSHOTS_DIR=docs/screenshots a small copy
of each is kept for the documentation.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser_helpers import Server, copy_for_docs, write_tissue_pair
from PIL import Image

WIDTH_PX, HEIGHT_PX, MPP_UM = 2400, 1600, 0.5
DEEPEST_LEVEL = 12  # ceil(log2(2400))

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tissue_pair(tmp_path_factory.mktemp("pair"), WIDTH_PX, HEIGHT_PX, MPP_UM)


@pytest.fixture(scope="module")
def finished_job(server: Server, pair: dict[str, Path]) -> dict[str, Any]:
    job = server.submit(pair, stages="median,gareau", layers="gareau,fcm,rcm")
    done = server.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["layers"] == ["stain", "gareau", "fcm", "rcm"]
    return done


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def wait_drawn(browser: Any) -> None:
    """Until every tile of the current view is drawn and the view is still."""
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.dscmViewer.whenDrawn(45000).then(() => done(true), (e) => done(String(e)));"
    )
    assert browser.execute_script("return document.body.dataset.state") == "ready"


def viewer_pixels(browser: Any, path: Path, for_docs: bool = False) -> np.ndarray:
    """Save a screenshot of the page; return the slide area's central part (no overlays)."""
    from selenium.webdriver.common.by import By

    png = browser.get_screenshot_as_png()
    path.write_bytes(png)
    if for_docs:
        copy_for_docs(path)
    rect = browser.find_element(By.ID, "viewer").rect
    page = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    scale = page.shape[1] / browser.execute_script("return window.innerWidth")
    x0, y0 = int(rect["x"] * scale), int(rect["y"] * scale)
    width, height = int(rect["width"] * scale), int(rect["height"] * scale)
    return page[y0 + height // 5 : y0 + height * 4 // 5, x0 + width // 5 : x0 + width * 4 // 5]


def assert_not_blank(rgb: np.ndarray) -> None:
    assert rgb.std() > 12, f"the view looks blank (std {rgb.std():.1f})"


def assert_stain_colours(rgb: np.ndarray) -> None:
    tissue = rgb[rgb.min(axis=2) < 215]
    assert len(tissue) > 0.2 * rgb.shape[0] * rgb.shape[1], "little tissue in view"
    red, green, blue = tissue.mean(axis=0)
    # Hematoxylin purple and eosin pink both absorb green most: green is the weakest channel.
    assert blue > green + 20 and red > green + 15, (red, green, blue)


def assert_gray(rgb: np.ndarray) -> None:
    spread = np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean()
    assert spread < 4, f"a raw confocal layer should be gray (channel spread {spread:.1f})"


def click_layer(browser: Any, layer: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, f'#layers button[data-layer="{layer}"]').click()
    wait_drawn(browser)
    assert browser.execute_script("return document.body.dataset.layer") == layer


def console_errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_viewer_draws_zooms_and_switches_layers(
    server: Server, browser: Any, finished_job: dict[str, Any], screenshots_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    job_id = finished_job["id"]
    browser.get(f"{server.url}/viewer/{job_id}")
    # No credentials in this tab yet: the page asks for a key, once.
    form = wait_until(lambda: browser.find_element(By.ID, "key-form").is_displayed(), 15, "form")
    assert form
    browser.find_element(By.ID, "key-input").send_keys(server.key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)

    stain = viewer_pixels(browser, screenshots_dir / "viewer-stain.png", for_docs=True)
    assert_not_blank(stain)
    assert_stain_colours(stain)
    header = browser.find_element(By.ID, "job-state").text
    assert header == "succeeded"
    labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#layers button")]
    assert labels == ["Stained", "Gareau", "FCM", "RCM"]
    scale_whole = browser.find_element(By.CSS_SELECTOR, "#scalebar .scalebar-label").text
    assert scale_whole.endswith(("µm", "mm")), scale_whole
    level_whole = browser.execute_script("return window.dscmViewer.maxLevel")

    # Zoom in to full resolution on the tissue.
    browser.execute_script(
        "const v = window.dscmViewer.viewer.viewport;"
        "v.zoomTo(v.getMaxZoom() / 2, v.getCenter(), true); v.applyConstraints(true);"
    )
    wait_drawn(browser)
    level_zoomed = browser.execute_script("return window.dscmViewer.maxLevel")
    assert level_zoomed == DEEPEST_LEVEL > level_whole
    zoomed = viewer_pixels(browser, screenshots_dir / "viewer-stain-zoomed.png", for_docs=True)
    assert_not_blank(zoomed)
    assert_stain_colours(zoomed)
    scale_zoomed = browser.find_element(By.CSS_SELECTOR, "#scalebar").get_attribute(
        "data-length-um"
    )
    scale_whole_um = float(scale_whole.split()[0]) * (1000 if scale_whole.endswith("mm") else 1)
    assert float(scale_zoomed) < scale_whole_um
    bounds = browser.execute_script("return window.dscmViewer.viewer.viewport.getBounds()")

    # Switch layers at the same place: raw FCM and RCM are gray, Gareau is stained.
    click_layer(browser, "fcm")
    fcm = viewer_pixels(browser, screenshots_dir / "viewer-fcm.png", for_docs=True)
    assert_not_blank(fcm)
    assert_gray(fcm)
    after = browser.execute_script("return window.dscmViewer.viewer.viewport.getBounds()")
    assert abs(after["x"] - bounds["x"]) < 1e-3 and abs(after["width"] - bounds["width"]) < 1e-3
    click_layer(browser, "rcm")
    rcm = viewer_pixels(browser, screenshots_dir / "viewer-rcm.png")
    assert_not_blank(rcm)
    assert_gray(rcm)
    assert np.abs(rcm - fcm).mean() > 10  # a different image, not the same layer again
    click_layer(browser, "gareau")
    gareau = viewer_pixels(browser, screenshots_dir / "viewer-gareau.png")
    assert_stain_colours(gareau)

    assert browser.execute_script("return window.dscmViewer.errors") == []
    assert console_errors(browser) == []


def test_signed_link_opens_the_viewer_without_a_key(
    server: Server, browser: Any, finished_job: dict[str, Any], screenshots_dir: Path
) -> None:
    import httpx
    from selenium.webdriver.common.by import By

    link = httpx.post(
        f"{server.url}/v1/jobs/{finished_job['id']}/viewer-link", headers=server.auth, timeout=10
    ).json()
    browser.get(f"{server.url}/viewer")  # same origin, so this tab's storage can be cleared
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}{link['url']}")
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)
    assert "#" not in browser.current_url  # the token left the address bar
    assert not browser.find_element(By.ID, "key-form").is_displayed()
    assert not browser.find_element(By.ID, "share").is_displayed()  # a link cannot make links
    assert_stain_colours(viewer_pixels(browser, screenshots_dir / "viewer-link.png"))


def test_running_job_shows_progress_then_tiles(
    server: Server,
    browser: Any,
    pair: dict[str, Path],
    finished_job: dict[str, Any],
    screenshots_dir: Path,
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/viewer")
    browser.execute_script("sessionStorage.setItem('dscm.apiKey', arguments[0])", server.key)
    # The embedded worker runs one job at a time: the second job waits behind the first.
    first = server.submit(pair, stages="median,gareau", layers="gareau,fcm,rcm")
    second = server.submit(pair, stages="median,gareau")
    browser.get(f"{server.url}/viewer/{second['id']}")
    wait_until(
        lambda: (
            browser.execute_script("return document.body.dataset.state") in ("queued", "running")
        ),
        10,
        "the job's state",
    )
    assert browser.find_element(By.ID, "progress-wrap").is_displayed()
    assert browser.find_element(By.ID, "job-state").text in ("queued", "running")
    path = screenshots_dir / "viewer-waiting.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)
    wait_until(
        lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 180, "the result"
    )
    wait_drawn(browser)
    assert browser.find_element(By.ID, "job-state").text == "succeeded"
    assert not browser.find_element(By.ID, "progress-wrap").is_displayed()
    assert server.job(first["id"])["state"] == "succeeded"


def test_job_list_shows_the_tenants_jobs(
    server: Server, browser: Any, finished_job: dict[str, Any], screenshots_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/viewer")
    browser.execute_script("sessionStorage.setItem('dscm.apiKey', arguments[0])", server.key)
    browser.refresh()
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.state") == "ready", 15, "list"
    )
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{finished_job["id"]}"]')
    assert "succeeded" in row.text and "rcm.tif + fcm.tif" in row.text
    link = row.find_element(By.LINK_TEXT, "View")
    assert link.get_attribute("href").endswith(f"/viewer/{finished_job['id']}")
    path = screenshots_dir / "jobs.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)
    link.click()
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)
