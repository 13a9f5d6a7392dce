"""JobStore: every read and every state change of a job record, each in one transaction.

State changes are conditional UPDATEs (``... WHERE state = ... AND lease = ...``), so the API,
any number of workers and the sweeper can race without locks: the loser's UPDATE matches no row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.db import JobRow, RegionRow, make_engine, utc_now
from service.jobs.job import ACTIVE_STATES, FINISHED_STATES, Job, JobInputs, JobState, NewJob
from service.vocabulary.case import Patient
from service.vocabulary.options import JobOptions
from service.vocabulary.progress import PROGRESS_SCALE
from service.vocabulary.report import PublicReport

_JOB_FIELDS = tuple(f.name for f in fields(Job))
ClaimOutcome = Literal["claimed", "missing", "finished", "busy", "exhausted"]


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None


def to_job(row: JobRow) -> Job:
    """The typed job of a row: the one place the JSON columns become types."""
    values: dict[str, Any] = {name: getattr(row, name) for name in _JOB_FIELDS}
    values["state"] = JobState(row.state)
    values["options"] = JobOptions.from_json(row.options or {})
    values["inputs"] = JobInputs.from_json(row.inputs)
    values["report"] = PublicReport.from_json(row.report)
    values["patient"] = Patient(**(row.patient or {}))
    return Job(**values)


class JobStore:
    """Durable job records in a SQL database (SQLite or PostgreSQL)."""

    def __init__(self, database_url: str) -> None:
        self.database = make_engine(database_url)
        self._sessions = sessionmaker(self.database, expire_on_commit=False)

    def close(self) -> None:
        """Dispose of the engine's connection pool."""
        self.database.dispose()

    def ping(self) -> None:
        """Run SELECT 1; raises the driver's error when the database is unreachable (readyz)."""
        with self.database.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _update(
        self, session: Session, job_id: str, *where: ColumnElement[bool], **values: Any
    ) -> bool:
        values.setdefault("updated_at", utc_now())
        result = session.execute(update(JobRow).where(JobRow.id == job_id, *where).values(**values))
        return bool(getattr(result, "rowcount", 0))

    def _update_leased(self, job_id: str, held_by: str, /, **values: Any) -> bool:
        """Change a running job only while the lease ``held_by`` still holds it: False once the
        attempt lost the job (cancelled, taken over by another worker, swept)."""
        with self._sessions.begin() as session:
            return self._update(
                session,
                job_id,
                JobRow.state == JobState.RUNNING.value,
                JobRow.lease == held_by,
                **values,
            )

    # ---- API side ----

    def create(self, new: NewJob, related: Sequence[object] = ()) -> tuple[Job, bool]:
        """Insert a queued job, and ``related`` rows of other tables in the same transaction
        (its delivery and webhook records); with a known idempotency key return the earlier
        job instead (and insert nothing).

        Returns ``(job, created)``.
        """
        now = utc_now()
        row = JobRow(
            id=new.id,
            tenant=new.tenant,
            state=JobState.QUEUED.value,
            max_attempts=new.max_attempts,
            idempotency_key=new.idempotency_key,
            label=new.label,
            external_id=new.external_id,
            patient=new.patient.to_json(),
            options=new.options.to_json(),
            inputs=new.inputs.to_json(),
            progress_done=0,
            progress_total=0,
            attempts=0,
            requeues=0,
            created_at=now,
            updated_at=now,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
                session.add_all(related)
                session.flush()
                return to_job(row), True
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            earlier = self.find_by_idempotency_key(new.tenant, new.idempotency_key)
            if earlier is None:
                raise
            return earlier, False

    def find_by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        """The tenant's job submitted with this Idempotency-Key, or None; a retried submit replays
        it."""
        with self._sessions() as session:
            row = session.scalars(
                select(JobRow).where(JobRow.tenant == tenant, JobRow.idempotency_key == key)
            ).first()
            return None if row is None else to_job(row)

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        with self._sessions() as session:
            row = session.get(JobRow, job_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return to_job(row)

    def list_jobs(
        self,
        tenant: str | None,
        state: JobState | None,
        limit: int,
        before: tuple[datetime, str] | None = None,
        external_id: str | None = None,
    ) -> list[Job]:
        """Newest first; ``before`` is the (created_at, id) of the last job of the previous page."""
        query = select(JobRow)
        if tenant is not None:
            query = query.where(JobRow.tenant == tenant)
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if external_id is not None:
            query = query.where(JobRow.external_id == external_id)
        if before is not None:
            created, job_id = before
            query = query.where(
                or_(
                    JobRow.created_at < created,
                    and_(JobRow.created_at == created, JobRow.id < job_id),
                )
            )
        query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
        with self._sessions() as session:
            return [to_job(row) for row in session.scalars(query)]

    def mark_enqueued(self, job_id: str) -> None:
        """Stamp when a queued job was handed to the queue; a job no longer queued is left alone."""
        with self._sessions.begin() as session:
            self._update(
                session, job_id, JobRow.state == JobState.QUEUED.value, enqueued_at=utc_now()
            )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it had already finished."""
        now = utc_now()
        with self._sessions.begin() as session:
            return self._update(
                session,
                job_id,
                JobRow.state.in_([s.value for s in ACTIVE_STATES]),
                state=JobState.CANCELLED.value,
                lease=None,
                finished_at=now,
                error_code="cancelled",
                error_detail="cancelled by the client",
            )

    def mark_purged(self, job_id: str) -> None:
        """Record when the job's files were first deleted; a second DELETE keeps that time."""
        with self._sessions.begin() as session:
            self._update(session, job_id, JobRow.purged_at.is_(None), purged_at=utc_now())
            self._update(session, job_id, patient=None)

    def counts_by_state(self) -> dict[str, int]:
        """The number of job records in each state present (a state with none is absent), for
        metrics."""
        with self._sessions() as session:
            rows = session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
            return {state: int(count) for state, count in rows}

    # ---- worker side ----

    def claim(self, job_id: str, lease: str, stale_before: datetime) -> Claim:
        """Start an attempt: queued (or running with a dead heartbeat) -> running, attempts + 1."""
        now = utc_now()
        with self._sessions.begin() as session:
            claimed = self._update(
                session,
                job_id,
                _unheld(stale_before),
                JobRow.attempts < JobRow.max_attempts,
                state=JobState.RUNNING.value,
                attempts=JobRow.attempts + 1,
                lease=lease,
                message=None,
                progress_done=0,
                progress_total=0,
                started_at=now,
                heartbeat_at=now,
            )
            row = session.get(JobRow, job_id)
            if row is None:
                return Claim("missing")
            job = to_job(row)
        if claimed:
            return Claim("claimed", job)
        if job.finished:
            return Claim("finished", job)
        if job.state == JobState.RUNNING and job.heartbeat_at and job.heartbeat_at >= stale_before:
            return Claim("busy", job)
        self.fail_exhausted(job_id, stale_before)
        return Claim("exhausted", self.get(job_id))

    def heartbeat(
        self, job_id: str, lease: str, message: str | None, done: int, total: int
    ) -> bool:
        """Record progress (``message`` in words, ``done`` of ``total``); False once this attempt
        lost the job (cancelled, taken over)."""
        return self._update_leased(
            job_id,
            lease,
            message=message,
            progress_done=done,
            progress_total=total,
            heartbeat_at=utc_now(),
        )

    def succeed(
        self,
        job_id: str,
        lease: str,
        report: dict[str, Any],
        result_name: str,
        result_sha256: str,
        result_bytes: int,
        thumbnail_name: str | None,
    ) -> bool:
        """Mark the attempt's job succeeded with its result; progress 1000 of 1000 (the
        thousandths that heartbeats wrote, complete). False once the attempt lost the job."""
        now = utc_now()
        return self._update_leased(
            job_id,
            lease,
            state=JobState.SUCCEEDED.value,
            message="done",
            progress_done=PROGRESS_SCALE,
            progress_total=PROGRESS_SCALE,
            report=report,
            result_name=result_name,
            result_sha256=result_sha256,
            result_bytes=result_bytes,
            thumbnail_name=thumbnail_name,
            finished_at=now,
            heartbeat_at=now,
            lease=None,
        )

    def fail(self, job_id: str, lease: str, code: str, detail: str) -> bool:
        """Mark the job failed with an error code and detail; False when ``lease`` is no longer this
        attempt's (the job was taken over or cancelled)."""
        return self._update_leased(
            job_id,
            lease,
            state=JobState.FAILED.value,
            error_code=code,
            error_detail=detail,
            finished_at=utc_now(),
            lease=None,
        )

    def release(self, job_id: str, lease: str) -> bool:
        """Give a job back to the queue (worker shutting down); the attempt is not counted."""
        return self._update_leased(
            job_id,
            lease,
            state=JobState.QUEUED.value,
            attempts=JobRow.attempts - 1,
            lease=None,
            message=None,
            enqueued_at=None,
        )

    # ---- sweeper side ----

    def unheld_candidates(self, queued_before: datetime) -> list[str]:
        """Queued jobs last handed to a queue before ``queued_before`` (or never)."""
        query = select(JobRow.id).where(
            JobRow.state == JobState.QUEUED.value,
            or_(JobRow.enqueued_at.is_(None), JobRow.enqueued_at < queued_before),
            JobRow.created_at < queued_before,
        )
        with self._sessions() as session:
            return list(session.scalars(query.order_by(JobRow.created_at)))

    def stale_running(self, stale_before: datetime) -> list[Job]:
        """Running jobs whose last heartbeat is older than ``stale_before``: their worker was
        lost."""
        query = select(JobRow).where(
            JobRow.state == JobState.RUNNING.value, JobRow.heartbeat_at < stale_before
        )
        with self._sessions() as session:
            return [to_job(row) for row in session.scalars(query)]

    def requeue_lost(self, job_id: str, stale_before: datetime) -> bool:
        """A running job whose worker died goes back to queued (attempts are kept)."""
        with self._sessions.begin() as session:
            return self._update(
                session,
                job_id,
                JobRow.state == JobState.RUNNING.value,
                JobRow.heartbeat_at < stale_before,
                JobRow.attempts < JobRow.max_attempts,
                state=JobState.QUEUED.value,
                lease=None,
                message=None,
                enqueued_at=None,
            )

    def note_requeued(self, job_id: str) -> None:
        """Count one more requeue of a queued job and stamp its enqueue time; others are left
        alone."""
        with self._sessions.begin() as session:
            self._update(
                session,
                job_id,
                JobRow.state == JobState.QUEUED.value,
                enqueued_at=utc_now(),
                requeues=JobRow.requeues + 1,
            )

    def fail_exhausted(self, job_id: str, stale_before: datetime) -> bool:
        """Fail a job that used all its attempts (its workers died or were lost each time)."""
        with self._sessions.begin() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                return False
            detail = (
                f"the job was started {row.attempts} times (max_attempts={row.max_attempts}) "
                "and its worker was lost each time"
            )
            return self._update(
                session,
                job_id,
                JobRow.attempts >= JobRow.max_attempts,
                _unheld(stale_before),
                state=JobState.FAILED.value,
                error_code="attempts_exhausted",
                error_detail=detail,
                finished_at=utc_now(),
                lease=None,
            )

    def expired(self, finished_before: datetime) -> list[str]:
        """Ids of finished jobs that finished before ``finished_before``: past retention, to
        purge."""
        query = select(JobRow.id).where(
            JobRow.state.in_([s.value for s in FINISHED_STATES]),
            JobRow.finished_at < finished_before,
        )
        with self._sessions() as session:
            return list(session.scalars(query))

    def delete(self, job_id: str) -> None:
        """Delete the job's record (its files are the caller's); a missing job is fine."""
        with self._sessions.begin() as session:
            session.execute(delete(RegionRow).where(RegionRow.job_id == job_id))
            session.execute(delete(JobRow).where(JobRow.id == job_id))

    # ---- regions of a running attempt (service.jobs.regions) ----

    def open_regions(self, job_id: str, attempt: str, count: int) -> bool:
        """Record ``count`` pending regions for the attempt (dropping the job's older ones), while
        the attempt still holds the job; False once it lost it."""
        with self._sessions.begin() as session:
            held = session.scalar(
                select(func.count())
                .select_from(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.state == JobState.RUNNING.value,
                    JobRow.lease == attempt,
                )
            )
            if not held:
                return False
            session.execute(delete(RegionRow).where(RegionRow.job_id == job_id))
            session.add_all(
                RegionRow(job_id=job_id, attempt=attempt, region=i, state="pending", runs=0)
                for i in range(count)
            )
        return True

    def claim_region(
        self,
        job_id: str,
        attempt: str,
        lease: str,
        holder: str,
        stale_before: datetime,
        region: int | None = None,
    ) -> int | None:
        """Take ``region`` (or the first claimable one): pending, or running with a heartbeat
        older than ``stale_before`` (its worker was lost). Returns the region taken, or None."""
        claimable = or_(
            RegionRow.state == "pending",
            and_(RegionRow.state == "running", RegionRow.heartbeat_at < stale_before),
        )
        mine = and_(RegionRow.job_id == job_id, RegionRow.attempt == attempt)
        with self._sessions.begin() as session:
            query = select(RegionRow.region).where(mine, claimable)
            if region is not None:
                query = query.where(RegionRow.region == region)
            for candidate in session.scalars(query.order_by(RegionRow.region).limit(4)):
                result = session.execute(
                    update(RegionRow)
                    .where(mine, RegionRow.region == candidate, claimable)
                    .values(
                        state="running",
                        lease=lease,
                        holder=holder[:128],
                        runs=RegionRow.runs + 1,
                        heartbeat_at=utc_now(),
                    )
                )
                if getattr(result, "rowcount", 0):
                    return int(candidate)
        return None

    def _update_region(
        self, job_id: str, attempt: str, region: int, held_by: str, /, **values: Any
    ) -> bool:
        """Change a running region only while the lease ``held_by`` still holds it."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(RegionRow)
                .where(
                    RegionRow.job_id == job_id,
                    RegionRow.attempt == attempt,
                    RegionRow.region == region,
                    RegionRow.state == "running",
                    RegionRow.lease == held_by,
                )
                .values(**values)
            )
            return bool(getattr(result, "rowcount", 0))

    def beat_region(self, job_id: str, attempt: str, region: int, lease: str) -> bool:
        """A running region's heartbeat; False once another worker took it over."""
        return self._update_region(job_id, attempt, region, lease, heartbeat_at=utc_now())

    def finish_region(self, job_id: str, attempt: str, region: int, lease: str) -> bool:
        """Mark the region done (every tile of it in the canvases)."""
        return self._update_region(job_id, attempt, region, lease, state="done")

    def release_region(self, job_id: str, attempt: str, region: int, lease: str) -> bool:
        """Give the region back (its worker is shutting down): pending, for any worker."""
        return self._update_region(job_id, attempt, region, lease, state="pending", lease=None)

    def fail_region(
        self, job_id: str, attempt: str, region: int, lease: str, code: str, detail: str
    ) -> bool:
        """Record an error that is not transient; the attempt fails the job with it."""
        return self._update_region(
            job_id, attempt, region, lease, state="failed", error_code=code, error_detail=detail
        )

    def regions(self, job_id: str, attempt: str) -> list[RegionRow]:
        """The attempt's regions, in order."""
        query = select(RegionRow).where(RegionRow.job_id == job_id, RegionRow.attempt == attempt)
        with self._sessions() as session:
            return list(session.scalars(query.order_by(RegionRow.region)))

    def drop_regions(self, job_id: str, attempt: str) -> None:
        """Forget an attempt's regions (the attempt ended)."""
        with self._sessions.begin() as session:
            session.execute(
                delete(RegionRow).where(RegionRow.job_id == job_id, RegionRow.attempt == attempt)
            )


def _unheld(stale_before: datetime) -> ColumnElement[bool]:
    """Queued, or running with a heartbeat older than ``stale_before`` (its worker was lost)."""
    return or_(
        JobRow.state == JobState.QUEUED.value,
        and_(JobRow.state == JobState.RUNNING.value, JobRow.heartbeat_at < stale_before),
    )


def seconds_ago(seconds: float) -> datetime:
    """The UTC time ``seconds`` before now, for the store's age cut-offs."""
    return utc_now() - timedelta(seconds=seconds)
