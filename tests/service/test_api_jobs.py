"""The job API end to end in one process: app + SQLite + the in-process worker + the real
stainer."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openslide
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import Keys, Pair, SlowStainer, assert_problem, make_app
from support.api import submit, wait_for
from support.polling import wait_until

from service.runtime.config import Settings


def test_submit_poll_download(client: TestClient, keys: Keys, pair: Pair, tmp_path) -> None:
    accepted = submit(client, keys.alice, pair)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert accepted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running")
    assert job["inputs"]["rcm"]["sha256"] == hashlib.sha256(pair.rcm.read_bytes()).hexdigest()
    assert (job["inputs"]["width_px"], job["inputs"]["height_px"]) == (256, 256)

    done = wait_for(client, keys.alice, job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["error"] is None
    assert done["progress"]["percent"] == 100.0
    assert done["report"]["stages"] == ["gareau"]
    assert "/" not in done["report"]["output"]  # no server paths leak

    result = client.get(done["links"]["result"], headers=Keys.auth(keys.alice))
    assert result.status_code == 200 and result.headers["content-type"] == "image/tiff"
    assert hashlib.sha256(result.content).hexdigest() == done["result"]["sha256"]
    assert result.headers["repr-digest"].startswith("sha-256=:")
    path = tmp_path / "result.tiff"
    path.write_bytes(result.content)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.dimensions == (256, 256)

    thumb = client.get(done["links"]["thumbnail"], headers=Keys.auth(keys.alice))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"


def test_result_supports_http_range(client: TestClient, keys: Keys, pair: Pair) -> None:
    job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    auth = Keys.auth(keys.alice)
    whole = client.get(job["links"]["result"], headers=auth).content
    part = client.get(job["links"]["result"], headers={**auth, "Range": "bytes=4-103"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 4-103/{len(whole)}"
    assert part.content == whole[4:104]
    beyond = client.get(job["links"]["result"], headers={**auth, "Range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416


def test_idempotency_key_returns_the_same_job(client: TestClient, keys: Keys, pair: Pair) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = submit(client, keys.alice, pair, headers=headers)
    again = submit(client, keys.alice, pair, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    changed = submit(client, keys.alice, pair, data={"jpeg_quality": "70"}, headers=headers)
    assert_problem(changed, 422, "idempotency_key_reused")
    # Keys are per tenant: bob's identical key makes his own job.
    other = submit(client, keys.bob, pair, headers=headers)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_list_is_per_tenant_newest_first_and_paginated(
    client: TestClient, keys: Keys, pair: Pair
) -> None:
    ids = [submit(client, keys.alice, pair).json()["id"] for _ in range(3)]
    bob_id = submit(client, keys.bob, pair).json()["id"]
    auth = Keys.auth(keys.alice)
    page = client.get("/v1/jobs?limit=2", headers=auth).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    rest = client.get(page["next"], headers=auth).json()
    assert [j["id"] for j in rest["items"]] == ids[:1] and rest["next"] is None
    for job_id in ids:
        wait_for(client, keys.alice, job_id)
    succeeded = client.get("/v1/jobs?state=succeeded", headers=auth).json()["items"]
    assert {j["id"] for j in succeeded} == set(ids)
    assert bob_id not in {j["id"] for j in succeeded}
    assert client.get("/v1/jobs?state=failed", headers=auth).json()["items"] == []
    assert_problem(client.get("/v1/jobs?cursor=bm9wZQ", headers=auth), 422, "invalid_cursor")
    everything = client.get("/v1/jobs?limit=100", headers=Keys.auth(keys.admin)).json()
    assert bob_id in {j["id"] for j in everything["items"]}


def test_result_is_409_until_done_and_cancel_stops_between_tiles(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    stainer = SlowStainer(tiles=500, tile_s=0.01)
    with TestClient(make_app(make_settings(), stainer=stainer)) as client:
        job_id = submit(client, keys.alice, pair).json()["id"]
        assert stainer.started.wait(10)
        auth = Keys.auth(keys.alice)

        def staining() -> dict[str, Any] | None:
            # the message reaches the record with the next heartbeat/progress write
            job = wait_for(client, keys.alice, job_id, ("running",))
            return job if job["message"].startswith("staining") else None

        running = wait_until(staining, 10, "the message 'staining'", interval_s=0.02)
        assert running["message"].startswith("staining")  # in words: "staining 12 of 500 tiles"
        assert running["stage"] == running["message"]  # the field's earlier name, deprecated
        assert 8 <= running["progress"]["percent"] < 93  # of the whole job, tiles span 8-93 %
        assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth), 409)
        assert_problem(client.get(f"/v1/jobs/{job_id}/thumbnail", headers=auth), 409)

        cancelled = client.delete(f"/v1/jobs/{job_id}", headers=auth)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        settings = make_settings()
        wait_until(
            lambda: stainer.stopped_at is not None, 5, "the stainer to stop", interval_s=0.02
        )
        assert stainer.stopped_at is not None and stainer.stopped_at < stainer.tiles
        assert not (settings.storage_dir / "uploads" / job_id).exists()
        leftovers = list((settings.storage_dir / "results").glob(f"{job_id}/*"))
        assert leftovers == []
        final = wait_for(client, keys.alice, job_id)
        assert final["state"] == "cancelled" and final["error"]["code"] == "cancelled"
        assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=auth), 409, "job_cancelled")


def test_cancel_queued_job_never_runs(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    stainer = SlowStainer(tiles=300, tile_s=0.01)
    with TestClient(make_app(make_settings(), stainer=stainer)) as client:
        auth = Keys.auth(keys.alice)
        first = submit(client, keys.alice, pair).json()["id"]
        second = submit(client, keys.alice, pair).json()["id"]
        assert client.delete(f"/v1/jobs/{second}", headers=auth).json()["state"] == "cancelled"
        client.delete(f"/v1/jobs/{first}", headers=auth)
        final = wait_for(client, keys.alice, second)
        assert final["state"] == "cancelled" and final["attempts"] == 0


def test_delete_finished_job_purges_result(client: TestClient, keys: Keys, pair: Pair) -> None:
    job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    auth = Keys.auth(keys.alice)
    deleted = client.delete(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert deleted["state"] == "succeeded" and deleted["purged_at"] and deleted["result"] is None
    assert_problem(client.get(job["links"]["result"], headers=auth), 410, "purged")


def test_engine_error_fails_job_with_its_code(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    from service.vocabulary.errors import ModelError

    stainer = SlowStainer(tiles=2, tile_s=0, fail_with=ModelError("generator.onnx is corrupt"))
    with TestClient(make_app(make_settings(), stainer=stainer)) as client:
        job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
        assert job["state"] == "failed"
        assert job["error"] == {"code": "model_error", "detail": "generator.onnx is corrupt"}


def test_time_limit_fails_the_job(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    stainer = SlowStainer(tiles=1000, tile_s=0.01)
    settings = make_settings(job_time_limit_s=0.3)
    with TestClient(make_app(settings, stainer=stainer)) as client:
        job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
        assert job["state"] == "failed" and job["error"]["code"] == "time_limit_exceeded"


def test_models_load_once_per_worker(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    stainer = SlowStainer(tiles=1, tile_s=0)
    with TestClient(make_app(make_settings(), stainer=stainer)) as client:
        for _ in range(3):
            wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    assert stainer.models_loaded == 1


def test_records_survive_an_api_restart(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    settings = make_settings()
    with TestClient(make_app(settings)) as client:
        done = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    with TestClient(make_app(settings)) as client:
        again = client.get(f"/v1/jobs/{done['id']}", headers=Keys.auth(keys.alice)).json()
        assert again["state"] == "succeeded" and again["result"] == done["result"]


def test_queued_jobs_resume_after_restart(
    make_settings: Callable[..., Settings], keys: Keys, pair: Pair
) -> None:
    settings = make_settings()
    slow = SlowStainer(tiles=10_000, tile_s=0.01)
    with TestClient(make_app(settings, stainer=slow)) as client:
        first = submit(client, keys.alice, pair).json()["id"]
        second = submit(client, keys.alice, pair).json()["id"]
        assert slow.started.wait(10)
    # The first was released at shutdown, the second never started: both run after restart.
    with TestClient(make_app(settings, stainer=SlowStainer(tiles=1, tile_s=0))) as client:
        for job_id in (first, second):
            job = wait_for(client, keys.alice, job_id)
            assert job["state"] == "succeeded" and job["attempts"] == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [("/livez", 200), ("/readyz", 200), ("/metrics", 200), ("/openapi.json", 200)],
)
def test_operations_endpoints(client: TestClient, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_metrics_show_jobs_uploads_and_stages(client: TestClient, keys: Keys, pair: Pair) -> None:
    job = wait_for(client, keys.alice, submit(client, keys.alice, pair).json()["id"])
    text = client.get("/metrics").text
    assert 'dscm_jobs{state="succeeded"}' in text
    assert "dscm_upload_bytes_total" in text and "dscm_queue_length" in text
    assert 'dscm_stage_duration_seconds_count{stage="tiles"}' in text
    assert "dscm_job_tiles_per_second" in text
    assert job["id"] not in text


def test_readyz_reports_unwritable_storage(client: TestClient, settings: Settings) -> None:
    uploads = settings.storage_dir / "uploads"
    uploads.rename(settings.storage_dir / "moved")
    uploads.write_text("not a folder")
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert {c["name"]: c["ok"] for c in body["checks"]}["storage"] is False


def test_readyz_reports_a_model_that_does_not_match_its_card(
    make_settings: Callable[..., Settings], tmp_path
) -> None:
    import json

    models = tmp_path / "models"
    models.mkdir()
    (models / "g.onnx").write_bytes(b"not the real model")
    card = {
        "name": "g", "role": "generator", "architecture": "x", "version": "1",
        "sha256": "0" * 64, "input": {"channels": 3, "range": [0, 1]},
        "output": {"channels": 3}, "halo_px": 4,
    }  # fmt: skip
    (models / "g.json").write_text(json.dumps(card))
    with TestClient(make_app(make_settings(models_dir=models))) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert "does not match" in str(body["checks"])


def test_a_new_users_job_names_files_counts_thousandths_and_rounds_the_pixel_size(
    make_settings: Callable[..., Settings],
    keys: Keys,
    pair: Pair,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default storage folder is relative (./dscm-data): the report still names files by
    name only; a succeeded job is 1000 of 1000 thousandths; the tags' float32 pixel size
    (0.75000004577637) shows to 5 decimals, as in the report."""
    monkeypatch.chdir(tmp_path)
    settings = make_settings(storage_dir=Path("dscm-data"))
    with TestClient(make_app(settings), raise_server_exceptions=False) as client:
        accepted = submit(client, keys.alice, pair)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["inputs"]["mpp_um"] == 0.75, job["inputs"]
        done = wait_for(client, keys.alice, job["id"])
    assert done["state"] == "succeeded", done
    report_inputs = done["report"]["input"]
    assert (report_inputs["rcm"]["path"], report_inputs["fcm"]["path"]) == ("rcm.tif", "fcm.tif")
    assert "dscm-data" not in str(done)
    assert done["progress"] == {"done": 1000, "total": 1000, "percent": 100.0}
    assert done["inputs"]["mpp_um"] == 0.75
