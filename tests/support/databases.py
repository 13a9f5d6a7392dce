"""A throwaway PostgreSQL database, when a server is reachable (else the test is skipped)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> Iterator[str]:
    """Yields the SQLAlchemy URL of a new, empty database; drops it afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    name = f"dscm_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
