"""The API's face of the input check: a swapped pair fails with code inputs_swapped, the
allow_swapped field stains it as given, and the report carries the check."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, submit, wait_for
from support.pairs import confocal_like, write_gray


def test_swapped_pair_fails_with_its_code_unless_allowed(
    client: TestClient, keys: Keys, tmp_path: Path
) -> None:
    fcm, rcm = confocal_like(256, 320)
    given_swapped = Pair(write_gray(tmp_path / "r.tif", fcm), write_gray(tmp_path / "f.tif", rcm))
    job = wait_for(client, keys.alice, submit(client, keys.alice, given_swapped).json()["id"])
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "inputs_swapped"
    assert "allow_swapped" in job["error"]["detail"]

    accepted = submit(client, keys.alice, given_swapped, data={"allow_swapped": "true"})
    assert accepted.status_code == 202, accepted.text
    done = wait_for(client, keys.alice, accepted.json()["id"])
    assert done["state"] == "succeeded", done
    check = done["report"]["inputs_check"]
    assert check["outcome"] == "swapped" and check["allowed"] is True and check["flag"]
