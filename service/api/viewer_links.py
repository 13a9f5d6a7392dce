"""Signed viewer links: a short-lived HMAC token that lets a browser view one job of one tenant.

A token is ``dscmv1.<payload>.<signature>`` (base64url): the payload names the job, the tenant
and the expiry; the signature is HMAC-SHA256 under ``DSCM_VIEWER_SECRET``. It grants read access
to that job's record and Deep Zoom tiles only, never to the result download or the job list.
Without a configured secret each process signs with its own random key, so links die with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass

from service.runtime.config import Settings

TOKEN_PREFIX = "dscmv1."
log = logging.getLogger(__name__)


class LinkError(ValueError):
    """A token that is malformed, forged, or expired (``expired`` tells which)."""

    def __init__(self, detail: str, expired: bool = False) -> None:
        super().__init__(detail)
        self.expired = expired


@dataclass(frozen=True)
class LinkClaims:
    job_id: str
    tenant: str
    expires_at_s: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def is_link_token(credential: str) -> bool:
    """Whether a bearer credential is a viewer link token rather than an API key."""
    return credential.startswith(TOKEN_PREFIX)


class ViewerLinks:
    """Issues and checks viewer tokens with one process-wide secret."""

    def __init__(self, secret: bytes, max_ttl_s: float) -> None:
        if len(secret) < 32:
            raise ValueError("the viewer secret needs at least 32 bytes")
        self._secret = secret
        self.max_ttl_s = max_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ViewerLinks:
        """Links signed with DSCM_VIEWER_SECRET, or with a random per-process key when it is unset
        (links then die with the process; logged)."""
        if settings.viewer_secret is None:
            log.info(
                "DSCM_VIEWER_SECRET is unset: viewer links are signed with a per-process key "
                "and work only on this process until it restarts"
            )
            return cls(secrets.token_bytes(32), settings.viewer_link_ttl_s)
        secret = settings.viewer_secret.get_secret_value().encode()
        return cls(secret, settings.viewer_link_ttl_s)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(
        self, job_id: str, tenant: str, ttl_s: float | None = None, now_s: float | None = None
    ) -> tuple[str, float]:
        """Returns ``(token, expires_at_s)``; ``ttl_s`` is capped at the configured maximum."""
        life_s = min(ttl_s or self.max_ttl_s, self.max_ttl_s)
        expires_at_s = float(int((time.time() if now_s is None else now_s) + life_s))
        claims = {"job": job_id, "tenant": tenant, "exp": int(expires_at_s)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}", expires_at_s

    def verify(self, token: str, now_s: float | None = None) -> LinkClaims:
        """The claims of a genuine, unexpired token; LinkError otherwise."""
        if not is_link_token(token):
            raise LinkError("not a viewer link token")
        payload, _, signature = token.removeprefix(TOKEN_PREFIX).partition(".")
        if not payload or not signature:
            raise LinkError("malformed viewer link token")
        # Bytes, not str: compare_digest refuses str with non-ASCII characters (a 500).
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise LinkError("the viewer link's signature is not valid")
        try:
            claims = json.loads(_unb64(payload))
            job_id, tenant, expires = str(claims["job"]), str(claims["tenant"]), claims["exp"]
            expires_at_s = float(expires)
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise LinkError("malformed viewer link token") from exc
        if (time.time() if now_s is None else now_s) >= expires_at_s:
            raise LinkError("the viewer link has expired", expired=True)
        return LinkClaims(job_id, tenant, expires_at_s)
