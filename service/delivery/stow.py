"""DICOMweb STOW-RS (PS3.18 10.5): store a series' instances in an archive, one request each.

One instance per request keeps memory bounded (the body is streamed from the file) and makes
a retry cheap to reason about: the archive keys instances by SOP Instance UID, so sending a
series again after a failure stores each instance once, never twice.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from service import __version__
from service.delivery.errors import DeliveryError
from service.runtime.integrations import Destination, read_secret

_CHUNK_BYTES = 1 << 20
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"


def _auth(destination: Destination) -> tuple[httpx.Auth | None, dict[str, str]]:
    if destination.auth == "none" or destination.secret_file is None:
        return None, {}
    secret = read_secret(destination.secret_file)
    if destination.auth == "basic":
        return httpx.BasicAuth(destination.username or "", secret), {}
    return None, {"Authorization": f"Bearer {secret}"}


def _verify(destination: Destination) -> ssl.SSLContext | bool:
    if not destination.verify_tls:
        return False
    if destination.ca_file is not None:
        return ssl.create_default_context(cafile=str(destination.ca_file))
    return True


def _multipart(path: Path, boundary: str) -> tuple[Iterator[bytes], int]:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        """The multipart body: head, the file in chunks, tail (never the whole file in memory)."""
        yield head
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                yield chunk
        yield tail

    return chunks(), len(head) + path.stat().st_size + len(tail)


def _failure(response: httpx.Response) -> str | None:
    """Why a STOW answer is not a full success (None when it is)."""
    if response.status_code == 200:
        failed = _failed_sops(response)
        return f"the archive refused {failed} instance(s)" if failed else None
    if response.status_code == 202:
        failed = _failed_sops(response)
        return f"the archive refused {failed} instance(s) (202)" if failed else None
    text = response.text[:200].strip().replace("\n", " ")
    return f"the archive answered {response.status_code}" + (f": {text}" if text else "")


def _failed_sops(response: httpx.Response) -> int:
    try:
        body: Any = json.loads(response.content or b"{}")
    except ValueError:
        return 0
    items = body if isinstance(body, list) else [body]
    failed = 0
    for item in items:
        if isinstance(item, dict):
            failed += len((item.get(_FAILED_SOP_SEQUENCE) or {}).get("Value") or [])
    return failed


def stow_series(
    destination: Destination,
    instances: Sequence[Path],
    after_each: Callable[[int], None] = lambda _: None,
) -> None:
    """Send every instance to ``destination``; DeliveryError at the first that is not stored.

    ``after_each(n)`` runs after the n-th instance is stored (the dispatcher keeps its lease).
    """
    if destination.url is None:
        raise DeliveryError(f"destination {destination.name} has no DICOMweb url")
    auth, headers = _auth(destination)
    timeout = httpx.Timeout(destination.timeout_s)
    url = f"{destination.url}/studies"
    with httpx.Client(
        auth=auth, verify=_verify(destination), timeout=timeout, trust_env=False
    ) as client:
        for number, path in enumerate(instances, start=1):
            boundary = uuid.uuid4().hex
            body, length = _multipart(path, boundary)
            request_headers = {
                **headers,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Content-Length": str(length),
                "Accept": "application/dicom+json",
                "User-Agent": f"dscm/{__version__}",
            }
            where = f"instance {number} of {len(instances)}"
            try:
                response = client.post(url, content=body, headers=request_headers)
            except httpx.TimeoutException as exc:
                raise DeliveryError(
                    f"{where}: no answer within {destination.timeout_s:g} s ({type(exc).__name__})"
                ) from exc
            except httpx.HTTPError as exc:
                raise DeliveryError(f"{where}: {_reason(exc)}") from exc
            reason = _failure(response)
            if reason is not None:
                raise DeliveryError(f"{where}: {reason}")
            after_each(number)


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not trusted: {text}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}"
    return f"connection lost: {text}"
