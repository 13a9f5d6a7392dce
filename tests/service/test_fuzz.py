"""A bounded fuzz run against a real `dscm serve` (uvicorn, in-process worker): mutated TIFF
headers, mutated multipart bodies, and hostile headers, paths and JSON on the other routes.

Fixed seed, a few hundred cases, well under a minute. Whatever comes in: no 5xx, no traceback in
the server's log, every accepted job ends with a code of its own (never internal_error), no
upload or deleted file stays open once the jobs are done, and memory ends near its baseline.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import tifffile
from hostile_inputs import gray_tiff_bytes, mutate
from onnx_factory import make_colour_card
from processes import Cluster
from service_helpers import Keys
from support.api import wait_for
from support.polling import wait_until

pytestmark = pytest.mark.integration
SEED = 20261126
TIFF_CASES, MULTIPART_CASES, OTHER_CASES = 200, 150, 150
RESAMPLE_CASES, FLOAT_CASES = 40, 30
MAX_PIXELS = 1_000_000  # the server's DSCM_MAX_PIXELS: 512 x 512 px at 5 um/px is 11.6 MP of work
# Pixel sizes in and out of the 0.1-5 um/px a confocal microscope makes, stated or in the tags.
PIXEL_SIZES_UM = [0.05, 0.0999, 0.1, 0.75, 0.8, 2.0, 5.0, 5.0001, 50.0, 1e-300, 1e300, -1.0]
FLOAT_LEVELS = [3e38, -3e38, float(np.finfo(np.float32).max), 2.0**60, 1e-45, 0.0, -1.0]
MEMORY_SLACK_MIB = 48  # above the RSS after the warm-up jobs


@dataclass
class Tally:
    """What the server answered, by status; the cases that got a 5xx or an error that is not
    problem+json; the accepted jobs."""

    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    not_problems: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # the server closed the connection
    accepted: list[str] = field(default_factory=list)

    def send(self, client: httpx.Client, what: str, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            self.closed.append(f"{what}: {type(exc).__name__}")
            return None
        self.record(what, response)
        return response

    def record(self, what: str, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            self.server_errors.append(f"{what}: {response.status_code} {response.text[:200]}")
        content_type = response.headers.get("content-type", "")
        if response.status_code >= 400 and not content_type.startswith("application/problem"):
            self.not_problems.append(f"{what}: {response.status_code} {content_type}")

    @property
    def cases(self) -> int:
        return sum(self.statuses.values()) + len(self.closed)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("latin-1")
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode("latin-1")


def random_text(rng: np.random.Generator, max_chars: int) -> str:
    alphabet = 'abc019-_."/\\ ;=\t%\u00e9\u00ff'
    return "".join(rng.choice(list(alphabet), size=int(rng.integers(0, max_chars + 1))))


def mutated_form(rng: np.random.Generator, rcm: bytes, fcm: bytes) -> tuple[bytes, str]:
    """A job upload with one thing wrong in its framing, fields or headers."""
    boundary = "fuzzb0undary"
    parts: list[tuple[str, str | None, bytes]] = [
        ("stages", None, b"gareau"),
        ("rcm", "rcm.tif", rcm),
        ("fcm", "fcm.tif", fcm),
    ]
    content_type = f"multipart/form-data; boundary={boundary}"
    kind = int(rng.integers(0, 9))
    if kind == 0:  # a boundary of any length and alphabet
        boundary = random_text(rng, 400).replace("\r", "").replace("\n", "") or "x"
        content_type = f"multipart/form-data; boundary={boundary}"
    elif kind == 1:  # a strange Content-Type
        content_type = str(
            rng.choice(
                [
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    'multipart/form-data; boundary="unterminated',
                    "multipart/mixed; boundary=fuzzb0undary",
                    "text/plain",
                    "multipart/form-data; boundary=fuzzb0undary; charset=\u00ff",
                ]
            )
        )
    elif kind == 2:  # a file name that is a path, huge, or not text
        name = str(rng.choice(["../../etc/passwd", "a" * 5000, "\u00e9\u00ff.tif", "", "x\\y.tif"]))
        parts[1] = ("rcm", name, rcm)
    elif kind == 3:  # unknown, repeated or overlong fields
        extra = [
            ("rcm", "again.tif", rcm),
            ("layers", None, b"gareau," * 400),
            ("jpeg_quality", None, b"9" * 5000),
            ("mystery", None, b"1"),
            ("mpp_um", None, b"nan"),
        ]
        parts.append(extra[int(rng.integers(0, len(extra)))])
    elif kind == 4:  # more parts than allowed
        parts += [("stages", None, b"gareau")] * int(rng.integers(14, 40))
    body = multipart(parts, boundary)
    if kind == 5:  # cut the body anywhere
        body = body[: int(rng.integers(0, len(body)))]
    elif kind == 6:  # corrupt the part headers
        body = mutate(body, rng, head_bytes=300)
    elif kind == 7:  # a missing file part
        body = multipart(parts[:2], boundary)
    elif kind == 8:  # bytes spliced in anywhere
        at = int(rng.integers(0, len(body)))
        noise = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        body = body[:at] + noise + body[at:]
    return body, content_type


def hostile_request(
    rng: np.random.Generator, job: dict[str, Any], key: str
) -> tuple[str, str, dict[str, Any]]:
    """(method, url, httpx kwargs) for one hostile request to a route other than upload."""
    auth = {"Authorization": f"Bearer {key}"}
    kind = int(rng.integers(0, 6))
    digits = "".join(rng.choice(list("0123456789"), size=int(rng.integers(1, 6000))))
    if kind == 0:  # Range headers
        ranges = [
            f"bytes={digits}-",
            f"bytes=-{digits}",
            "bytes=" + ",".join(["0-1"] * int(rng.integers(1, 300))),
            f"bytes={int(rng.integers(-5, 10**7))}-{int(rng.integers(-5, 10**7))}",
            random_text(rng, 60),
        ]
        value = str(rng.choice(ranges))
        headers = {**auth, "Range": value.strip(" \t").encode("latin-1")}
        return "GET", job["links"]["result"], {"headers": headers}
    if kind == 1:  # Authorization headers, as raw bytes
        legal = np.r_[0x21:0x7F, 0x80:0x100].astype(np.uint8)  # what a header value may hold
        token = rng.choice(legal, size=int(rng.integers(1, 300))).tobytes()
        prefix = bytes(rng.choice([b"Bearer ", b"Bearer dscmv1.", b"Bearer dscm_", b"Basic "]))
        return "GET", job["links"]["self"], {"headers": {"Authorization": prefix + token}}
    if kind == 2:  # Deep Zoom tile paths
        column = "".join(rng.choice(list("0123456789"), size=int(rng.integers(1, 30))))
        url = f"/v1/jobs/{job['id']}/dzi_files/{digits}/{column}_0.jpeg"
        return "GET", url, {"headers": auth}
    if kind == 3:  # viewer-link bodies
        bodies = [
            b"{",
            b'{"ttl_s": 1e309}',
            b'{"ttl_s": "NaN"}',
            b'{"ttl_s": ' + digits.encode() + b"}",
            b"[" * 5000,
            rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        ]
        body = bytes(rng.choice(bodies))
        url = f"/v1/jobs/{job['id']}/viewer-link"
        return (
            "POST",
            url,
            {"headers": {**auth, "Content-Type": "application/json"}, "content": body},
        )
    if kind == 4:  # list queries
        query = {"limit": random_text(rng, 8), "cursor": random_text(rng, 250), "state": digits}
        return "GET", "/v1/jobs", {"headers": auth, "params": query}
    path = "/v1/jobs/" + quote(random_text(rng, 80), safe="/")
    return str(rng.choice(["GET", "DELETE"])), path, {"headers": auth}


def tiff_at(height_px: int, width_px: int, mpp_um: float, seed: int) -> bytes:
    """A gray TIFF whose resolution tags say ``mpp_um`` (whatever that is)."""
    values = np.random.default_rng(seed).integers(20, 200, (height_px, width_px), dtype=np.uint8)
    buffer = io.BytesIO()
    px_per_cm = 1e4 / mpp_um if mpp_um > 0 else 1.0
    top = 2**32 - 1  # a TIFF rational's numerator and denominator are 32-bit
    if px_per_cm >= 1:
        ratio = (min(top, round(px_per_cm * 1000)), 1000)
    else:
        ratio = (1, min(top, round(1 / px_per_cm)))
    tifffile.imwrite(buffer, values, resolution=(ratio, ratio), resolutionunit="CENTIMETER")
    return buffer.getvalue()


def resample_form(rng: np.random.Generator) -> tuple[list[tuple[str, str | None, bytes]], str]:
    """A pair the colour stage resamples to its 0.75 um/px: a pixel size from the tags or the
    mpp_um field, in range or not, on a pair whose work fits the limit or does not."""
    side = int(rng.choice([32, 64, 512]))
    tagged = float(rng.choice(PIXEL_SIZES_UM))
    stated = rng.choice([None, *PIXEL_SIZES_UM])
    parts: list[tuple[str, str | None, bytes]] = [
        ("stages", None, b"gareau,colour"),
        ("rcm", "r.tif", tiff_at(side, side, tagged, 1)),
        ("fcm", "f.tif", tiff_at(side, side, tagged, 2)),
    ]
    if stated is not None:
        parts.append(("mpp_um", None, repr(float(stated)).encode()))
    return parts, f"{side} px, tags {tagged:g}, stated {stated}"


def float_form(rng: np.random.Generator) -> list[tuple[str, str | None, bytes]]:
    """A float32 pair at the extremes: a level, and a few outliers at another."""
    parts: list[tuple[str, str | None, bytes]] = [("stages", None, b"median,gareau")]
    for name in ("rcm", "fcm"):
        values = np.full((32, 48), rng.choice(FLOAT_LEVELS), np.float32)
        at = rng.integers(0, values.size, int(rng.integers(0, 4)))
        values.flat[at] = rng.choice(FLOAT_LEVELS, at.size)
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, values, resolution=(1e4 / 0.75,) * 2, resolutionunit="CENTIMETER")
        parts.append((name, f"{name}.tif", buffer.getvalue()))
    return parts


def open_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_fuzz_uploads_and_requests(cluster: Cluster, keys: Keys) -> None:
    started_s = time.monotonic()
    models = make_colour_card(cluster.root / "models", mpp_um=0.75).parent
    api = cluster.start_api(
        DSCM_BROKER_URL="",
        DSCM_TILE_PX="64",
        DSCM_THUMBNAIL_PX="64",
        DSCM_MODELS_DIR=str(models),
        DSCM_MAX_PIXELS=str(MAX_PIXELS),
    )
    storage = cluster.root / "storage"
    rng = np.random.default_rng(SEED)
    rcm, fcm = gray_tiff_bytes(32, 48, 1), gray_tiff_bytes(32, 48, 2)
    tiled = gray_tiff_bytes(32, 48, 3, compression="zlib", tile=(16, 16))
    tally = Tally()
    auth = Keys.auth(keys.alice)
    with httpx.Client(base_url=cluster.url, timeout=30) as client:

        def post_raw(what: str, body: bytes, content_type: str) -> None:
            headers = {**auth, "Content-Type": content_type.strip(" \t").encode("latin-1")}
            response = tally.send(client, what, "POST", "/v1/jobs", content=body, headers=headers)
            if response is not None and response.status_code == 202:
                tally.accepted.append(response.json()["id"])

        def finish(job_ids: list[str]) -> list[dict[str, Any]]:
            return [wait_for(client, keys.alice, job_id, timeout_s=60) for job_id in job_ids]

        def pair_form(rcm_data: bytes) -> tuple[bytes, str]:
            parts = [("stages", None, b"gareau"), ("rcm", "r.tif", rcm_data), ("fcm", "f.tif", fcm)]
            return multipart(parts, "fuzzb0undary"), "multipart/form-data; boundary=fuzzb0undary"

        for _ in range(3):  # warm-up: the baseline is a server that has already stained
            post_raw("warm-up", *pair_form(rcm))
        warm = finish(tally.accepted)
        assert {job["state"] for job in warm} == {"succeeded"}, warm
        job = warm[0]
        assert client.get(f"/v1/jobs/{job['id']}/dzi_files/5/0_0.jpeg", headers=auth).is_success
        baseline_mib = rss_mib(api.pid)
        tally.accepted.clear()
        resampled: dict[str, str] = {}

        for i in range(TIFF_CASES):  # mutated TIFF headers
            base = tiled if i % 4 == 0 else rcm
            data = base
            for _ in range(int(rng.integers(1, 4))):
                data = mutate(data, rng, head_bytes=min(len(data), 400))
            post_raw(f"tiff {i}", *pair_form(data))
        for i in range(MULTIPART_CASES):
            body, content_type = mutated_form(rng, rcm, fcm)
            post_raw(f"multipart {i}", body, content_type)
        for i in range(OTHER_CASES):
            method, url, kwargs = hostile_request(rng, job, keys.alice)
            tally.send(client, f"{method} {url[:80]} #{i}", method, url, **kwargs)
        for i in range(RESAMPLE_CASES):
            parts, what = resample_form(rng)
            post_raw(
                f"resample {i} ({what})", multipart(parts, "b0"), "multipart/form-data; boundary=b0"
            )
            if tally.accepted and tally.accepted[-1] not in resampled:
                resampled[tally.accepted[-1]] = what
        for i in range(FLOAT_CASES):
            post_raw(
                f"float {i}", multipart(float_form(rng), "b0"), "multipart/form-data; boundary=b0"
            )
        jobs = finish(tally.accepted)

    codes = sorted({(j["state"], (j["error"] or {}).get("code")) for j in jobs})
    took_s = time.monotonic() - started_s
    print(f"{tally.cases} cases in {took_s:.0f} s; statuses {tally.statuses}; jobs {codes}")
    assert tally.cases >= TIFF_CASES + MULTIPART_CASES + OTHER_CASES
    print(
        f"5xx: {len(tally.server_errors)}, errors not problem+json: {len(tally.not_problems)}, "
        f"connections closed: {len(tally.closed)}"
    )
    assert httpx.get(f"{cluster.url}/livez", timeout=10).status_code == 200
    assert tally.server_errors == [], tally.server_errors[:10]
    assert tally.not_problems == [], tally.not_problems[:10]
    assert all(j["error"] is None or j["error"]["code"] != "internal_error" for j in jobs), codes
    for j in jobs:  # an accepted resampling job computed no more than the limit
        if j["id"] in resampled and j["state"] == "succeeded":
            width_px, height_px = j["report"]["pixel_size"]["work_px"]
            assert width_px * height_px <= MAX_PIXELS, resampled[j["id"]]
    assert resampled, "no resampling case was accepted"
    log = api.output()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]

    def settled() -> bool:
        held = open_files(api.pid)
        return not [
            f for f in held if f.endswith("(deleted)") or "/uploads/" in f or "/tmp/upload-" in f
        ]

    wait_until(settled, 10, "no upload or deleted file open")
    assert list((storage / "tmp").iterdir()) == []
    assert sorted(p.name for p in (storage / "uploads").iterdir()) == []
    final_mib = rss_mib(api.pid)
    assert final_mib < baseline_mib + MEMORY_SLACK_MIB, (baseline_mib, final_mib)
    print(f"RSS {baseline_mib:.0f} MiB after warm-up, {final_mib:.0f} MiB after the fuzz")
