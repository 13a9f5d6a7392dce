"""Published files as responses: Range errors as problem+json, a file deleted meanwhile as 410.

Starlette's FileResponse answers a malformed Range with a text/plain 400 and an unsatisfiable
one with an empty 416; the same parser runs here first, so those become problems like every
other error, and the response then serves the ranges it accepted.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from service.api.problems import ApiError


def file_response(
    request: Request,
    path: Path,
    media_type: str,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
) -> FileResponse:
    """A FileResponse for ``path`` with Range checked; 410 purged when the file was deleted after
    the job was looked up."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:  # deleted between the job lookup and now
        raise ApiError(410, "purged", "the file was deleted") from exc
    response = FileResponse(
        path, media_type=media_type, filename=filename, headers=headers, stat_result=stat
    )
    check_range(request, response, stat.st_size)
    return response


def check_range(request: Request, response: FileResponse, size_bytes: int) -> None:
    """400 ``invalid_range`` / 416 ``range_not_satisfiable`` where FileResponse would answer
    them in plain text; a Range it ignores (If-Range mismatch, too many ranges) passes."""
    header = request.headers.get("range")
    if header is None or request.method not in ("GET", "HEAD"):
        return
    if_range = request.headers.get("if-range")
    if if_range is not None and not response._should_use_range(if_range):
        return
    try:
        FileResponse._parse_range_header(header, size_bytes)
    except MalformedRangeHeader as exc:
        raise ApiError(400, "invalid_range", f"{exc.content} (got {header[:100]!r})") from exc
    except RangeNotSatisfiable as exc:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the range starts past the end of the file ({size_bytes} bytes)",
            headers={"Content-Range": f"bytes */{size_bytes}"},
        ) from exc
