"""Signed webhook events: the signature, and one send to one receiver.

``Dscm-Signature: t=<unix time>,v1=<hex>`` where the hex is HMAC-SHA256 of
``<t>.<body>`` under the tenant's secret; during a rotation the operator configures two
secrets and the header carries one ``v1=`` for each. Receivers check it as docs/api.md shows.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from service import __version__
from service.delivery.addresses import IpAddress, UnsafeUrl, checked_address
from service.runtime.integrations import IpNetwork

SIGNATURE_HEADER = "Dscm-Signature"
EVENT_TYPES = ("job.succeeded", "job.failed", "job.delivered")


def signature(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """The ``Dscm-Signature`` value of ``body`` at ``timestamp``, one v1= per secret."""
    signed = f"{timestamp}.".encode() + body
    macs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={mac}" for mac in macs)])


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status: int | None
    error: str | None


def send_event(
    url: str,
    body: str,
    event_id: str,
    event_type: str,
    secrets: Sequence[str],
    timeout_s: float,
    allowed: Sequence[IpNetwork],
) -> SendResult:
    """POST one event; ok only for a 2xx answer within ``timeout_s``. Redirects are not
    followed (a 3xx is a failure), and the address is checked right before connecting."""
    try:
        address = checked_address(url, allowed)
    except UnsafeUrl as exc:
        return SendResult(False, None, exc.detail)
    payload = body.encode()
    parts = urlsplit(url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"dscm-webhooks/{__version__}",
        "Dscm-Event-Id": event_id,
        "Dscm-Event-Type": event_type,
        SIGNATURE_HEADER: signature(payload, secrets, int(time.time())),
        "Host": parts.netloc.rsplit("@", 1)[-1],
    }
    pinned = _pinned_url(url, address)
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST", pinned, content=payload, headers=headers, extensions=extensions
            )
            response = client.send(request)
    except httpx.TimeoutException:
        return SendResult(False, None, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return SendResult(False, None, f"cannot reach the receiver: {exc}")
    if 200 <= response.status_code < 300:
        return SendResult(True, response.status_code, None)
    return SendResult(False, response.status_code, f"the receiver answered {response.status_code}")


def _pinned_url(url: str, address: IpAddress) -> str:
    """``url`` with its host replaced by the checked address (the port kept)."""
    parts = urlsplit(url)
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def describe(url: str) -> str:
    """A receiver as logs may name it: scheme and host only (a query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"
