"""Receive a multipart upload straight to disk, with a byte cap counted as it streams and a sha256.

Content-Length is never trusted: the cap is checked on the bytes actually received, and the
request is refused (413) as soon as it is passed, before the rest is read.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.api.limits import CLOSE, body_chunks, upload_body_cap
from service.api.problems import ApiError
from service.jobs.files import input_suffix

FILE_FIELDS = ("rcm", "fcm")
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
MAX_FILENAME_CHARS = 255


@dataclass
class ReceivedFile:
    field: str
    filename: str | None
    path: Path
    size_bytes: int = 0
    sha256: str = ""


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)


def too_large(max_bytes: int) -> ApiError:
    """413 for an upload over ``max_bytes``, closing the connection so the rest is not read."""
    return ApiError(
        413,
        "upload_too_large",
        f"the upload exceeds {max_bytes} bytes (DSCM_MAX_UPLOAD_BYTES)",
        headers=dict(CLOSE),
    )


def malformed(detail: str) -> ApiError:
    """400 malformed_multipart with the reason."""
    return ApiError(400, "malformed_multipart", detail)


def clean_filename(raw: str | None) -> str | None:
    """The client's file name for display only: base name, printable, bounded."""
    if raw is None:
        return None
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in base if ch.isprintable())[:MAX_FILENAME_CHARS]
    return text or None


class _Receiver:
    """python-multipart callbacks: one part at a time, files to disk, fields to memory."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.form = ReceivedForm()
        self.file_bytes = 0
        self.parts = 0
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._file: ReceivedFile | None = None
        self._handle: IO[bytes] | None = None
        self._hash: Any = None
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        """The callbacks python-multipart's parser calls, bound to this receiver."""
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        """Start a part; refuses (422) a form with more than MAX_PARTS parts."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(422, "too_many_fields", f"at most {MAX_PARTS} form parts are accepted")
        self._headers = {}
        self._name = None
        self._value = bytearray()

    def on_header_end(self) -> None:
        """Keep one complete header of the current part (name lowercased)."""
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(
            self._header_value
        )
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        """Decide where the part goes: a file field to a file in the upload folder, other fields to
        memory. Refuses a part without a form-data name (400) and a file field sent twice (422)."""
        disposition, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise malformed("each part needs Content-Disposition: form-data; name=...")
        self._name = name.decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name in FILE_FIELDS:
            if self._name in self.form.files:
                raise ApiError(
                    422, "duplicate_field", f"the file field {self._name!r} was sent twice"
                )
            display = clean_filename(filename.decode("utf-8", "replace") if filename else None)
            path = self.folder / f"{self._name}{input_suffix(display)}"
            self._file = ReceivedFile(self._name, display, path)
            self._handle = path.open("wb")
            self._hash = hashlib.sha256()
        elif filename is not None:
            detail = f"unknown file field {self._name!r}; send the images as rcm and fcm"
            raise ApiError(422, "unknown_option", detail)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        """Write file bytes to disk and hash them, or collect a field's value; refuses a file total
        over max_bytes (413) and a field over MAX_FIELD_BYTES (422)."""
        chunk = data[start:end]
        if self._handle is not None and self._file is not None:
            self.file_bytes += len(chunk)
            self._file.size_bytes += len(chunk)
            if self.file_bytes > self.max_bytes:
                raise too_large(self.max_bytes)
            self._hash.update(chunk)
            self._handle.write(chunk)
        else:
            self._value.extend(chunk)
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(422, "field_too_long", f"form field {self._name!r} is too long")

    def on_part_end(self) -> None:
        """Finish the part: close and record the file with its sha256, or store the field's
        value."""
        if self._file is not None and self._handle is not None:
            self._handle.close()
            self._file.sha256 = self._hash.hexdigest()
            self.form.files[self._file.field] = self._file
            self._file, self._handle = None, None
        elif self._name is not None:
            value = bytes(self._value).decode("utf-8", "replace")
            self.form.fields.setdefault(self._name, []).append(value)

    def on_end(self) -> None:
        """Note that the closing boundary arrived (a body cut short lacks it)."""
        self.ended = True

    def close(self) -> None:
        """Close a file left open by a body that ended mid-part."""
        if self._handle is not None:
            self._handle.close()


async def receive_form(
    request: Request,
    folder: Path,
    max_bytes: int,
    idle_timeout_s: float = 60.0,
    deadline_s: float = math.inf,
) -> ReceivedForm:
    """Parse a multipart/form-data request into ``folder``; 415/400/408/413/422 as ApiError
    (408: nothing for ``idle_timeout_s``, or not whole within ``deadline_s``).

    OSError (a full or failing disk) is left to the caller, which knows the storage.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the job as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise malformed("the multipart Content-Type has no boundary")
    receiver = _Receiver(folder, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    except FormParserError as exc:  # e.g. a boundary longer than the parser takes
        raise malformed(f"the multipart boundary is not usable: {exc}") from exc
    # Headers and form fields are bounded too, so the whole body has a cap a little above files'.
    body_cap = upload_body_cap(max_bytes)
    received = 0
    try:
        async for chunk in body_chunks(request, idle_timeout_s, deadline_s):
            received += len(chunk)
            if received > body_cap:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise malformed(f"the multipart body cannot be parsed: {exc}") from exc
    finally:
        receiver.close()
    if not receiver.ended:
        raise malformed("the multipart body ended early")
    return receiver.form
