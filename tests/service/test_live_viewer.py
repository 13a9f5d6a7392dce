"""Deep Zoom of a running job (issue 20): the real pipeline, held half-way through its tiles.

The stainer is the real one; only its progress callback waits at a chosen tile, so the test
looks at a live folder that is exactly what a worker leaves mid-slide.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import Pair, assert_problem, make_app
from support.api import accepted, submit, wait_for
from support.pairs import write_tissue_pair
from support.polling import wait_until

from service.jobs.runner import StainRequest
from service.jobs.stainer import PipelineStainer
from service.runtime.config import Settings
from service.vocabulary.progress import ProgressCallback
from service.vocabulary.report import StainReport

WIDTH_PX, HEIGHT_PX = 900, 700  # 128 px grid tiles: 8 x 6; Deep Zoom: deepest level 10
DEEPEST = 10


class GatedStainer(PipelineStainer):
    """The real stainer, whose progress waits once ``hold_after`` tissue tiles are done, until
    ``go`` is set."""

    def __init__(self, hold_after: int) -> None:
        super().__init__()
        self.hold_after = hold_after
        self.held, self.go = threading.Event(), threading.Event()

    def stain(
        self, request: StainRequest, settings: Settings, progress: ProgressCallback, models: object
    ) -> StainReport:
        calls = 0

        def gated(phase: str, done: int, total: int) -> None:
            nonlocal calls
            progress(phase, done, total)
            if phase != "tiles":
                return
            calls += 1  # the first call comes before any tissue tile, then one per tile
            if calls > self.hold_after and not self.go.is_set():
                self.held.set()
                self.go.wait(60)
                progress(phase, done, total)  # raises when the job was cancelled meanwhile

        return super().stain(request, settings, gated, models)


@dataclass
class Running:
    client: TestClient
    stainer: GatedStainer
    key: str
    job: dict[str, Any]
    settings: Settings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **params: str) -> Any:
        return self.client.get(f"/v1/jobs/{self.job['id']}{path}", headers=self.auth, params=params)

    def tile(self, level: int, column: int, row: int, layer: str = "stain") -> Any:
        return self.get(f"/dzi_files/{level}/{column}_{row}.jpeg", layer=layer)


@pytest.fixture(scope="module")
def tissue_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    paths = write_tissue_pair(tmp_path_factory.mktemp("tissue"), WIDTH_PX, HEIGHT_PX, 0.75)
    return Pair(paths["rcm"], paths["fcm"])


@pytest.fixture
def held(make_settings: Callable[..., Settings], keys: Any, tissue_pair: Pair) -> Iterator[Running]:
    """A running job held after 24 of its tissue tiles (lossless: tiles compare exactly)."""
    stainer = GatedStainer(hold_after=24)
    settings = make_settings()
    with TestClient(make_app(settings, stainer), raise_server_exceptions=False) as client:
        fields = {"compression": "lossless", "layers": "fcm"}
        job = accepted(submit(client, keys.alice, tissue_pair, fields))
        try:
            assert stainer.held.wait(60), "the stain never reached the tile to hold at"
            yield Running(client, stainer, keys.alice, job, settings)
        finally:
            stainer.go.set()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def test_a_running_job_serves_its_final_dzi_and_fills_in(held: Running) -> None:
    running = held
    live_dzi = running.get("/dzi")
    assert live_dzi.status_code == 200 and live_dzi.headers["cache-control"] == "private, no-cache"
    view = running.get("/live").json()
    assert view["planned"] and view["width_px"] == WIDTH_PX and view["tile_px"] == 128
    assert view["columns"] == 8 and len(view["done"]) == view["tiles"] == 48
    assert 0 < view["tiles_done"] < 48 and view["done"].count("1") == view["tiles_done"]

    # A tile over stained grid tiles only: final, cacheable; over any unstained: no-store.
    done = np.array([c == "1" for c in view["done"]]).reshape(6, 8)
    tiles, stored, unfinished = {}, [], []
    for column in range(4):
        for row in range(3):
            answer = running.tile(DEEPEST, column, row)
            assert answer.status_code == 200
            tiles[column, row] = answer
            x0, x1 = max(column * 254 - 1, 0), min((column + 1) * 254 + 1, WIDTH_PX)
            y0, y1 = max(row * 254 - 1, 0), min((row + 1) * 254 + 1, HEIGHT_PX)
            under = done[y0 // 128 : (y1 - 1) // 128 + 1, x0 // 128 : (x1 - 1) // 128 + 1]
            expected = "private, max-age=86400" if under.all() else "no-store"
            assert answer.headers["cache-control"] == expected, (column, row)
            (stored if under.all() else unfinished).append((column, row))
    assert stored and unfinished
    for column, row in unfinished:  # greyed overview over each grid tile not done
        pixels = decode(tiles[column, row].content)
        left, top = max(column * 254 - 1, 0), max(row * 254 - 1, 0)
        for grid_row, grid_column in zip(*np.nonzero(~done), strict=True):
            x0 = max(grid_column * 128 - left, 0) + 8
            y0 = max(grid_row * 128 - top, 0) + 8
            x1 = min((grid_column + 1) * 128 - left, pixels.shape[1]) - 8
            y1 = min((grid_row + 1) * 128 - top, pixels.shape[0]) - 8
            if x1 > x0 and y1 > y0:
                box = pixels[y0:y1, x0:x1]
                assert np.abs(box[..., 0] - box[..., 1]).mean() < 3, "the placeholder is grey"
    whole = running.tile(0, 0, 0)
    assert whole.headers["cache-control"] == "no-store"

    running.stainer.go.set()
    finished = wait_for(running.client, running.key, running.job["id"], timeout_s=60)
    assert finished["state"] == "succeeded", finished
    published_dzi = running.get("/dzi")
    assert published_dzi.text == live_dzi.text
    assert published_dzi.headers["cache-control"] == "private, max-age=300"
    for key in stored:  # lossless: the live tile is the published one, pixel for pixel
        published = running.tile(DEEPEST, *key)
        assert published.headers["cache-control"] == "private, max-age=86400, immutable"
        assert np.array_equal(decode(published.content), decode(tiles[key].content)), key
    assert_problem(running.get("/live"), 409, "job_finished")
    results = running.settings.results_dir or running.settings.storage_dir / "results"
    assert not list((results / running.job["id"]).glob("*.live"))


def test_a_cancelled_job_stops_serving_its_tiles(held: Running) -> None:
    running = held
    assert running.tile(DEEPEST, 1, 1).status_code == 200
    assert running.client.delete(
        f"/v1/jobs/{running.job['id']}", headers=running.auth
    ).status_code in (
        200,
        202,
        204,
    )
    running.stainer.go.set()
    wait_until(lambda: running.get("").json()["state"] in ("cancelled", "failed"), 30, "the cancel")
    state = running.get("").json()["state"]
    assert_problem(running.tile(DEEPEST, 1, 1), 409, f"job_{state}")
    assert_problem(running.get("/live"), 409, f"job_{state}")


def test_a_lease_that_leaves_the_folder_is_never_read(held: Running) -> None:
    """A record whose lease is a path ('../<other job>/x') serves nothing from disk."""
    running = held
    database = running.settings.effective_database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:  # the record tampered with, as by someone with the DB
        db.execute(
            "UPDATE dscm_jobs SET lease = ? WHERE id = ?",
            (f"../{running.job['id']}/x", running.job["id"]),
        )
    assert running.get("").json()["state"] == "running"
    assert_problem(running.tile(DEEPEST, 1, 1), 404, "tile_not_found")
    assert_problem(running.get("/live"), 404, "tile_not_found")


def test_a_running_job_refuses_layers_it_does_not_make(held: Running) -> None:
    assert_problem(held.get("/dzi", layer="gareau"), 404, "layer_not_found")
    assert_problem(held.tile(DEEPEST, 0, 0, "rcm"), 404, "layer_not_found")
    assert held.tile(DEEPEST, 0, 0, "fcm").status_code == 200
    assert_problem(held.tile(DEEPEST, 99, 0), 404, "tile_not_found")
