"""Service test helpers: image pairs, keys, problem checks, a fake stainer (submitting and
waiting: support.api)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from support.api import accepted, bearer, submit, wait_for

from service.api import create_app
from service.jobs.runner import Stainer, StainRequest
from service.jobs.stainer import PipelineStainer
from service.runtime.config import ApiKeyEntry, Settings
from service.vocabulary.errors import OutputError
from service.vocabulary.options import JobOptions
from service.vocabulary.progress import ProgressCallback
from service.vocabulary.report import (
    FaithfulnessCheck,
    ImageInfo,
    PairInfo,
    PixelSizeSummary,
    StainReport,
    TileCounts,
)


@dataclass(frozen=True)
class Pair:
    rcm: Path
    fcm: Path

    def files(self) -> dict[str, tuple[str, bytes, str]]:
        return {
            "rcm": ("rcm.tif", self.rcm.read_bytes(), "image/tiff"),
            "fcm": ("fcm.tif", self.fcm.read_bytes(), "image/tiff"),
        }


@dataclass(frozen=True)
class Keys:
    """API keys of two tenants plus a read-only and an admin key."""

    alice: str
    bob: str
    alice_reader: str
    admin: str
    entries: tuple[ApiKeyEntry, ...]

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return bearer(key)


def make_app(settings: Settings, stainer: Stainer | None = None) -> FastAPI:
    """The API as `dscm serve` builds it (the real engine unless a fake is given)."""
    return create_app(stainer or PipelineStainer(), settings)


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return body


def stained(
    client: TestClient,
    key: str,
    pair: Pair,
    data: dict[str, str] | None = None,
    timeout_s: float = 30,
) -> dict[str, Any]:
    """Submit ``pair``, wait for the job and require that it succeeded; the finished job."""
    job_id = accepted(submit(client, key, pair, data))["id"]
    job = wait_for(client, key, job_id, timeout_s=timeout_s)
    assert job["state"] == "succeeded", job
    return job


class SlowStainer:
    """A fake stainer: ``tiles`` tiles of ``tile_s`` each, then a tiny file (for cancel/timeout)."""

    def __init__(self, tiles: int = 200, tile_s: float = 0.02, fail_with: Exception | None = None):
        self.tiles, self.tile_s, self.fail_with = tiles, tile_s, fail_with
        self.started = threading.Event()
        self.stopped_at: int | None = None
        self.models_loaded = 0

    def load_models(self, options: JobOptions, settings: Settings) -> Any:
        self.models_loaded += 1
        return object()

    def stain(
        self, request: StainRequest, settings: Settings, progress: ProgressCallback, models: Any
    ) -> StainReport:
        self.started.set()
        for done in range(self.tiles):
            try:
                progress("tiles", done, self.tiles)
            except BaseException:
                self.stopped_at = done
                raise
            time.sleep(self.tile_s)
        if self.fail_with is not None:
            raise self.fail_with
        try:
            request.output.write_bytes(b"II*\x00fake")
        except OSError as exc:
            raise OutputError(f"cannot write {request.output.name}: {exc.strerror}") from exc
        return fake_report(request, self.tiles)

    def thumbnail(self, tiff: Path, jpeg: Path, max_px: int) -> None:
        shutil.copyfile(tiff, jpeg)

    def check_models(self, models_dir: Path) -> tuple[bool, str]:
        return True, "fake stainer"

    def check_stages(self, stages: Sequence[str] | None, models_dir: Path) -> None:
        return None

    def trained_mpp_um(self, stages: Sequence[str] | None, models_dir: Path) -> float | None:
        return None

    def check_pair(self, rcm: Path, fcm: Path, allow_swapped: bool, max_pixels: int) -> None:
        return None  # the fake stains any pair


def fake_image(path: Path) -> ImageInfo:
    """The header record of one input of the fake stainer's pair."""
    return ImageInfo(str(path), "tiff", 64, 64, 1, "uint8", 0.75)


def fake_report(request: StainRequest, tiles: int) -> StainReport:
    """The report of a stain that computed ``tiles`` tiles into ``request.output``."""
    options = request.options
    return StainReport(
        input=PairInfo(64, 64, 0.75, fake_image(request.rcm), fake_image(request.fcm)),
        output=str(request.output),
        output_sha256="0" * 64,
        output_bytes=request.output.stat().st_size,
        output_format=options.output_format,
        compression=options.compression,
        jpeg_quality=options.jpeg_quality,
        mpp_um=0.75,
        pixel_size=PixelSizeSummary(0.75, "caller", None, False, [64, 64]),
        levels=[],
        stages=["median", "gareau"],
        models=[],
        providers=[],
        normalisation={},
        tiles=TileCounts(tiles, tiles, 0, 1024, 1, 1),
        shared_norm_stats=False,
        colour=None,
        timings_s={"tiles": 0.01 * tiles, "total": 0.01 * tiles},
        background_rgb=[255, 255, 255],
        qc=FaithfulnessCheck(None, None, None, note="too little tissue to check"),
        extra_outputs={},
    )
