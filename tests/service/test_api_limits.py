"""Hostile and faulty requests against the app: credentials before bodies, caps, no 500s.

The in-process app (the same one `dscm serve` runs); what needs a real server (memory, header
timeouts, a full disk, open files) is in test_hardening_processes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from engine_fixtures import huge_header_tiff
from fastapi.testclient import TestClient
from hostile_inputs import lying_jpeg
from service_helpers import Keys, Pair, assert_problem, make_app, stained
from support.settings import settings_in

from service.api.limits import MAX_JSON_BODY_BYTES


@pytest.fixture(scope="module")
def lclient(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("limits")
    settings = settings_in(root, keys.entries, upload_idle_timeout_s=2, orphan_grace_s=3)
    with TestClient(make_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def done(lclient: TestClient, keys: Keys, pair: Pair) -> dict[str, Any]:
    return stained(lclient, keys.alice, pair)


class CountingBody:
    """A chunked request body that counts how much of it the server pulled."""

    def __init__(self, chunks: int, chunk_bytes: int = 65536) -> None:
        self.chunks, self.chunk_bytes, self.sent = chunks, chunk_bytes, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.sent += 1
            yield b"{" + b" " * (self.chunk_bytes - 1)


def test_a_viewer_link_body_is_not_read_without_a_key(lclient: TestClient, done: dict) -> None:
    body = CountingBody(chunks=800)  # 50 MiB, chunked: no Content-Length to refuse it by
    answer = lclient.post(f"/v1/jobs/{done['id']}/viewer-link", content=iter(body))
    assert_problem(answer, 401, "unauthenticated")
    assert body.sent <= 2, f"the server read {body.sent} chunks before checking the key"


def test_a_viewer_link_body_is_capped_after_the_key(
    lclient: TestClient, keys: Keys, done: dict
) -> None:
    url, auth = f"/v1/jobs/{done['id']}/viewer-link", Keys.auth(keys.alice)
    # Chunked (the test client hands the app the whole body at once; real streaming is in
    # test_hardening_processes.py).
    answer = lclient.post(url, content=iter(CountingBody(chunks=4)), headers=auth)
    assert_problem(answer, 413, "body_too_large")
    # Declared too large: refused before anything is read, with or without a key.
    for headers in (auth, {}):
        big = lclient.post(url, content=b"{}" + b" " * MAX_JSON_BODY_BYTES, headers=headers)
        assert_problem(big, 413, "body_too_large")
    # A small body still works, an empty one too.
    made = lclient.post(url, json={"ttl_s": 60}, headers=auth)
    assert made.status_code == 201, made.text
    assert lclient.post(url, headers=auth).status_code == 201
    assert_problem(lclient.post(url, content=b"{not json", headers=auth), 422, "invalid_request")


def test_a_non_ascii_link_signature_is_401(lclient: TestClient, done: dict) -> None:
    for token in (b"dscmv1.eyJqb2IiOiAiMSJ9.\xe9\xe9\xe9", b"dscmv1.\xff.\xff", b"dscm_\xe9_\xe9"):
        answer = lclient.get(done["links"]["self"], headers={"Authorization": b"Bearer " + token})
        assert answer.status_code == 401, answer.text
        assert_problem(answer, 401)


@pytest.mark.parametrize(
    "tail",
    ["9" * 5000 + "/0_0.jpeg", "0/" + "9" * 5000 + "_0.jpeg", "0/0_" + "1" * 4301 + ".jpeg"],
)
def test_a_tile_index_with_thousands_of_digits_is_404(
    lclient: TestClient, keys: Keys, done: dict, tail: str
) -> None:
    answer = lclient.get(f"/v1/jobs/{done['id']}/dzi_files/{tail}", headers=Keys.auth(keys.alice))
    assert_problem(answer, 404, "tile_not_found")


def test_leading_zeros_still_name_a_tile(lclient: TestClient, keys: Keys, done: dict) -> None:
    answer = lclient.get(
        f"/v1/jobs/{done['id']}/dzi_files/{'0' * 20}8/000_0.jpeg", headers=Keys.auth(keys.alice)
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("length", [257, 1000, 5000])
def test_a_long_multipart_boundary_is_400(lclient: TestClient, keys: Keys, length: int) -> None:
    boundary = "b" * length
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="stages"\r\n\r\ngareau\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    answer = lclient.post(
        "/v1/jobs",
        content=body,
        headers={
            **Keys.auth(keys.alice),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert_problem(answer, 400, "malformed_multipart")


def test_range_errors_are_problems(lclient: TestClient, keys: Keys, done: dict) -> None:
    url, auth = done["links"]["result"], Keys.auth(keys.alice)
    size = done["result"]["size_bytes"]
    for bad in ("bytes=abc", "items=0-10", "bytes", "bytes=10-5"):
        assert_problem(lclient.get(url, headers={**auth, "Range": bad}), 400, "invalid_range")
    far = lclient.get(url, headers={**auth, "Range": f"bytes={size}-"})
    assert_problem(far, 416, "range_not_satisfiable")
    assert far.headers["content-range"] == f"bytes */{size}"
    part = lclient.get(url, headers={**auth, "Range": "bytes=0-9"})
    assert part.status_code == 206 and len(part.content) == 10
    # A Range that If-Range makes the server ignore is no error: the whole file comes back.
    stale = lclient.get(url, headers={**auth, "Range": "bytes=abc", "If-Range": '"stale"'})
    assert stale.status_code == 200 and len(stale.content) == size
    thumb = lclient.get(done["links"]["thumbnail"], headers={**auth, "Range": "bytes=x"})
    assert_problem(thumb, 400, "invalid_range")


def test_head_on_result_and_thumbnail_answers_like_get_without_a_body(
    lclient: TestClient, keys: Keys, done: dict
) -> None:
    """Download clients probe with HEAD before a Range request (it was 405)."""
    auth = Keys.auth(keys.alice)
    for link in ("result", "thumbnail"):
        url = done["links"][link]
        got, head = lclient.get(url, headers=auth), lclient.head(url, headers=auth)
        assert head.status_code == 200 and head.content == b"", (link, head.status_code)
        assert head.headers["content-length"] == str(len(got.content)), link
        for name in ("content-type", "etag", "accept-ranges", "repr-digest"):
            assert head.headers.get(name) == got.headers.get(name), (link, name)
    result = lclient.head(done["links"]["result"], headers=auth)
    assert result.headers["etag"] == f'"{done["result"]["sha256"]}"'
    assert result.headers["accept-ranges"] == "bytes"
    part = lclient.head(done["links"]["result"], headers={**auth, "Range": "bytes=0-9"})
    assert part.status_code == 206 and part.headers["content-length"] == "10"
    assert part.content == b""
    assert lclient.head(done["links"]["result"]).status_code == 401
    missing = f"/v1/jobs/{'0' * 32}/thumbnail"
    assert lclient.head(missing, headers=auth).status_code == 404


def test_the_report_names_no_server_path(
    lclient: TestClient, keys: Keys, done: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = lclient.get(done["links"]["self"], headers=Keys.auth(keys.alice)).text
    report = done["report"]
    assert report["input"]["rcm"]["path"] == "rcm.tif", report["input"]
    assert report["input"]["fcm"]["path"] == "fcm.tif"
    assert "/storage/" not in text and str(tmp_path_factory.getbasetemp()) not in text
    link = lclient.post(f"/v1/jobs/{done['id']}/viewer-link", headers=Keys.auth(keys.alice)).json()
    viewed = lclient.get(
        done["links"]["self"], headers={"Authorization": f"Bearer {link['token']}"}
    )
    assert "/storage/" not in viewed.text


def test_lying_and_empty_images_are_refused_at_upload(
    lclient: TestClient, keys: Keys, pair: Pair, tmp_path: Path
) -> None:
    """The header checks of `dscm stain` answer at upload: 422, nothing kept, no job."""
    claim = huge_header_tiff(tmp_path / "claim.tif", 19000, 19000)  # 138 bytes, 361 MP claimed
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((256, 256), np.nan, np.float32))
    auth = Keys.auth(keys.alice)
    jpeg = lying_jpeg(tmp_path / "claim.jpg")  # 16 x 16 px of data, 7000 x 7000 claimed
    double = tmp_path / "double.tif"  # libvips reads no 64-bit float TIFF
    tifffile.imwrite(double, np.random.default_rng(0).random((256, 256)))
    cases = (
        (claim, "corrupt_slide", "need 361000000"),
        (jpeg, "corrupt_slide", "claims 7000 x 7000 px"),
        (nan, "invalid_input", "no finite pixel"),
        (double, "invalid_input", "64-bit float samples are not supported"),
    )
    for path, code, fragment in cases:
        files = {**pair.files(), "fcm": (path.name, path.read_bytes(), "image/tiff")}
        if path is not nan:  # the same file in both modes, so the sizes agree
            files["rcm"] = (f"rcm{path.suffix}", path.read_bytes(), "image/tiff")
        answer = lclient.post("/v1/jobs", files=files, data={"stages": "gareau"}, headers=auth)
        assert fragment in assert_problem(answer, 422, code)["detail"]
