"""service.runtime.logs: one JSON object per line, with the job id and tenant of the work
in hand."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from service.jobs.queues import TASK_NAME, task_id_for
from service.runtime.logs import (
    STAIN_TASK_NAME,
    configure_logging,
    install_celery_logging,
    job_context,
    redact_case,
)

JOB_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """configure_logging("json") into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_context(capture: io.StringIO) -> None:
    log = logging.getLogger("service.jobs.runner")
    log.info("outside any job")
    with job_context(JOB_ID, "alice-hospital"):
        log.warning("heartbeat failed: %s", "timeout\nsecond line")
    (outside, inside) = records(capture)
    assert outside["job_id"] is None and outside["tenant"] is None
    assert inside["job_id"] == JOB_ID and inside["tenant"] == "alice-hospital"
    assert inside["level"] == "WARNING" and inside["logger"] == "service.jobs.runner"
    assert inside["message"] == "heartbeat failed: timeout\nsecond line"
    assert inside["ts"].endswith("Z") and isinstance(inside["pid"], int) and inside["host"]


def test_extra_fields_win_and_exceptions_are_kept(capture: io.StringIO) -> None:
    log = logging.getLogger("service.api")
    with job_context("other", "other-tenant"):
        log.info("accepted", extra={"job_id": JOB_ID, "tenant": "bob-clinic", "size_bytes": 7})
    try:
        raise OSError("disk full")
    except OSError:
        log.exception("publish failed")
    accepted, failed = records(capture)
    assert (accepted["job_id"], accepted["tenant"], accepted["size_bytes"]) == (
        JOB_ID,
        "bob-clinic",
        7,
    )
    assert "OSError: disk full" in failed["exc"]


def test_context_is_restored_after_the_job(capture: io.StringIO) -> None:
    log = logging.getLogger("t")
    with job_context("a" * 32, "t1"):
        with job_context("b" * 32, "t2"):
            log.info("inner")
        log.info("outer")
    log.info("none")
    assert [(r["job_id"], r["tenant"]) for r in records(capture)] == [
        ("b" * 32, "t2"),
        ("a" * 32, "t1"),
        (None, None),
    ]


def test_reconfiguring_replaces_only_our_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        first = configure_logging("text", "INFO", stream=io.StringIO())
        second = configure_logging("json", "DEBUG", stream=io.StringIO())
        assert first not in root.handlers and second in root.handlers
        assert all(h in root.handlers for h in before)
        assert root.level == logging.DEBUG
        with pytest.raises(ValueError):
            configure_logging("xml", "INFO")  # type: ignore[arg-type]
    finally:
        root.handlers[:] = before


def test_text_format_shows_the_job_when_there_is_one() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("text", "INFO", stream=stream)
        with job_context(JOB_ID, "alice-hospital"):
            logging.getLogger("w").info("claimed")
        logging.getLogger("w").info("idle")
    finally:
        root.handlers[:] = before
        root.setLevel(level)
    claimed, idle = stream.getvalue().splitlines()
    assert claimed.endswith(f"w [job={JOB_ID} tenant=alice-hospital]: claimed")
    assert idle.endswith("w: idle")


def test_job_id_comes_from_the_running_stain_task(capture: io.StringIO) -> None:
    """In a worker, records logged inside the task carry its job id without any wiring."""
    assert STAIN_TASK_NAME == TASK_NAME
    app = Celery("t", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name=TASK_NAME)
    def stain_job(job_id: str) -> str:
        logging.getLogger("service.jobs.runner").info("running %s", job_id)
        return "ok"

    @app.task(name="other.task")
    def other() -> None:
        logging.getLogger("x").info("not a stain")

    stain_job.apply(args=[JOB_ID], task_id=task_id_for(JOB_ID))
    other.apply(task_id="ffffffffffffffffffffffffffffffff-1")
    by_logger = {(r["logger"], r["message"][:20]): r["job_id"] for r in records(capture)}
    assert by_logger[("service.jobs.runner", f"running {JOB_ID}"[:20])] == JOB_ID
    assert by_logger[("celery.app.trace", "Task dscm.stain_job[")] == JOB_ID  # "succeeded in"
    assert by_logger[("x", "not a stain")] is None
    assert by_logger[("celery.app.trace", "Task other.task[ffff")] is None


def test_celery_worker_logging_goes_through_our_handler() -> None:
    """With the receiver connected, Celery's set-up adds no handler of its own."""
    from celery.signals import setup_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    receivers = list(setup_logging.receivers)
    try:
        install_celery_logging("json", "INFO")
        app = Celery("t", set_as_current=False)
        app.log.already_setup = False
        app.log.setup_logging_subsystem(loglevel="INFO")
        ours = [h for h in root.handlers if getattr(h, "dscm_handler", False)]
        assert len(ours) == 1 and len(root.handlers) == len(before) + 1
    finally:
        setup_logging.receivers[:] = receivers
        root.handlers[:] = before
        root.setLevel(level)


def test_libvips_operation_chatter_is_never_logged() -> None:
    """pyvips' per-operation records are off even at DEBUG: formatting them re-enters logging
    (an image's repr logs), which deadlocked two handlers on two threads in CI."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("json", "INFO", stream=stream)
        logging.getLogger("pyvips").info("VIPS: shrinkv: using vector path")
        logging.getLogger("pyvips").warning("VIPS: truncated file")
        assert [r["message"] for r in records(stream)] == ["VIPS: truncated file"]
        configure_logging("json", "DEBUG", stream=stream)
        assert not logging.getLogger("pyvips").isEnabledFor(logging.INFO)
        assert logging.getLogger("pyvips").isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:] = before
        root.setLevel(level)
        logging.getLogger("pyvips").setLevel(logging.WARNING)


@pytest.mark.parametrize(
    "query",
    [
        "external_id=S24-01234",
        "external%5Fid=S24-01234",
        "%65xternal_id=S24-01234",
        "external%5fi%64=S24-01234",
        "state=failed&label=Left%20cheek",
        "l%61bel=Left+cheek&limit=5",
    ],
)
def test_case_values_are_redacted_however_the_name_is_spelled(query: str) -> None:
    """The API percent-decodes query names, so every spelling of a case field is the filter
    (issue 17: ``external%5Fid=`` reached the access log)."""
    line = f'127.0.0.1:5 - "GET /v1/jobs?{query} HTTP/1.1" 200'
    redacted = redact_case(line)
    assert "S24-01234" not in redacted and "cheek" not in redacted, redacted
    assert "=[redacted]" in redacted and redacted.endswith(' HTTP/1.1" 200')
    assert redact_case("GET /v1/jobs?state=failed&limit=5") == "GET /v1/jobs?state=failed&limit=5"
