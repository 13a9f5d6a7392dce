"""Bad requests: each gets the right 4xx with a problem+json body, and the worker keeps working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from onnx_factory import make_colour_card
from service_helpers import Keys, Pair, assert_problem, make_app, stained
from starlette.requests import Request
from support.api import submit, wait_for
from support.pairs import write_gray_tiff
from support.tmpfs import fill, mount_tmpfs, unmount

from service.api.problems import ApiError
from service.api.uploads import receive_form
from service.runtime.config import Settings


@pytest.fixture
def small_cap_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(make_app(make_settings(max_upload_bytes=100_000))) as client:
        yield client


def assert_no_leftovers(settings: Settings) -> None:
    assert list((settings.storage_dir / "tmp").iterdir()) == []
    assert list((settings.storage_dir / "uploads").iterdir()) == []


def test_no_auth_is_401_with_challenge(client: TestClient, pair: Pair) -> None:
    response = submit(client, None, pair)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(client.get("/v1/jobs"), 401, "unauthenticated")


@pytest.mark.parametrize(
    "key", ["dscm_00000000_not-a-real-secret", "garbage", "dscm_", "Bearer x" * 40]
)
def test_wrong_key_is_401(client: TestClient, pair: Pair, key: str) -> None:
    assert_problem(submit(client, key, pair), 401, "invalid_api_key")


def test_missing_role_is_403(client: TestClient, keys: Keys, pair: Pair) -> None:
    assert_problem(submit(client, keys.alice_reader, pair), 403, "forbidden")
    assert client.get("/v1/jobs", headers=Keys.auth(keys.alice_reader)).status_code == 200


def test_other_tenants_job_is_404(client: TestClient, keys: Keys, pair: Pair) -> None:
    job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    bob = Keys.auth(keys.bob)
    for path in ("", "/result", "/thumbnail"):
        assert_problem(client.get(f"/v1/jobs/{job['id']}{path}", headers=bob), 404, "job_not_found")
    assert_problem(client.delete(f"/v1/jobs/{job['id']}", headers=bob), 404, "job_not_found")
    # ...and bob's attempt changed nothing for alice.
    mine = client.get(job["links"]["result"], headers=Keys.auth(keys.alice))
    assert mine.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/..",
        "/v1/jobs/%2e%2e",
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/%2E%2E%2F%2E%2E%2Fdscm.sqlite3/result",
        "/v1/jobs/..%252F..%252Fetc/result",
        "/v1/jobs/%00",
        "/v1/jobs/ABCDEF0123456789ABCDEF0123456789",
        "/v1/jobs/0123456789abcdef0123456789abcdef%2F..",
        "/v1/jobs/uploads/thumbnail",
    ],
)
def test_path_traversal_ids_are_404(client: TestClient, keys: Keys, path: str) -> None:
    auth = Keys.auth(keys.alice)
    assert_problem(client.get(path, headers=auth), 404)
    assert client.delete(path, headers=auth).status_code in (404, 405)


def test_missing_fcm_is_422(client: TestClient, keys: Keys, pair: Pair, settings: Settings) -> None:
    response = client.post(
        "/v1/jobs", files={"rcm": pair.files()["rcm"]}, headers=Keys.auth(keys.alice)
    )
    body = assert_problem(response, 422, "missing_file")
    assert "fcm" in body["detail"]
    assert_no_leftovers(settings)


def test_oversize_upload_is_413(
    small_cap_client: TestClient, keys: Keys, pair: Pair, make_settings: Callable[..., Settings]
) -> None:
    assert_problem(submit(small_cap_client, keys.alice, pair), 413, "upload_too_large")
    assert_no_leftovers(make_settings())


def test_oversize_is_counted_while_streaming_not_from_content_length(tmp_path: Path) -> None:
    """The receiver stops reading at the cap, whatever Content-Length claims."""
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="rcm"; filename="r.tif"\r\n'
        "Content-Type: image/tiff\r\n\r\n"
    ).encode()
    chunks_read = 0

    async def receive() -> dict[str, object]:
        nonlocal chunks_read
        chunks_read += 1
        body = head if chunks_read == 1 else b"\0" * 65536
        return {"type": "http.request", "body": body, "more_body": chunks_read < 1000}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/jobs",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", b"10"),
        ],
    }
    with pytest.raises(ApiError) as caught:
        asyncio.run(receive_form(Request(scope, receive), tmp_path, max_bytes=100_000))
    assert caught.value.http_status == 413
    assert chunks_read < 5  # stopped right after the cap, not at the end of a 64 MB body
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) <= 100_000


def test_non_image_is_415(client: TestClient, keys: Keys, pair: Pair) -> None:
    files = pair.files()
    files["fcm"] = ("notes.tif", b"this is not an image, just text\n" * 100, "image/tiff")
    response = client.post(
        "/v1/jobs", files=files, data={"stages": "gareau"}, headers=Keys.auth(keys.alice)
    )
    assert_problem(response, 415, "unsupported_format")
    detail = response.json()["detail"]
    assert "notes.tif" in detail and ".bin" not in detail  # the client's name, not our copy's


def test_truncated_tiff_is_422(client: TestClient, keys: Keys, pair: Pair) -> None:
    files = pair.files()
    data = pair.fcm.read_bytes()
    files["fcm"] = ("fcm.tif", data[: len(data) // 2], "image/tiff")
    response = client.post(
        "/v1/jobs", files=files, data={"stages": "gareau"}, headers=Keys.auth(keys.alice)
    )
    assert_problem(response, 422, "corrupt_slide")


def test_size_mismatch_is_422(client: TestClient, keys: Keys, pair: Pair, tmp_path: Path) -> None:
    other = write_gray_tiff(tmp_path / "small.tif", 128, 200)
    files = pair.files()
    files["fcm"] = ("fcm.tif", other.read_bytes(), "image/tiff")
    response = client.post(
        "/v1/jobs", files=files, data={"stages": "gareau"}, headers=Keys.auth(keys.alice)
    )
    assert_problem(response, 422, "size_mismatch")


def test_rgb_input_is_422(client: TestClient, keys: Keys, pair: Pair, tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.tif"
    colour = np.zeros((256, 256, 3), np.uint8)
    colour[..., 0] = 200  # a red image: three bands that are not equal
    tifffile.imwrite(rgb, colour, photometric="rgb")
    files = pair.files()
    files["rcm"] = ("rgb.tif", rgb.read_bytes(), "image/tiff")
    response = client.post(
        "/v1/jobs", files=files, data={"stages": "gareau"}, headers=Keys.auth(keys.alice)
    )
    assert_problem(response, 422, "wrong_band_count")


def test_pixel_limit_is_422(make_settings: Callable[..., Settings], keys: Keys, pair: Pair) -> None:
    with TestClient(make_app(make_settings(max_pixels=10_000))) as client:
        assert_problem(submit(client, keys.alice, pair), 422, "pixel_limit_exceeded")


def test_the_pixel_limit_bounds_the_resampled_size_at_upload(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    """256 x 256 px at 5 um/px is 1707 x 1707 px at the colour card's 0.75 um/px: refused
    before a job exists, naming both sizes; Gareau alone is not resampled and is accepted."""
    models = tmp_path / "models"
    make_colour_card(models, mpp_um=0.75)
    settings = make_settings(max_pixels=1_000_000, models_dir=models)
    with TestClient(make_app(settings)) as client:
        chain = {"stages": "gareau,colour", "mpp_um": "5"}
        answer = assert_problem(
            submit(client, keys.alice, pair, chain), 422, "pixel_limit_exceeded"
        )
        assert "256 x 256 px at 5 um/px" in answer["detail"]
        assert "1707 x 1707 px" in answer["detail"]
        assert client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"] == []
        assert submit(client, keys.alice, pair, {"mpp_um": "5"}).status_code == 202
        for mpp_um in ("50", "0.05"):
            refused = submit(client, keys.alice, pair, {"mpp_um": mpp_um})
            assert_problem(refused, 422, "invalid_option")


def test_a_second_delete_keeps_the_first_purge_time(
    client: TestClient, keys: Keys, pair: Pair
) -> None:
    job = stained(client, keys.alice, pair)
    url, auth = f"/v1/jobs/{job['id']}", Keys.auth(keys.alice)
    first = client.delete(url, headers=auth)
    assert first.status_code == 200 and first.json()["purged_at"]
    time.sleep(0.01)
    again = client.delete(url, headers=auth)
    assert again.status_code == 200
    assert again.json()["purged_at"] == first.json()["purged_at"]


def test_delete_on_a_full_disk_is_507_not_500(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    """The job database on a full disk (issue 17: 500 internal_error, sqlite3 'database or
    disk is full' in mark_purged): a problem body the client can retry on; then it purges."""
    disk = tmp_path / "small-disk"
    if not mount_tmpfs(disk, "size=2m"):
        pytest.skip("a full disk is a small tmpfs, which needs mount rights (root)")
    try:
        database = f"sqlite:///{disk / 'jobs.sqlite3'}"
        settings = make_settings(database_url=database)  # deleting files frees no room there
        with TestClient(make_app(settings), raise_server_exceptions=False) as client:
            job = stained(client, keys.alice, pair)
            filler = fill(disk)
            url, auth = f"/v1/jobs/{job['id']}", Keys.auth(keys.alice)
            refused = client.delete(url, headers=auth)
            assert refused.status_code in (503, 507), refused.text
            assert_problem(refused, refused.status_code)
            assert refused.json()["code"] in ("storage_full", "database_unavailable")
            filler.unlink()
            purged = client.delete(url, headers=auth)
            assert purged.status_code == 200 and purged.json()["purged_at"], purged.text
    finally:
        unmount(disk)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"colour": "pink"}, "unknown_option"),
        ({"stages": "gareau", "priority": "high"}, "unknown_option"),
        ({"jpeg_quality": "101"}, "invalid_option"),
        ({"jpeg_quality": "ninety"}, "invalid_option"),
        ({"output_format": "png"}, "invalid_option"),
        ({"stages": "gareau,sharpen"}, "invalid_option"),
        ({"stages": "median"}, "invalid_option"),
        ({"stages": "gareau,generator"}, "stage_unavailable"),
    ],
)
def test_bad_option_is_422(
    client: TestClient, keys: Keys, pair: Pair, data: dict[str, str], code: str
) -> None:
    response = client.post("/v1/jobs", files=pair.files(), data=data, headers=Keys.auth(keys.alice))
    assert_problem(response, 422, code)


def test_unknown_file_field_is_422(client: TestClient, keys: Keys, pair: Pair) -> None:
    files = {**pair.files(), "extra": ("x.tif", b"123", "image/tiff")}
    response = client.post("/v1/jobs", files=files, headers=Keys.auth(keys.alice))
    assert_problem(response, 422, "unknown_option")


def test_not_multipart_is_415(client: TestClient, keys: Keys) -> None:
    response = client.post("/v1/jobs", json={"rcm": "x"}, headers=Keys.auth(keys.alice))
    assert_problem(response, 415, "unsupported_media_type")


def test_broken_multipart_is_400(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/jobs",
        content=b'--b\r\nContent-Disposition: form-data; name="rcm"\r\n\r\nabc',
        headers={**Keys.auth(keys.alice), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_problem(response, 400, "malformed_multipart")


def test_unknown_route_and_method_are_problems(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v2/jobs"), 404)
    assert_problem(client.put("/v1/jobs", headers=Keys.auth(keys.alice)), 405)
    assert_problem(client.get("/v1/jobs?limit=0", headers=Keys.auth(keys.alice)), 422)


def test_worker_keeps_working_after_bad_requests(
    client: TestClient, keys: Keys, pair: Pair, settings: Settings
) -> None:
    files = pair.files()
    files["fcm"] = ("x.tif", b"garbage", "image/tiff")
    auth = Keys.auth(keys.alice)
    for _ in range(3):
        client.post("/v1/jobs", files=files, headers=auth)
        client.post("/v1/jobs", files=pair.files(), data={"bogus": "1"}, headers=auth)
    job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    assert job["state"] == "succeeded"
    assert list((settings.storage_dir / "tmp").iterdir()) == []


def test_a_pair_without_pixel_size_needs_mpp_um(
    client: TestClient, keys: Keys, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    untagged = {}
    for name in ("rcm", "fcm"):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, (rng.random((128, 160)) * 200).astype(np.uint8))  # no tags
        untagged[name] = (f"{name}.tif", path.read_bytes(), "image/tiff")
    auth = Keys.auth(keys.alice)
    refused = client.post("/v1/jobs", files=untagged, data={"stages": "gareau"}, headers=auth)
    assert_problem(refused, 422, "pixel_size_unknown")
    stated = client.post(
        "/v1/jobs", files=untagged, data={"stages": "gareau", "mpp_um": "0.5"}, headers=auth
    )
    assert stated.status_code == 202, stated.text
    done = wait_for(client, keys.alice, stated.json()["id"], ("succeeded",))
    pixel = done["report"]["pixel_size"]
    assert pixel["source"] == "caller" and pixel["mpp_um"] == 0.5
