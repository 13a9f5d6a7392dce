"""What the operator configures for hospital integration: PACS destinations (DICOMweb STOW-RS)
and each tenant's share of them, its webhook receiver and the hosts its jobs may call back.

Secrets (a destination's password or token, a tenant's webhook keys) live in files named here
and are read when they are used, so rotating one is writing the file; they are never logged.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# An application entity title (PS3.5 AE): 1-16 characters, no backslash or control character,
# no leading or trailing space.
AE_TITLE_PATTERN = r"^[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?$"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST_PATTERN = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


def check_http_url(url: str) -> str:
    """``url`` if it is http(s) with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL")
    return url


def check_public_url(url: str) -> str:
    """The service's public URL without its trailing slash; ValueError unless it is an
    http(s) origin, optionally with a path, and without credentials, query or fragment."""
    parts = urlsplit(check_http_url(url))
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return url.rstrip("/")


class Destination(BaseModel):
    """One archive: DICOMweb STOW-RS (``POST {url}/studies``, the default) or DIMSE C-STORE
    (an association with ``ae_title`` at ``host:port``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="What jobs name in deliver_to")
    kind: Literal["stow-rs", "c-store"] = Field(
        default="stow-rs", description="DICOMweb STOW-RS over HTTP(S), or DIMSE C-STORE"
    )
    url: str | None = Field(
        default=None,
        description="stow-rs: the DICOMweb root, e.g. https://pacs.example.org/dicom-web",
    )
    ae_title: str | None = Field(
        default=None, pattern=AE_TITLE_PATTERN, description="c-store: the archive's AE title"
    )
    host: str | None = Field(default=None, min_length=1, description="c-store: its host")
    port: int | None = Field(default=None, ge=1, le=65535, description="c-store: its DICOM port")
    calling_ae_title: str = Field(
        default="DSCM", pattern=AE_TITLE_PATTERN, description="c-store: dscm's own AE title"
    )
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(default=None, description="For basic auth")
    secret_file: Path | None = Field(
        default=None, description="File holding the basic password or the bearer token"
    )
    verify_tls: bool = Field(default=True, description="Check the server's certificate")
    ca_file: Path | None = Field(default=None, description="CA bundle for a private PKI")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Per request")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value).rstrip("/")

    @model_validator(mode="after")
    def _kind(self) -> Destination:
        if self.kind == "stow-rs" and self.url is None:
            raise ValueError(f"destination {self.name}: stow-rs needs url")
        if self.kind == "c-store":
            if None in (self.ae_title, self.host, self.port) or self.url is not None:
                raise ValueError(f"destination {self.name}: c-store needs ae_title, host and port")
            if self.auth != "none" or self.ca_file is not None:
                raise ValueError(f"destination {self.name}: c-store has no auth or TLS here")
        return self

    @model_validator(mode="after")
    def _credentials(self) -> Destination:
        if self.auth == "basic" and (self.username is None or self.secret_file is None):
            raise ValueError(f"destination {self.name}: basic auth needs username and secret_file")
        if self.auth == "bearer" and self.secret_file is None:
            raise ValueError(f"destination {self.name}: bearer auth needs secret_file")
        for path in (self.secret_file, self.ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"destination {self.name}: {path} is not a readable file")
        return self


class TenantIntegration(BaseModel):
    """One tenant's destinations and webhooks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    destinations: list[str] = Field(
        default_factory=list, description="Destinations its jobs may name in deliver_to"
    )
    default_destination: str | None = Field(
        default=None, description="Where its DICOM jobs go when they name none"
    )
    webhook_url: str | None = Field(default=None, description="Receives every job's events")
    webhook_secret_files: list[Path] = Field(
        default_factory=list,
        max_length=2,
        description="HMAC keys, one per file; two while rotating (both sign every event)",
    )
    callback_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a job's callback_url may name (exact, or *.example.org)",
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("callback_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _HOST_PATTERN.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name (or *.domain)")
        return [host.lower() for host in value]

    @model_validator(mode="after")
    def _consistent(self) -> TenantIntegration:
        if self.default_destination and self.default_destination not in self.destinations:
            raise ValueError("default_destination must be one of destinations")
        if (self.webhook_url or self.callback_hosts) and not self.webhook_secret_files:
            raise ValueError("webhooks need webhook_secret_files (the signing keys)")
        for path in self.webhook_secret_files:
            if not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        return self

    def allows_callback_host(self, host: str) -> bool:
        """Whether a job's callback_url may name ``host`` (listed, or under a *.domain)."""
        host = host.lower().rstrip(".")
        for allowed in self.callback_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]):
                    return True
            elif host == allowed:
                return True
        return False


NO_INTEGRATION = TenantIntegration()


def check_destinations(
    destinations: list[Destination], tenants: dict[str, TenantIntegration]
) -> None:
    """ValueError for two destinations of one name or a tenant naming an unknown one."""
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ValueError("destination names must be unique")
    for tenant, integration in tenants.items():
        unknown = set(integration.destinations) - set(names)
        if unknown:
            raise ValueError(
                f"tenant {tenant}: unknown destination(s) {', '.join(sorted(unknown))}"
            )


class Integrations(BaseModel):
    """The content of DSCM_INTEGRATIONS_FILE."""

    model_config = ConfigDict(extra="forbid")

    destinations: list[Destination] = Field(default_factory=list)
    tenants: dict[str, TenantIntegration] = Field(default_factory=dict)


def read_integrations(path: Path) -> Integrations:
    """Destinations and tenants from a JSON file; relative secret and CA files are taken
    from the file's folder. ValueError (naming the file) for one that is unreadable or wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"DSCM_INTEGRATIONS_FILE {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"DSCM_INTEGRATIONS_FILE {path}: not a JSON object")
    folder = path.parent

    def rebase(value: object) -> object:
        """A non-empty file name made relative to the integrations file's folder."""
        return str(folder / value) if isinstance(value, str) and value else value

    for destination in data.get("destinations") or []:
        if isinstance(destination, dict):
            for key in ("secret_file", "ca_file"):
                if key in destination:
                    destination[key] = rebase(destination[key])
    for tenant in (data.get("tenants") or {}).values():
        if isinstance(tenant, dict) and isinstance(tenant.get("webhook_secret_files"), list):
            tenant["webhook_secret_files"] = [rebase(v) for v in tenant["webhook_secret_files"]]
    return Integrations.model_validate(data)


def read_secret(path: Path) -> str:
    """A secret file's content without the trailing newline an editor adds."""
    return path.read_text().strip()
