"""A DICOM series as a download: a zip of its instances, or DICOMweb's multipart/related.

Both are streamed from the published instance files (no copy of the series is made): the zip
stores the JPEG-coded instances as they are (no second compression), the multipart body is the
one a WADO-RS client or a STOW-RS server reads (PS3.18 8.6.1.2), one ``application/dicom`` part
per instance, with its Content-Length known in advance.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.jobs.files import series_files

CHUNK_BYTES = 1 << 20
ZIP_MEDIA_TYPE = "application/zip"
DICOM_MEDIA_TYPE = "application/dicom"
MULTIPART_MEDIA_TYPE = "multipart/related"


def wants_multipart(request: Request) -> bool:
    """Whether the client asked for DICOMweb's ``multipart/related; type=application/dicom``."""
    accept = request.headers.get("accept", "").lower()
    return MULTIPART_MEDIA_TYPE in accept and DICOM_MEDIA_TYPE in accept


def series_response(request: Request, folder: Path, download_stem: str) -> Response:
    """The series as multipart/related (when asked for it) or as a zip of its instances."""
    files = series_files(folder)
    if wants_multipart(request):
        boundary = uuid.uuid4().hex
        heads = [_part_head(boundary, path) for path in files]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(len(h) + p.stat().st_size for h, p in zip(heads, files, strict=True))
        media = f'{MULTIPART_MEDIA_TYPE}; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'
        return StreamingResponse(
            _multipart(heads, files, tail) if request.method != "HEAD" else iter(()),
            media_type=media,
            headers={"Content-Length": str(length + len(tail))},
        )
    disposition = f'attachment; filename="{download_stem}.dicom.zip"'
    return StreamingResponse(
        _zipped(files, download_stem) if request.method != "HEAD" else iter(()),
        media_type=ZIP_MEDIA_TYPE,
        headers={"Content-Disposition": disposition},
    )


def _part_head(boundary: str, path: Path) -> bytes:
    size = path.stat().st_size
    return (
        f"\r\n--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\nContent-Length: {size}\r\n\r\n"
    ).encode()


def _multipart(heads: list[bytes], files: list[Path], tail: bytes) -> Iterator[bytes]:
    for head, path in zip(heads, files, strict=True):
        yield head
        yield from _read(path)
    yield tail


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


class _Spool(io.RawIOBase):
    """A write-only stream the zip writer fills and the response drains between writes."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        """Always True: the zip writer writes here."""
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        """Append to the buffer; returns the bytes taken (all of them)."""
        self.buffer += data
        return len(data)

    def drain(self) -> bytes:
        """The bytes written since the last drain, emptying the buffer."""
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


def _zipped(files: list[Path], stem: str) -> Iterator[bytes]:
    """A zip (stored, ZIP64 where needed) written as it is sent, one chunk at a time."""
    spool = _Spool()
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{stem}/{path.name}")
            with archive.open(info, "w", force_zip64=True) as member:
                for chunk in _read(path):
                    member.write(chunk)
                    yield spool.drain()
            yield spool.drain()
    yield spool.drain()
