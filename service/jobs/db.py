"""The job table (SQLAlchemy 2): SQLite as the embedded default, PostgreSQL in production."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.vocabulary.case import EXTERNAL_ID_MAX_CHARS, LABEL_MAX_CHARS

JOB_ID_LENGTH = 32


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the only kind the UTC columns accept)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC and returns aware UTC on every backend (SQLite drops offsets)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Store an aware time as naive UTC; refuses a naive datetime, whose zone is unknown."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Read a stored naive time back as aware UTC."""
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One staining job; every state change is a conditional UPDATE in one transaction."""

    __tablename__ = "dscm_jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_dscm_jobs_idempotency"),
        Index("ix_dscm_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_dscm_jobs_state", "state"),
        Index("ix_dscm_jobs_tenant_external_id", "tenant", "external_id"),
    )

    id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    # where the job is, in words; the column keeps its first name, "stage" (docs/api.md)
    message: Mapped[str | None] = mapped_column("stage", String(32), default=None)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    requeues: Mapped[int] = mapped_column(Integer, default=0)
    lease: Mapped[str | None] = mapped_column(String(32), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # Case identity (service.vocabulary.case): may identify a patient, so never logged.
    label: Mapped[str | None] = mapped_column(String(LABEL_MAX_CHARS), default=None)
    external_id: Mapped[str | None] = mapped_column(String(EXTERNAL_ID_MAX_CHARS), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # DICOM patient and study fields (service.vocabulary.case.Patient): never logged, cleared
    # on purge.
    patient: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_detail: Mapped[str | None] = mapped_column(Text, default=None)
    result_name: Mapped[str | None] = mapped_column(String(64), default=None)
    result_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    result_bytes: Mapped[int | None] = mapped_column(Integer, default=None)
    thumbnail_name: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class RegionRow(Base):
    """One region of a job attempt's tiles, stained by whichever worker claims it (issue 20):
    pending -> running (lease, heartbeat) -> done, or failed with the error that fails the job.
    A running region whose heartbeat stops is claimed again by another worker."""

    __tablename__ = "dscm_regions"

    job_id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    attempt: Mapped[str] = mapped_column(String(32), primary_key=True)  # the job's lease
    region: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    lease: Mapped[str | None] = mapped_column(String(32), default=None)
    holder: Mapped[str | None] = mapped_column(String(128), default=None)  # host:pid, for ops
    runs: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_detail: Mapped[str | None] = mapped_column(Text, default=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created and brought up to date (idempotent)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    try:
        Base.metadata.create_all(engine)
    except DBAPIError:
        # Another process (API or worker) created the table between the check and the create.
        Base.metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns and indexes that a table made by an older release lacks; returns the
    columns added. create_all never alters an existing table; every column added since the
    first release is nullable, so ``ADD COLUMN`` needs no default and no table rewrite."""
    table = Base.metadata.tables[JobRow.__tablename__]
    present = _column_names(engine)
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        assert column.nullable, f"{column.name}: a column added later must be nullable"
        kind = column.type.compile(dialect=engine.dialect)
        name = engine.dialect.identifier_preparer.quote(column.name)
        exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
        try:
            with engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {table.name} ADD COLUMN{exists} {name} {kind}")
                )
        except DBAPIError:
            # SQLite has no IF NOT EXISTS here: another process may have added it meanwhile.
            if column.name not in _column_names(engine):
                raise
        added.append(column.name)
    for index in table.indexes:
        try:
            index.create(engine, checkfirst=True)
        except DBAPIError:
            if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                raise
    return added


def _column_names(engine: Engine) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(JobRow.__tablename__)}
