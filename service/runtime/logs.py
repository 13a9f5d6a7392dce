"""Structured logs for the API and the workers: one JSON object per line with job id and tenant.

The job id and tenant come from, in order: ``extra={"job_id": ..., "tenant": ...}`` on the call,
the innermost :func:`job_context`, and (job id only) the Celery task being executed, whose task
id starts with the job id. Messages are what the code logs; nothing here adds upload file names
or pixel data, and metric labels never carry job ids (see service.jobs.telemetry).

Wiring (at the process edges, service.cli):
- ``dscm serve``: ``configure_logging(fmt, level)`` then ``uvicorn.run(..., log_config=None)``;
- ``dscm worker``: ``install_celery_logging(fmt, level)`` before ``app.worker_main(argv)``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import unquote_plus

from service.vocabulary.case import CASE_FIELDS

LogFormat = Literal["text", "json"]

# service.jobs.queues.TASK_NAME, repeated so that this module does not import Celery.
STAIN_TASK_NAME = "dscm.stain_job"

_JOB_ID: ContextVar[str | None] = ContextVar("dscm_job_id", default=None)
_TENANT: ContextVar[str | None] = ContextVar("dscm_tenant", default=None)
_HOST = socket.gethostname()
_CHATTY_LOGGERS = ("pyvips",)
# A case's label or accession number in a query string (GET /v1/jobs?external_id=...), as
# uvicorn's access log would print it: they may identify a patient. Names are compared
# percent-decoded, as the API reads them (``external%5Fid=`` is the same filter).
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s\"]*)=([^&#\s\"]*)")
_REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "job_id", "tenant", "color_message", "taskName"}
)


@contextmanager
def job_context(job_id: str | None, tenant: str | None = None) -> Iterator[None]:
    """Every record logged inside (same thread or task) carries this job id and tenant."""
    job_token, tenant_token = _JOB_ID.set(job_id), _TENANT.set(tenant)
    try:
        yield
    finally:
        _JOB_ID.reset(job_token)
        _TENANT.reset(tenant_token)


def _celery_job_id() -> str | None:
    """The job id of the stain task this thread is executing, if Celery is loaded and busy."""
    state = sys.modules.get("celery._state")
    if state is None:
        return None
    task = state.get_current_task()
    if task is None or task.name != STAIN_TASK_NAME:
        return None
    task_id = getattr(task.request, "id", None)
    return str(task_id).split("-", 1)[0] if task_id else None


class ContextFilter(logging.Filter):
    """Sets ``record.job_id`` and ``record.tenant`` (None when unknown); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the job id and tenant from the record, the current context or the Celery task;
        always True."""
        record.job_id = getattr(record, "job_id", None) or _JOB_ID.get() or _celery_job_id()
        record.tenant = getattr(record, "tenant", None) or _TENANT.get()
        return True


class RedactCaseFilter(logging.Filter):
    """Replaces the values of case query parameters (``?external_id=``) in a record's message
    and string arguments, so that no access-log line carries a patient's identity."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact case values in the message and its string arguments; always True (nothing is
        dropped)."""
        if isinstance(record.msg, str):
            record.msg = redact_case(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_case(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_case(text: str) -> str:
    """``text`` with the value of every case query parameter replaced, however it is spelled."""
    return _QUERY_PARAM.sub(_redact_param, text) if "=" in text else text


def _redact_param(match: re.Match[str]) -> str:
    separator, name, _ = match.groups()
    if unquote_plus(name) not in CASE_FIELDS:
        return match.group(0)
    return f"{separator}{name}={_REDACTED}"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "job_id", "tenant", "host", "pid", ...extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line with the fixed fields, the record's extra fields and any exception text."""
        created = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "tenant": getattr(record, "tenant", None),
            "host": _HOST,
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc"] = record.exc_text
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format, with ``[job=... tenant=...]`` when a job is in hand."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The text line, with the job and tenant in brackets when known."""
        job_id, tenant = getattr(record, "job_id", None), getattr(record, "tenant", None)
        parts = [f"job={job_id}"] if job_id else []
        parts += [f"tenant={tenant}"] if tenant else []
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(
    fmt: LogFormat = "text", level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """One handler on the root logger (stderr by default); uvicorn and Celery loggers propagate.

    Calling it again replaces the handler it installed before; other handlers are left alone.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "dscm_handler", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.dscm_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactCaseFilter())
    root.addHandler(handler)
    root.setLevel(_level(level))
    # libvips reports every operation at INFO/DEBUG; those records are never wanted.
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)  # see service/slide/reader.py
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def install_celery_logging(fmt: LogFormat = "text", level: str | int = "INFO") -> None:
    """Make Celery's worker use :func:`configure_logging` instead of its own set-up.

    Connected to ``celery.signals.setup_logging``: while a receiver exists, Celery adds no
    handlers of its own. Call before ``worker_main``.
    """
    from celery.signals import setup_logging

    def _setup(loglevel: str | int | None = None, **_: Any) -> None:
        configure_logging(fmt, loglevel or level)

    setup_logging.connect(_setup, weak=False)
