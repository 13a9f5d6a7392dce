"""API keys: created once by the CLI, stored hashed, picked up live, revocable; anonymous opt-in."""

from __future__ import annotations

import stat
from collections.abc import Callable

from click.testing import CliRunner
from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, assert_problem, make_app
from support.api import submit, wait_for

from service.cli import main
from service.runtime.config import Settings


def test_keys_create_prints_once_stores_hash_and_works_live(
    make_settings: Callable[..., Settings], pair: Pair
) -> None:
    settings = make_settings(api_keys=[])
    key_file = settings.effective_api_keys_file
    with TestClient(make_app(settings)) as client:
        runner = CliRunner()
        made = runner.invoke(
            main,
            [
                "keys",
                "create",
                "--tenant",
                "st-marys",
                "--roles",
                "submit,read",
                "--file",
                str(key_file),
            ],
        )
        assert made.exit_code == 0, made.output
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("dscm_")
        stored = key_file.read_text()
        assert key not in stored and '"sha256"' in stored
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        accepted = submit(client, key, pair)
        assert accepted.status_code == 202, accepted.text
        assert wait_for(client, key, accepted.json()["id"])["state"] == "succeeded"

        listed = runner.invoke(main, ["keys", "list", "--file", str(key_file)])
        assert "st-marys" in listed.stdout and key not in listed.stdout
        key_id = key.split("_")[1]
        revoked = runner.invoke(main, ["keys", "revoke", key_id, "--file", str(key_file)])
        assert revoked.exit_code == 0, revoked.output
        assert_problem(client.get("/v1/jobs", headers=Keys.auth(key)), 401, "invalid_api_key")


def test_keys_create_refuses_unknown_roles(tmp_path) -> None:
    result = CliRunner().invoke(
        main, ["keys", "create", "--tenant", "x", "--roles", "root", "--file", str(tmp_path / "k")]
    )
    assert result.exit_code != 0 and not (tmp_path / "k").exists()


def test_anonymous_access_only_when_configured(
    make_settings: Callable[..., Settings], pair: Pair, keys: Keys
) -> None:
    with TestClient(make_app(make_settings(anonymous_tenant="demo"))) as client:
        job = submit(client, None, pair)
        assert job.status_code == 202
        listed = client.get("/v1/jobs").json()["items"]
        assert [j["id"] for j in listed] == [job.json()["id"]]
        # A wrong key is still refused, and the demo tenant sees nobody else's jobs.
        assert_problem(client.get("/v1/jobs", headers=Keys.auth("dscm_1_x")), 401)
        alice_job = submit(client, keys.alice, pair).json()["id"]
        assert_problem(client.get(f"/v1/jobs/{alice_job}"), 404)
