"""Storage failures as API answers: a full disk is 507 with a code, never an internal error."""

from __future__ import annotations

import errno
import shutil

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from service.api.limits import CLOSE
from service.api.problems import ApiError
from service.jobs.files import JobFiles

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_AFTER_S = 60


def storage_full(detail: str) -> ApiError:
    """507 storage_full with Retry-After, closing the connection."""
    return ApiError(
        507,
        "storage_full",
        f"{detail}; try again later",
        headers={"Retry-After": str(RETRY_AFTER_S), **CLOSE},
    )


def storage_error(exc: OSError | SQLAlchemyError) -> ApiError:
    """507 ``storage_full`` for no space (or quota) left, on the storage or in SQLite; else 503
    ``storage_unavailable`` (files) or ``database_unavailable``."""
    if isinstance(exc, OSError):
        if exc.errno in NO_SPACE:
            return storage_full("the server's storage is full")
        reason = exc.strerror or type(exc).__name__
        return ApiError(503, "storage_unavailable", f"the server's storage failed: {reason}")
    if "database or disk is full" in str(exc):
        return storage_full("the job database's disk is full")
    return ApiError(503, "database_unavailable", "the job database cannot be written now")


def require_room_for(request: Request, files: JobFiles) -> None:
    """507 before reading an upload whose Content-Length is more than the free space."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or len(declared) > 18:
        return
    try:
        free_bytes = shutil.disk_usage(files.tmp).free
    except OSError as exc:
        raise storage_error(exc) from exc
    if int(declared) > free_bytes:
        raise storage_full(f"the upload needs {declared} bytes, the storage has {free_bytes} free")
