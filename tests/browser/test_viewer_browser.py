"""The viewer in headless Chromium against a running `dscm serve`: key, tiles, zoom, layers, links.

Screenshots are checked for content (pixel variance) and colour: the stain purple/pink (green
the weakest channel), FCM and RCM gray. With DSCM_SCREENSHOTS_DIR=docs/screenshots a small copy
of each is kept for the documentation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser_helpers import Server, copy_for_docs, open_job_list, sign_in, wait_drawn
from PIL import Image
from support.pairs import write_tissue_pair
from support.polling import wait_until

WIDTH_PX, HEIGHT_PX, MPP_UM = 2400, 1600, 0.5
DEEPEST_LEVEL = 12  # ceil(log2(2400))
LABEL, EXTERNAL_ID = "Left cheek, margin 3 o'clock", "S24-01234"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tissue_pair(tmp_path_factory.mktemp("pair"), WIDTH_PX, HEIGHT_PX, MPP_UM)


@pytest.fixture(scope="module")
def finished_job(server: Server, pair: dict[str, Path]) -> dict[str, Any]:
    job = server.submit(
        pair,
        stages="median,gareau",
        layers="gareau,fcm,rcm",
        label=LABEL,
        external_id=EXTERNAL_ID,
    )
    done = server.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["layers"] == ["stain", "gareau", "fcm", "rcm"]
    return done


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
    # The case, not the scanner's file names, names the slide.
    assert browser.find_element(By.ID, "job-title").text == LABEL
    assert browser.find_element(By.ID, "job-external-id").text == EXTERNAL_ID
    assert "rcm.tif + fcm.tif" in browser.find_element(By.ID, "job-title").get_attribute("title")
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


def test_a_signed_link_opens_the_slide_in_compare_mode(
    server: Server, browser: Any, finished_job: dict[str, Any]
) -> None:
    """A link made with a view opens on it in a clean tab: side by side with FCM, then (an
    address with the view in its query) the FCM layer under a swipe over the stain."""
    import httpx
    from selenium.webdriver.common.by import By

    link = httpx.post(
        f"{server.url}/v1/jobs/{finished_job['id']}/viewer-link",
        json={"compare": "side", "compare_with": "fcm"},
        headers=server.auth,
        timeout=10,
    ).json()
    assert "?compare=side&with=fcm#token=" in link["url"]
    browser.get(f"{server.url}/viewer")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.url}{link['url']}")
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-compare") == "side"
    assert browser.find_element(By.ID, "viewer-b").is_displayed()
    captions = [browser.find_element(By.ID, f"caption-{n}").text for n in ("a", "b")]
    assert captions == ["Stained", "FCM"]
    assert "#" not in browser.current_url and "compare=side" in browser.current_url
    png = browser.get_screenshot_as_png()
    assert_stain_colours(region(browser, png, "viewer", 0.2, 0.8))
    assert_gray(region(browser, png, "viewer-b", 0.2, 0.8))
    # The same tab (the link's token is in its storage), another view by address.
    browser.get(f"{server.url}/viewer/{finished_job['id']}?layer=fcm&compare=swipe&with=stain")
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-compare") == "swipe"
    assert browser.execute_script("return window.dscmViewer.layer") == "fcm"
    assert browser.execute_script("return window.dscmViewer.compare.state.layer") == "stain"
    assert browser.find_element(By.ID, "divider").is_displayed()
    assert browser.execute_script("return window.dscmViewer.errors") == []


def test_running_job_shows_progress_then_tiles(
    server: Server,
    browser: Any,
    pair: dict[str, Path],
    finished_job: dict[str, Any],
    screenshots_dir: Path,
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, server)
    # The embedded worker runs one job at a time: the second job waits behind the first.
    first = server.submit(pair, stages="median,gareau", layers="gareau,fcm,rcm")
    second = server.submit(pair, stages="median,gareau")
    browser.get(f"{server.url}/viewer/{second['id']}")
    wait_until(
        lambda: browser.find_element(By.ID, "job-state").text in ("queued", "running"),
        10,
        "the job's state",
    )
    assert browser.find_element(By.ID, "progress-wrap").is_displayed()
    assert browser.find_element(By.ID, "job-state").text in ("queued", "running")
    # progress in words a surgeon reads, as one percentage of the whole job
    words = ("waiting for a worker", "preparing", "measuring", "staining", "building", "finishing")
    text = browser.find_element(By.ID, "progress-text").text
    assert text.startswith(words), text
    assert "/" not in text and "statistics" not in text  # no internal stage names or counters
    path = screenshots_dir / "viewer-waiting.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)
    # The slide is shown while it runs (issue 20), then the published pyramid takes its place.
    published = "const v = window.dscmViewer; return v.source === 'published' && !v.swapping"
    wait_until(lambda: browser.execute_script(published), 180, "the result")
    wait_drawn(browser)
    assert browser.find_element(By.ID, "job-state").text == "succeeded"
    assert not browser.find_element(By.ID, "progress-wrap").is_displayed()
    assert server.job(first["id"])["state"] == "succeeded"


def test_job_list_shows_the_tenants_jobs(
    server: Server, browser: Any, finished_job: dict[str, Any], screenshots_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_job_list(browser, server)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{finished_job["id"]}"]')
    assert "succeeded" in row.text and "rcm.tif + fcm.tif" in row.text
    case = row.find_element(By.CSS_SELECTOR, "td.case").text.splitlines()
    assert case == [LABEL, EXTERNAL_ID, "rcm.tif + fcm.tif"]
    link = row.find_element(By.LINK_TEXT, "View")
    assert link.get_attribute("href").endswith(f"/viewer/{finished_job['id']}")
    path = screenshots_dir / "jobs.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)
    link.click()
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)


def press(browser: Any, *keys: str) -> None:
    """Keys sent to the page itself (nothing focused), as a user who clicked the slide."""
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(browser).send_keys(*keys).perform()


def tab_to(browser: Any, element_id: str, limit: int = 40) -> bool:
    """Whether Tab alone reaches the element (keyboard users have no other way)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.execute_script("document.activeElement && document.activeElement.blur()")
    for _ in range(limit):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.execute_script("return document.activeElement.id") == element_id:
            return True
    return False


def region(browser: Any, png: bytes, element_id: str, x0: float, x1: float) -> np.ndarray:
    """Columns x0..x1 (fractions of the element's width), middle rows, of a screenshot."""
    from selenium.webdriver.common.by import By

    rect = browser.find_element(By.ID, element_id).rect
    page = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)
    scale = page.shape[1] / browser.execute_script("return window.innerWidth")
    left, top = rect["x"] * scale, rect["y"] * scale
    width, height = rect["width"] * scale, rect["height"] * scale
    return page[
        int(top + height * 0.25) : int(top + height * 0.75),
        int(left + width * x0) : int(left + width * x1),
    ]


def views(browser: Any) -> tuple[dict[str, float], dict[str, float]]:
    """The bounds (viewport coordinates) of the main and the compared viewer."""
    result: list[dict[str, float]] = browser.execute_script(
        "const s = window.dscmViewer, b = s.compare.state.viewer;"
        "return [s.viewer.viewport.getBounds(true), b.viewport.getBounds(true)];"
    )
    return result[0], result[1]


def assert_same_view(browser: Any) -> dict[str, float]:
    main, compared = views(browser)
    pixel = main["width"] / 500  # containers of equal width, give or take a rounded pixel
    for key in ("x", "y", "width", "height"):
        assert abs(main[key] - compared[key]) < pixel, (key, main[key], compared[key])
    return main


def test_compare_side_by_side_and_swipe(
    server: Server, browser: Any, finished_job: dict[str, Any], screenshots_dir: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # this test's console only: the running-job test before it may leave the 409 its viewer
    # gets when the job finishes between its job poll and its live poll
    console_errors(browser)
    sign_in(browser, server)
    browser.get(f"{server.url}/viewer/{finished_job['id']}")
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 15, "viewer")
    wait_drawn(browser)
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-compare") == "off"
    assert not browser.find_element(By.ID, "viewer-b").is_displayed()
    # The comparison is reachable with Tab; its layout buttons appear with a second layer.
    assert tab_to(browser, "compare-layer")
    assert not browser.find_element(By.ID, "layout-swipe").is_displayed()

    # C: compare the stain with FCM (the default partner), side by side, at the same place.
    press(browser, "c")
    wait_drawn(browser)
    assert body.get_attribute("data-compare") == "side"
    captions = [browser.find_element(By.ID, f"caption-{n}").text for n in ("a", "b")]
    assert captions == ["Stained", "FCM"]
    png = browser.get_screenshot_as_png()
    path = screenshots_dir / "viewer-compare-side.png"
    path.write_bytes(png)
    copy_for_docs(path)
    assert_stain_colours(region(browser, png, "viewer", 0.2, 0.8))
    fcm = region(browser, png, "viewer-b", 0.2, 0.8)
    assert_not_blank(fcm)
    assert_gray(fcm)
    home = assert_same_view(browser)
    assert tab_to(browser, "layout-swipe")  # the layout buttons, now shown

    # Zoom with the buttons (the main view), then drag the compared view: each follows.
    browser.find_element(By.ID, "zoom-in").click()
    browser.find_element(By.ID, "zoom-in").click()
    wait_drawn(browser)
    zoomed = assert_same_view(browser)
    assert zoomed["width"] < home["width"] * 0.5
    ActionChains(browser).drag_and_drop_by_offset(
        browser.find_element(By.ID, "viewer-b"), -120, -40
    ).perform()
    wait_drawn(browser)
    dragged = assert_same_view(browser)
    assert dragged["x"] > zoomed["x"] and dragged["y"] > zoomed["y"]

    # X: swipe. The stain left of the divider, FCM right of it, over the same view.
    press(browser, "x")
    wait_drawn(browser)
    assert body.get_attribute("data-compare") == "swipe"
    browser.execute_script("window.dscmViewer.viewer.viewport.goHome(true)")
    wait_drawn(browser)
    png = browser.get_screenshot_as_png()
    path = screenshots_dir / "viewer-compare-swipe.png"
    path.write_bytes(png)
    copy_for_docs(path)
    assert_same_view(browser)
    assert_stain_colours(region(browser, png, "viewer", 0.2, 0.45))
    assert_gray(region(browser, png, "viewer", 0.55, 0.8))
    # The divider: a slider the keyboard reaches and moves ([ and ] from anywhere).
    assert tab_to(browser, "divider")
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT * 10).perform()  # 2 % a step
    divider = browser.find_element(By.ID, "divider")
    assert divider.get_attribute("aria-valuenow") == "70"
    press(browser, "[", "[", "[", "[", "[", "[", "[", "[")  # 5 % a step: 30 %
    assert divider.get_attribute("aria-valuenow") == "30"
    wait_drawn(browser)
    png = browser.get_screenshot_as_png()
    assert_stain_colours(region(browser, png, "viewer", 0.15, 0.27))
    assert_gray(region(browser, png, "viewer", 0.35, 0.5))  # stained with the divider at 50 %

    # The mouse drags the divider too.
    ActionChains(browser).drag_and_drop_by_offset(divider, 128, 0).perform()
    assert 35 < int(divider.get_attribute("aria-valuenow")) < 45

    # Shift+2: compare with Gareau instead; C again: one view.
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(browser).key_down(Keys.SHIFT).send_keys("2").key_up(Keys.SHIFT).perform()
    wait_drawn(browser)
    assert browser.find_element(By.ID, "caption-b").text == "Gareau"
    assert_stain_colours(region(browser, browser.get_screenshot_as_png(), "viewer", 0.35, 0.8))
    press(browser, "c")
    assert body.get_attribute("data-compare") == "off"
    assert not browser.find_element(By.ID, "viewer-b").is_displayed()
    assert not divider.is_displayed()
    wait_drawn(browser)

    assert browser.execute_script("return window.dscmViewer.errors") == []
    assert console_errors(browser) == []


def test_job_list_finds_a_case_by_its_accession_number(
    server: Server, browser: Any, finished_job: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_job_list(browser, server)

    def rows() -> list[str]:  # in one script: the list may be redrawn between two calls
        ids: list[str] = browser.execute_script(
            "return [...document.querySelectorAll('#jobs tbody tr')].map((r) => r.dataset.jobId)"
        )
        return ids

    everything = rows()
    assert len(everything) > 1  # the other tests' jobs have no accession number
    search = browser.find_element(By.ID, "external-id-filter")
    search.send_keys(EXTERNAL_ID, Keys.ENTER)
    wait_until(lambda: rows() == [finished_job["id"]], 15, "the filtered list")
    search.clear()
    search.send_keys("S24-99999", Keys.ENTER)
    wait_until(lambda: rows() == [], 15, "an empty list")
    message = browser.find_element(By.ID, "message").text
    assert message == "No job with this accession number."
    search.send_keys(Keys.CONTROL + "a", Keys.BACKSPACE)
    wait_until(lambda: len(rows()) == len(everything), 15, "every job again")


def test_a_stain_that_erased_nuclei_is_flagged_for_review(
    server: Server, browser: Any, pair: dict[str, Path], screenshots_dir: Path
) -> None:
    """The per-slide faithfulness check: a generator that paints everything one pink loses the
    nuclei FCM shows; the job, the viewer header and the job list say "review against FCM"."""
    from selenium.webdriver.common.by import By

    job = server.submit(pair, stages="median,gareau,generator", label="eraser check")
    done = server.wait(job["id"])
    assert done["state"] == "succeeded", done
    qc = done["report"]["qc"]
    assert qc["flag"] == "review against FCM" and qc["ratio"] < 0.9
    sign_in(browser, server, f"/viewer/{job['id']}")
    browser.refresh()
    wait_until(lambda: browser.find_element(By.ID, "job-qc").is_displayed(), 15, "qc flag")
    badge = browser.find_element(By.ID, "job-qc")
    assert badge.text == "review against FCM" and "Gareau" in badge.get_attribute("title")
    path = screenshots_dir / "viewer-qc-flag.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)
    browser.get(f"{server.url}/viewer")
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.state") == "ready", 15, "list"
    )
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job["id"]}"]')
    assert "review against FCM" in row.text
