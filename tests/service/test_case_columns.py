"""A database made by a release without the case columns gains them (SQLite, PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, Table, create_engine, insert, inspect
from support.jobs import job_inputs

from service.jobs.db import JobRow, add_missing_columns, utc_now
from service.jobs.job import NewJob, new_job_id
from service.jobs.store import JobStore
from service.vocabulary.options import JobOptions

LABEL, EXTERNAL_ID = "Zebra-Quokka 7731, left cheek", "ZQK-7731/XQ"


def create_old_table(url: str) -> str:
    """The job table as the release before the case columns made it, with one job in it."""
    new_columns = ("label", "external_id")
    old = MetaData()
    table = Table(
        JobRow.__tablename__,
        old,
        *(
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in JobRow.__table__.columns
            if c.name not in new_columns
        ),
    )
    Index("ix_dscm_jobs_tenant_created", table.c.tenant, table.c.created_at)
    engine = create_engine(url)
    old.create_all(engine)
    job_id, now = new_job_id(), utc_now()
    # the inputs as every release's API recorded them
    inputs = {
        mode: {"filename": f"{mode}.tif", "stored_name": f"{mode}.tif", "size_bytes": 1,
               "sha256": "a" * 64}
        for mode in ("rcm", "fcm")
    } | {"width_px": 8, "height_px": 8, "mpp_um": 0.75, "fingerprint": "f"}  # fmt: skip
    with engine.begin() as connection:
        connection.execute(
            insert(table).values(
                id=job_id, tenant="t", state="succeeded", max_attempts=3, options={},
                inputs=inputs, progress_done=0, progress_total=0, attempts=1, requeues=0,
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    engine.dispose()
    return job_id


def test_an_existing_database_gains_the_case_columns(database_url: str) -> None:
    old_job = create_old_table(database_url)
    store = JobStore(database_url)  # what every process does at start-up
    try:
        inspector = inspect(store.database)
        columns = {c["name"] for c in inspector.get_columns(JobRow.__tablename__)}
        assert {"label", "external_id"} <= columns
        indexes = {i["name"] for i in inspector.get_indexes(JobRow.__tablename__)}
        assert "ix_dscm_jobs_tenant_external_id" in indexes
        kept = store.get(old_job)
        assert kept is not None and kept.label is None and kept.external_id is None
        new = NewJob(
            new_job_id(), "t", JobOptions(), job_inputs(), 3, label=LABEL, external_id=EXTERNAL_ID
        )
        store.create(new)
        found = store.list_jobs("t", None, 10, external_id=EXTERNAL_ID)
        assert [(job.id, job.label) for job in found] == [(new.id, LABEL)]
        assert add_missing_columns(store.database) == []  # idempotent: the next process
        JobStore(database_url).close()
    finally:
        store.close()
