"""The delivery of a DICOM job to a PACS, as the viewer header and the job list show it: a real
`dscm serve` whose destination is a real Orthanc that is down at first. The pages show the
delivery pending with its attempts and the archive's error, and, without a reload, delivered
once Orthanc is up; Orthanc then holds each instance of the series once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from browser_helpers import (
    Server,
    copy_for_docs,
    open_job_list,
    running_server,
    sign_in,
    wait_drawn,
)
from support.orthanc import Orthanc, require_orthanc
from support.pairs import write_tissue_pair
from support.polling import wait_until

pytestmark = pytest.mark.integration

DELIVERY_BADGE = "return [el.dataset.state, el.textContent, el.title, el.hidden];"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """An Orthanc configured but not started: the test starts it."""
    require_orthanc()
    archive = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield archive
    finally:
        archive.stop()


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[Server]:
    """`dscm serve` delivering st-marys' DICOM jobs to the Orthanc, retrying every second."""
    destination = {"name": "orthanc", "url": orthanc.dicomweb_url, "timeout_s": 10}
    tenant = {"destinations": ["orthanc"], "default_destination": "orthanc"}
    with running_server(
        tmp_path_factory.mktemp("delivery-server"),
        DSCM_DESTINATIONS=json.dumps([destination]),
        DSCM_TENANTS=json.dumps({"st-marys": tenant}),
        DSCM_DISPATCH_INTERVAL_S="0.2",
        DSCM_DELIVERY_RETRY_BASE_S="0.5",
        DSCM_DELIVERY_RETRY_MAX_S="1",
        DSCM_DELIVERY_MAX_ATTEMPTS="100",
    ) as server:
        yield server


def badge(browser: Any, selector: str) -> tuple[str, str, str, bool]:
    """The delivery badge's state, text, tooltip and whether it is hidden."""
    script = f"const el = document.querySelector({json.dumps(selector)});" + DELIVERY_BADGE
    state, text, title, hidden = browser.execute_script(script)
    return state, text, title, hidden


def test_the_header_and_the_list_follow_the_delivery_until_it_is_in_the_pacs(
    pacs_server: Server,
    orthanc: Orthanc,
    browser: Any,
    screenshots_dir: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    pair = write_tissue_pair(tmp_path, 1200, 800, 0.5)
    job = pacs_server.submit(pair, stages="gareau", output_format="dicom", external_id="S24-0777")
    assert job["delivery"]["state"] == "pending" and job["delivery"]["destination"] == "orthanc"
    done = pacs_server.wait(job["id"], 120)
    assert done["state"] == "succeeded", done
    wait_until(
        lambda: pacs_server.job(job["id"])["delivery"]["attempts"] >= 2, 30, "two failed attempts"
    )

    # The job list: the badge, and the archive's error in words under it.
    open_job_list(browser, pacs_server)
    row = f'tr[data-job-id="{job["id"]}"]'
    state, text, title, hidden = badge(browser, f"{row} .badge.delivery")
    assert (state, hidden) == ("pending", False)
    assert text.startswith("PACS orthanc: pending (") and "attempts failed)" in text, text
    assert "cannot connect" in title, title
    error = browser.find_element(By.CSS_SELECTOR, f"{row} .delivery-error").text
    assert error.startswith("instance 1 of ") and "cannot connect" in error, error
    path = screenshots_dir / "jobs-delivery.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)

    # The viewer's header, while the archive is down.
    sign_in(browser, pacs_server, f"/viewer/{job['id']}")
    browser.refresh()
    wait_until(lambda: browser.execute_script("return !!window.dscmViewer.viewer"), 30, "viewer")
    wait_drawn(browser)
    state, text, title, hidden = badge(browser, "#job-delivery")
    assert (state, hidden) == ("pending", False) and "attempts failed)" in text, text
    assert title.startswith("Delivery to the PACS orthanc: pending, ") and "cannot connect" in title
    assert browser.find_element(By.ID, "job-state").text == "succeeded"  # the stain is final

    # The archive comes up: the header turns delivered without a reload.
    orthanc.start()
    wait_until(lambda: badge(browser, "#job-delivery")[0] == "delivered", 30, "delivered")
    state, text, title, hidden = badge(browser, "#job-delivery")
    assert text == "PACS orthanc: delivered"
    delivery = pacs_server.job(job["id"])["delivery"]
    assert f"{delivery['instances']} instances" in title and "cannot" not in title, title
    path = screenshots_dir / "viewer-delivery.png"
    path.write_bytes(browser.get_screenshot_as_png())
    copy_for_docs(path)

    # One copy of each instance of the job's series is in the archive.
    dicom = done["report"]["dicom"]
    series = pacs_server.root / "storage" / "results" / job["id"] / dicom["series"]
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.glob("*")]
    assert delivery["instances"] == len(sops) >= 2
    assert sorted(orthanc.instance_uids()) == sorted(sops)

    open_job_list(browser, pacs_server)
    state, text, _, _ = badge(browser, f"{row} .badge.delivery")
    assert (state, text) == ("delivered", "PACS orthanc: delivered")
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} .delivery-error") == []


def test_a_failed_delivery_says_so_with_its_reason(pacs_server: Server, browser: Any) -> None:
    """The words for a delivery that used all its attempts (the page's own function)."""
    sign_in(browser, pacs_server)
    failed = {
        "destination": "orthanc",
        "state": "failed",
        "attempts": 8,
        "last_error": "instance 3 of 7: the archive answered 503",
        "delivered_at": None,
        "next_attempt_at": None,
        "instances": None,
    }
    words = browser.execute_script("return Dscm.deliveryStatus({delivery: arguments[0]});", failed)
    assert words["text"] == "PACS orthanc: failed"
    assert words["title"] == (
        "Delivery to the PACS orthanc: failed, 8 attempts; "
        "last error: instance 3 of 7: the archive answered 503"
    )
    assert words["error"] == failed["last_error"]
    assert browser.execute_script("return Dscm.deliveryStatus({delivery: null});") is None
