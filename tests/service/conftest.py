"""Fixtures for the service tests: a small image pair, API keys, settings, a database, an app
client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from processes import Cluster
from service_helpers import Keys, Pair, make_app
from support.databases import postgres_url
from support.pairs import write_gray_tiff
from support.settings import settings_in

from service.api.auth import hash_key, new_key
from service.runtime.config import ApiKeyEntry, Settings


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    folder = tmp_path_factory.mktemp("pair")
    return Pair(
        write_gray_tiff(folder / "rcm.tif", 256, 256, 1),
        write_gray_tiff(folder / "fcm.tif", 256, 256, 2),
    )


@pytest.fixture(scope="session")
def keys() -> Keys:
    made: dict[str, str] = {}
    entries = []
    for name, tenant, roles in (
        ("alice", "alice-hospital", ["submit", "read"]),
        ("bob", "bob-clinic", ["submit", "read"]),
        ("alice_reader", "alice-hospital", ["read"]),
        ("admin", "ops", ["admin"]),
    ):
        key_id, key = new_key()
        made[name] = key
        entries.append(
            ApiKeyEntry.model_validate(
                {"id": key_id, "tenant": tenant, "roles": roles, "sha256": hash_key(key)}
            )
        )
    return Keys(entries=tuple(entries), **made)


# Heartbeats, staleness and sweeps in fractions of a second: the sweeper tests wait for them.
FAST_SWEEPS: dict[str, Any] = {
    "heartbeat_interval_s": 0.2,
    "stale_after_s": 1.5,
    "sweep_interval_s": 0.3,
    "requeue_grace_s": 0.5,
}


@pytest.fixture
def make_settings(tmp_path: Path, keys: Keys) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return settings_in(tmp_path, **{"api_keys": keys.entries, **FAST_SWEEPS, **overrides})

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each job-store test on SQLite and, when a server is reachable, PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        yield from postgres_url()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(make_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def cluster(tmp_path: Path, keys: Keys) -> Iterator[Cluster]:
    """Real processes (redis-server, `dscm serve`, Celery workers) under ``tmp_path``, none
    started yet: the test starts what it needs. All are stopped at teardown."""
    started = Cluster(tmp_path, [e.model_dump() for e in keys.entries])
    try:
        yield started
    finally:
        started.stop_all()
