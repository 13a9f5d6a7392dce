"""RFC 9457 problem+json for every error (DscmError, HTTPException, validation); no tracebacks."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.vocabulary.errors import DscmError

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)


class ApiError(DscmError):
    """An HTTP-level error raised by the API itself (not found, conflict, auth...)."""

    def __init__(
        self,
        http_status: int,
        code: str,
        detail: str,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.http_status = http_status
        self.code = code
        self.title = title or HTTPStatus(http_status).phrase
        self.headers = headers or {}
        self.extra = extra or {}


def problem_body(path: str, status: int, code: str, title: str, detail: str) -> dict[str, Any]:
    """An RFC 9457 problem body; ``code`` is also the machine-readable type
    (urn:dscm:problem:<code>)."""
    return {
        "type": f"urn:dscm:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": path,
        "code": code,
    }


def problem_response(
    path: str,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response for a request path (also outside a route: middleware, server)."""
    body = problem_body(path, status, code, title, detail) | extra
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _code_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


async def handle_dscm_error(request: Request, exc: Exception) -> JSONResponse:
    """A DscmError as problem+json with its own status, code and headers; 5xx are logged."""
    assert isinstance(exc, DscmError)
    headers = getattr(exc, "headers", None)
    extra = getattr(exc, "extra", None) or {}
    if exc.http_status >= 500:
        log.error("%s %s: %s: %s", request.method, request.url.path, exc.code, exc.detail)
    return problem_response(
        request.url.path, exc.http_status, exc.code, exc.title, exc.detail, headers, **extra
    )


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's HTTP errors (404 route, 405) as problem+json with a code made from the status."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(
        request.url.path, status, _code_for_status(status), phrase, detail, headers
    )


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Request validation errors as one 422 invalid_request, listing each error's location and
    message."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return problem_response(
        request.url.path, 422, "invalid_request", "Invalid request", detail, errors=errors
    )


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any other exception as a 500 that logs the traceback and shows the client no internals."""
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request.url.path,
        500,
        "internal_error",
        "Internal Server Error",
        "unexpected error; see the server log",
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers, so no error leaves the API in another format."""
    app.add_exception_handler(DscmError, handle_dscm_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected)
