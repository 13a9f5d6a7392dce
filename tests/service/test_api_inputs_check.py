"""The API's face of the input check: a swapped pair (or one image twice) is refused at submit
with 422 inputs_swapped (inputs_identical), the allow_swapped field stains it as given, and the
report carries the check. Gareau only (no network runs)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, assert_problem
from support.api import submit, wait_for
from support.pairs import confocal_like, write_gray


def test_swapped_pair_fails_with_its_code_unless_allowed(
    client: TestClient, keys: Keys, tmp_path: Path
) -> None:
    fcm, rcm = confocal_like(256, 320)
    given_swapped = Pair(write_gray(tmp_path / "r.tif", fcm), write_gray(tmp_path / "f.tif", rcm))
    refused = submit(client, keys.alice, given_swapped)  # refused before it is queued
    body = assert_problem(refused, 422, "inputs_swapped")
    assert "allow_swapped" in body["detail"]
    assert client.get("/v1/jobs", headers=Keys.auth(keys.alice)).json()["items"] == []
    same = Pair(given_swapped.fcm, given_swapped.fcm)
    assert_problem(submit(client, keys.alice, same), 422, "inputs_identical")

    accepted = submit(client, keys.alice, given_swapped, data={"allow_swapped": "true"})
    assert accepted.status_code == 202, accepted.text
    done = wait_for(client, keys.alice, accepted.json()["id"])
    assert done["state"] == "succeeded", done
    check = done["report"]["inputs_check"]
    assert check["outcome"] == "swapped" and check["allowed"] is True and check["flag"]
