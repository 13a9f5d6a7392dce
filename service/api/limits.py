"""Limits every request meets: a body cap per route, bounded and timed body reads.

A route reads its body only after its dependencies checked the caller's credentials, and then
only up to its cap; a Content-Length above the cap is refused before anything is read. The caps
and the status each breach gets are listed in docs/api.md ("Limits").
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import ApiError, problem_response

MAX_HEAD_BYTES = 16 * 1024  # request line and headers together
MAX_JSON_BODY_BYTES = 16 * 1024  # every request but an upload: the viewer-link JSON is ~20 bytes
UPLOAD_OVERHEAD_BYTES = 64 * 1024  # form fields and part headers beside an upload's two files
UPLOAD_PATH = "/v1/jobs"
# Ask the server to close the connection after answering: the client may still be sending.
CLOSE = {"Connection": "close"}
_Model = TypeVar("_Model", bound=BaseModel)


def upload_body_cap(max_upload_bytes: int) -> int:
    """The most bytes a ``POST /v1/jobs`` body may have: the files' cap plus the form's."""
    return max_upload_bytes + UPLOAD_OVERHEAD_BYTES


def body_too_large(cap_bytes: int, what: str = "the request body") -> ApiError:
    """413 body_too_large naming what exceeded ``cap_bytes``, closing the connection."""
    return ApiError(413, "body_too_large", f"{what} exceeds {cap_bytes} bytes", headers=dict(CLOSE))


class RequestLimits:
    """ASGI middleware: a request head over MAX_HEAD_BYTES gets 431, a request whose
    Content-Length is over its route's cap gets 413, both at once.

    Nothing of the body is read, so this holds before authentication too. Bodies without a
    Content-Length (chunked) are counted by the route that reads them (``receive_form``,
    ``read_json_body``), after the credentials were checked. (A head that arrives in pieces is
    capped by the server itself: service.api.server.)
    """

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.upload_cap_bytes = upload_body_cap(max_upload_bytes)

    def cap_for(self, scope: Scope) -> int:
        """The body cap of the request's route: the upload cap for POST /v1/jobs,
        MAX_JSON_BODY_BYTES otherwise."""
        is_upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        return self.upload_cap_bytes if is_upload else MAX_JSON_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if _head_bytes(scope) > MAX_HEAD_BYTES:
                detail = f"the request line and headers exceed {MAX_HEAD_BYTES} bytes"
                response = problem_response(
                    scope["path"], 431, "head_too_large", "Request Header Fields Too Large", detail
                )
                await response(scope, receive, send)
                return
            cap = self.cap_for(scope)
            declared = _declared_length(scope)
            if declared is not None and declared > cap:
                if cap == self.upload_cap_bytes:
                    code, detail = "upload_too_large", f"the upload exceeds {cap} bytes"
                else:
                    code, detail = "body_too_large", f"the request body exceeds {cap} bytes"
                response = problem_response(
                    scope["path"], 413, code, "Content Too Large", detail, dict(CLOSE)
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _head_bytes(scope: Scope) -> int:
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


def _declared_length(scope: Scope) -> int | None:
    """Content-Length as an int (a malformed one never reaches the app: the server refuses it)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.strip()
            # More digits than any cap has: too large, without parsing a 4000-digit number.
            return int(text) if text.isdigit() and len(text) <= 18 else 1 << 62
    return None


async def body_chunks(
    request: Request, idle_timeout_s: float, deadline_s: float = math.inf
) -> AsyncIterator[bytes]:
    """The body as it arrives; 408 when nothing comes for ``idle_timeout_s`` or the whole body
    has not come ``deadline_s`` after the first wait (a client dripping bytes would otherwise
    hold its connection and upload folder for as long as it drips), 400 when the client goes
    away before the end."""
    stream = request.stream().__aiter__()
    deadline = time.monotonic() + deadline_s
    while True:
        left_s = deadline - time.monotonic()
        try:
            with anyio.fail_after(max(0.0, min(idle_timeout_s, left_s))):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            detail = (
                f"no body bytes arrived for {idle_timeout_s:g} s"
                if idle_timeout_s < left_s
                else f"the body did not arrive whole within {deadline_s:g} s "
                "(DSCM_UPLOAD_DEADLINE_S)"
            )
            raise ApiError(408, "request_timeout", detail, headers=dict(CLOSE)) from exc
        except ClientDisconnect as exc:
            raise ApiError(
                400, "body_incomplete", "the client disconnected before the body ended"
            ) from exc
        yield chunk


async def read_json_body(
    request: Request,
    model: type[_Model],
    idle_timeout_s: float,
    cap_bytes: int = MAX_JSON_BODY_BYTES,
    deadline_s: float = math.inf,
) -> _Model | None:
    """A small optional JSON body as ``model``: read only now, up to ``cap_bytes`` (413 past
    it), within the timeouts of body_chunks; an empty body is None; malformed JSON or fields
    are 422 ``invalid_request``."""
    body = bytearray()
    async for chunk in body_chunks(request, idle_timeout_s, deadline_s):
        body += chunk
        if len(body) > cap_bytes:
            raise body_too_large(cap_bytes)
    if not body.strip():
        return None
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        raise ApiError(422, "invalid_request", detail, extra={"errors": errors}) from exc
