"""The viewer's API: layers as a job option, Deep Zoom per layer, bounds, tenants, signed links."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import Keys, Pair, SlowStainer, assert_problem, make_app, stained
from support.api import submit, wait_for
from support.pairs import write_gray_tiff
from support.settings import settings_in

from service.api.viewer_links import ViewerLinks
from service.runtime.config import Settings

SECRET = "s" * 40
WIDTH_PX, HEIGHT_PX = 700, 500  # Deep Zoom: deepest level 10, 3 x 2 tiles of 254 px
DEEPEST = 10


@pytest.fixture(scope="module")
def viewer_settings(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Settings:
    root = tmp_path_factory.mktemp("viewer")
    return settings_in(root, keys.entries, tile_px=256, viewer_secret=SECRET, viewer_link_ttl_s=600)


@pytest.fixture(scope="module")
def vclient(viewer_settings: Settings) -> Iterator[TestClient]:
    with TestClient(make_app(viewer_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    folder = tmp_path_factory.mktemp("wide-pair")
    return Pair(
        write_gray_tiff(folder / "rcm.tif", HEIGHT_PX, WIDTH_PX, 3),
        write_gray_tiff(folder / "fcm.tif", HEIGHT_PX, WIDTH_PX, 4),
    )


@pytest.fixture(scope="module")
def layered(vclient: TestClient, keys: Keys, wide_pair: Pair) -> dict[str, Any]:
    """A finished job that kept every extra layer."""
    return stained(vclient, keys.alice, wide_pair, {"layers": "gareau,fcm,rcm"}, timeout_s=120)


@pytest.fixture(scope="module")
def plain(vclient: TestClient, keys: Keys, wide_pair: Pair) -> dict[str, Any]:
    """A finished job without extra layers (the default)."""
    return stained(vclient, keys.alice, wide_pair)


def tile_url(job: dict[str, Any], level: int, column: int, row: int, layer: str = "stain") -> str:
    return f"/v1/jobs/{job['id']}/dzi_files/{level}/{column}_{row}.jpeg?layer={layer}"


def test_a_job_keeps_the_layers_it_asked_for(layered: dict[str, Any], plain: dict[str, Any]):
    assert layered["options"]["layers"] == ["gareau", "fcm", "rcm"]
    assert layered["layers"] == ["stain", "gareau", "fcm", "rcm"]
    assert layered["links"]["viewer"] == f"/viewer/{layered['id']}"
    extra = layered["report"]["extra_outputs"]
    assert set(extra) == {"gareau", "fcm", "rcm"}
    assert all("/" not in name for name in extra.values())  # names, never server paths
    assert plain["options"]["layers"] is None and plain["layers"] == ["stain"]


@pytest.mark.parametrize("layer", ["stain", "gareau", "fcm", "rcm"])
def test_dzi_of_each_layer(vclient: TestClient, keys: Keys, layered: dict[str, Any], layer: str):
    answer = vclient.get(f"{layered['links']['dzi']}?layer={layer}", headers=keys.auth(keys.alice))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/xml")
    assert f'Width="{WIDTH_PX}"' in answer.text and f'Height="{HEIGHT_PX}"' in answer.text
    assert answer.headers["cache-control"].startswith("private")


def test_deepest_tiles_are_jpegs_of_the_right_layer(
    vclient: TestClient, keys: Keys, layered: dict[str, Any]
) -> None:
    auth = keys.auth(keys.alice)
    images = {}
    for layer in ("stain", "fcm"):
        answer = vclient.get(tile_url(layered, DEEPEST, 0, 0, layer), headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/jpeg"
        assert "immutable" in answer.headers["cache-control"]
        images[layer] = Image.open(io.BytesIO(answer.content))
    assert images["stain"].size == (255, 255)  # 254 + 1 px overlap on the inner edges
    assert images["stain"].mode == "RGB" and images["fcm"].mode == "L"
    last = Image.open(
        io.BytesIO(vclient.get(tile_url(layered, DEEPEST, 2, 1), headers=auth).content)
    )
    assert last.size == (WIDTH_PX - 2 * 254 + 1, HEIGHT_PX - 254 + 1)


@pytest.mark.parametrize(
    ("level", "column", "row"),
    [(DEEPEST + 1, 0, 0), (DEEPEST, 3, 0), (DEEPEST, 0, 2), (0, 1, 0), (10**30, 0, 0)],
)
def test_tiles_outside_the_pyramid_are_404(
    vclient: TestClient, keys: Keys, layered: dict[str, Any], level: int, column: int, row: int
) -> None:
    answer = vclient.get(tile_url(layered, level, column, row), headers=keys.auth(keys.alice))
    assert_problem(answer, 404, "tile_not_found")


@pytest.mark.parametrize(
    "tail",
    ["-1/0_0.jpeg", "10/-1_0.jpeg", "10/a_0.jpeg", "10/0_0.png", "10/0_0_0.jpeg", "10/0.jpeg"],
)
def test_malformed_tile_paths_are_404(
    vclient: TestClient, keys: Keys, layered: dict[str, Any], tail: str
) -> None:
    answer = vclient.get(
        f"/v1/jobs/{layered['id']}/dzi_files/{tail}", headers=keys.auth(keys.alice)
    )
    assert_problem(answer, 404)


def test_another_tenants_job_is_404_everywhere(
    vclient: TestClient, keys: Keys, layered: dict[str, Any]
) -> None:
    bob = keys.auth(keys.bob)
    for url in (
        layered["links"]["self"],
        layered["links"]["dzi"],
        f"{layered['links']['dzi']}?layer=fcm",
        tile_url(layered, DEEPEST, 0, 0),
        tile_url(layered, DEEPEST, 99, 99),
    ):
        assert_problem(vclient.get(url, headers=bob), 404, "job_not_found")
    link = vclient.post(f"/v1/jobs/{layered['id']}/viewer-link", headers=bob)
    assert_problem(link, 404, "job_not_found")
    for key in (keys.alice_reader, keys.admin):  # same tenant read-only, and operators
        answer = vclient.get(tile_url(layered, DEEPEST, 0, 0), headers=keys.auth(key))
        assert answer.status_code == 200
    assert_problem(vclient.get(tile_url(layered, DEEPEST, 0, 0)), 401, "unauthenticated")


def test_layers_are_names_not_paths(
    vclient: TestClient, keys: Keys, layered: dict[str, Any], plain: dict[str, Any]
) -> None:
    auth = keys.auth(keys.alice)
    for layer in ("../../api-keys.json", "out.tif", "STAIN", ""):
        answer = vclient.get(f"{layered['links']['dzi']}?layer={layer}", headers=auth)
        assert_problem(answer, 422, "invalid_request")
    answer = vclient.get(f"{plain['links']['dzi']}?layer=fcm", headers=auth)
    assert_problem(answer, 404, "layer_not_found")
    assert vclient.get(f"{plain['links']['dzi']}", headers=auth).status_code == 200


def test_an_unknown_layer_option_is_refused(vclient: TestClient, keys: Keys, pair: Pair) -> None:
    answer = submit(vclient, keys.alice, pair, {"layers": "gareau,he"})
    assert_problem(answer, 422, "invalid_option")


def test_deleting_a_job_removes_its_layers(
    vclient: TestClient, keys: Keys, pair: Pair, viewer_settings: Settings
) -> None:
    auth = keys.auth(keys.alice)
    job = wait_for(
        vclient, keys.alice, submit(vclient, keys.alice, pair, {"layers": "fcm"}).json()["id"]
    )
    folder = viewer_settings.storage_dir / "results" / job["id"]
    assert sorted(p.name.split(".", 1)[1] for p in folder.iterdir()) == ["fcm.tiff", "jpg", "tiff"]
    assert vclient.get(tile_url(job, 8, 0, 0, "fcm"), headers=auth).status_code == 200
    assert vclient.delete(job["links"]["self"], headers=auth).status_code == 200
    assert not folder.exists()
    assert_problem(vclient.get(f"{job['links']['dzi']}?layer=fcm", headers=auth), 410, "purged")
    assert_problem(vclient.get(tile_url(job, 8, 0, 0, "fcm"), headers=auth), 410, "purged")
    assert vclient.get(job["links"]["self"], headers=auth).json()["layers"] == []


def test_a_running_job_before_its_plan_serves_grey_tiles(
    make_settings: Any, keys: Keys, pair: Pair
) -> None:
    """Before the worker lays the grid (a fake stainer never does) the final DZI and grey,
    never-stored tiles; layers the job did not ask for are 404 (issue 20)."""
    stainer = SlowStainer(tiles=400, tile_s=0.02)
    with TestClient(make_app(make_settings(), stainer), raise_server_exceptions=False) as client:
        job = submit(client, keys.alice, pair, {"layers": "gareau"}).json()
        assert stainer.started.wait(10)
        auth = keys.auth(keys.alice)
        running = client.get(job["links"]["self"], headers=auth).json()
        assert running["state"] == "running" and running["layers"] == []
        dzi = client.get(job["links"]["dzi"], headers=auth)
        assert dzi.status_code == 200 and 'Width="256"' in dzi.text
        answer = client.get(tile_url(job, 8, 0, 0, "gareau"), headers=auth)
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
        assert Image.open(io.BytesIO(answer.content)).size == (255, 255)  # 254 + overlap
        assert_problem(client.get(tile_url(job, 8, 0, 0, "fcm"), headers=auth), 404)
        live = client.get(f"{job['links']['self']}/live", headers=auth).json()
        assert live["planned"] is False and live["tiles"] == 0
        client.delete(job["links"]["self"], headers=auth)


def test_a_signed_link_opens_one_job_read_only(
    vclient: TestClient, keys: Keys, layered: dict[str, Any], plain: dict[str, Any]
) -> None:
    made = vclient.post(
        f"/v1/jobs/{layered['id']}/viewer-link", headers=keys.auth(keys.alice_reader)
    )
    assert made.status_code == 201, made.text
    link = made.json()
    token = link["token"]
    assert link["url"] == f"/viewer/{layered['id']}#token={token}"
    auth = {"Authorization": f"Bearer {token}"}
    assert vclient.get(layered["links"]["self"], headers=auth).json()["state"] == "succeeded"
    assert vclient.get(f"{layered['links']['dzi']}?layer=rcm", headers=auth).status_code == 200
    assert vclient.get(tile_url(layered, DEEPEST, 1, 1, "gareau"), headers=auth).status_code == 200
    assert_problem(vclient.get(tile_url(layered, 99, 0, 0), headers=auth), 404, "tile_not_found")
    # Nothing else: not another job, not the list, not the download.
    assert_problem(vclient.get(plain["links"]["dzi"], headers=auth), 404, "job_not_found")
    assert_problem(vclient.get("/v1/jobs", headers=auth), 401, "invalid_api_key")
    assert_problem(vclient.get(layered["links"]["result"], headers=auth), 401, "invalid_api_key")
    assert_problem(vclient.delete(layered["links"]["self"], headers=auth), 401, "invalid_api_key")


def test_expired_forged_and_foreign_links_are_refused(
    vclient: TestClient, layered: dict[str, Any]
) -> None:
    def status(token: str) -> Any:
        return vclient.get(layered["links"]["dzi"], headers={"Authorization": f"Bearer {token}"})

    ours = ViewerLinks(SECRET.encode(), 600)
    old, _ = ours.issue(layered["id"], "alice-hospital", 60, now_s=time.time() - 3600)
    assert_problem(status(old), 401, "viewer_link_expired")
    good, _ = ours.issue(layered["id"], "alice-hospital")
    payload, signature = good.removeprefix("dscmv1.").split(".")
    assert_problem(status(f"dscmv1.{payload}.{signature[:-2]}AA"), 401, "invalid_viewer_link")
    assert_problem(status("dscmv1.garbage"), 401, "invalid_viewer_link")
    other_secret, _ = ViewerLinks(b"x" * 32, 600).issue(layered["id"], "alice-hospital")
    assert_problem(status(other_secret), 401, "invalid_viewer_link")
    wrong_tenant, _ = ours.issue(layered["id"], "bob-clinic")
    assert_problem(status(wrong_tenant), 404, "job_not_found")
    assert status(good).status_code == 200


def test_link_lifetime_is_capped(vclient: TestClient, keys: Keys, layered: dict[str, Any]) -> None:
    made = vclient.post(
        f"/v1/jobs/{layered['id']}/viewer-link",
        json={"ttl_s": 10**6},
        headers=keys.auth(keys.alice),
    ).json()
    left_s = datetime.fromisoformat(made["expires_at"]).timestamp() - time.time()
    assert 590 < left_s <= 600
    for ttl_s in (-1, 1e-300, 59.9):  # 1e-300 was a 201 with a link already expired
        bad = vclient.post(
            f"/v1/jobs/{layered['id']}/viewer-link",
            json={"ttl_s": ttl_s},
            headers=keys.auth(keys.alice),
        )
        assert_problem(bad, 422, "invalid_request")
    shortest = vclient.post(
        f"/v1/jobs/{layered['id']}/viewer-link", json={"ttl_s": 60}, headers=keys.auth(keys.alice)
    )
    assert shortest.status_code == 201
    assert datetime.fromisoformat(shortest.json()["expires_at"]).timestamp() > time.time() + 58


def test_a_link_can_open_the_viewer_comparing_two_layers(
    vclient: TestClient, keys: Keys, layered: dict[str, Any]
) -> None:
    """The view travels in the page's query (kept when the page takes the token out of the
    fragment); no view asked: the plain URL, as before."""
    url, auth = f"/v1/jobs/{layered['id']}/viewer-link", keys.auth(keys.alice)
    cases = [
        ({"compare": "side", "compare_with": "fcm"}, "?compare=side&with=fcm"),
        ({"compare": "swipe"}, "?compare=swipe"),
        ({"compare_with": "gareau"}, "?compare=side&with=gareau"),
        (
            {"layer": "fcm", "compare": "side", "compare_with": "stain"},
            "?layer=fcm&compare=side&with=stain",
        ),
        ({"layer": "rcm"}, "?layer=rcm"),
        ({"ttl_s": 600}, ""),
    ]
    for body, query in cases:
        made = vclient.post(url, json=body, headers=auth)
        assert made.status_code == 201, made.text
        link = made.json()
        assert link["url"] == f"/viewer/{layered['id']}{query}#token={link['token']}", body
        page = vclient.get(link["url"].split("#")[0])
        assert page.status_code == 200
    for bad in (
        {"compare": "overlay"},
        {"compare_with": "he"},
        {"layer": "../result"},
        {"compare_with": "stain"},  # the layer the link opens on
        {"layer": "fcm", "compare_with": "fcm"},
    ):
        assert_problem(vclient.post(url, json=bad, headers=auth), 422, "invalid_request")


def test_pages_and_vendored_assets(vclient: TestClient, layered: dict[str, Any]) -> None:
    for url in ("/viewer", layered["links"]["viewer"]):
        page = vclient.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert layered["id"] not in page.text  # a static shell: no job data without a key
    assert_problem(vclient.get("/viewer/not-a-job"), 404, "job_not_found")
    script = vclient.get("/static/vendor/openseadragon/openseadragon.min.js")
    assert script.status_code == 200 and script.text.startswith("//! openseadragon 6.1.1")
    assert "Redistribution and use" in vclient.get("/static/vendor/openseadragon/LICENSE.txt").text
    assert_problem(vclient.get("/static/../api/auth.py"), 404)
    assert_problem(vclient.get("/static/viewer/nothing.js"), 404)


def test_storage_never_names_a_file_outside_the_job(viewer_settings: Settings) -> None:
    from service.jobs.files import JobFiles

    files = JobFiles(viewer_settings.storage_dir)
    job_id = "0" * 32
    for name in ("../x.tiff", ".hidden", "a/b.tiff", "/etc/passwd"):
        with pytest.raises(ValueError):
            files.published_file(job_id, name)
    folder = files.clear_results(job_id)
    (folder / "link.tiff").symlink_to(Path("/etc/hostname"))
    with pytest.raises(ValueError):
        files.published_file(job_id, "link.tiff")
    (folder / "lease1.tiff").write_bytes(b"x")
    (folder / "lease1.gareau.tiff").write_bytes(b"x")
    (folder / "lease2.tiff").write_bytes(b"x")
    files.remove_attempt_files(job_id, "lease1")
    assert sorted(p.name for p in folder.iterdir()) == ["lease2.tiff", "link.tiff"]
    files.purge(job_id)
