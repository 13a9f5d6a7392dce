"""What a new job sends out when it is done: its delivery (``deliver_to``, or the tenant's
default for a DICOM job) and its events (the tenant's webhook, the job's ``callback_url``).

Checked at submit time against the operator's settings, so a job that could never be
delivered or called back is refused with 422 naming the field; recorded in the same
transaction as the job (service.delivery.outbox), so nothing is lost in a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from service.api.problems import ApiError
from service.api.schemas import JobCreate
from service.delivery.addresses import UnsafeUrl, checked_address
from service.delivery.outbox import new_delivery, new_hook
from service.runtime.config import Settings


@dataclass(frozen=True)
class Outbound:
    """A new job's delivery destination and whether anyone wants its events."""

    destination: str | None
    callback_url: str | None
    hooked: bool

    def rows(self, job_id: str, tenant: str) -> list[Any]:
        """The rows to write with the job."""
        rows: list[Any] = []
        if self.destination is not None:
            rows.append(new_delivery(job_id, tenant, self.destination))
        if self.hooked:
            rows.append(new_hook(job_id, tenant, self.callback_url))
        return rows


def field_error(status: int, code: str, field: str, message: str) -> ApiError:
    """A 422 problem that names the form field (never its value) in detail and ``errors``."""
    errors = [{"loc": [field], "msg": message, "type": code}]
    return ApiError(status, code, f"{field}: {message}", extra={"errors": errors})


def check_destination(settings: Settings, tenant: str, name: str) -> str:
    """``name`` if this tenant may deliver there; one 422 for unknown and not allowed alike,
    so a tenant never learns another tenant's destinations."""
    allowed = settings.integration(tenant).destinations
    if name not in allowed or settings.destination(name) is None:
        shown = ", ".join(allowed) if allowed else "none"
        raise field_error(
            422,
            "destination_not_allowed",
            "deliver_to",
            f"not a destination this tenant may use (allowed: {shown})",
        )
    return name


def check_outbound(options: JobCreate, tenant: str, settings: Settings) -> Outbound:
    """The job's outbound plan; ApiError 422 naming ``deliver_to`` or ``callback_url``.

    Resolves the callback host (DNS), so call it off the event loop.
    """
    integration = settings.integration(tenant)
    destination = options.deliver_to
    if destination is not None:
        check_destination(settings, tenant, destination)
        if options.output_format != "dicom":
            raise field_error(
                422, "invalid_option", "deliver_to", "needs output_format=dicom (a DICOM series)"
            )
    elif options.output_format == "dicom":
        destination = integration.default_destination
    callback_url = options.callback_url
    if callback_url is not None:
        check_callback_url(settings, tenant, callback_url)
    hooked = bool(integration.webhook_url or callback_url)
    return Outbound(destination, callback_url, hooked)


def check_callback_url(settings: Settings, tenant: str, url: str) -> None:
    """A callback URL must be http(s), name a host the operator listed for the tenant, and
    resolve only to addresses outbound calls may reach (service.delivery.addresses)."""
    integration = settings.integration(tenant)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise field_error(422, "invalid_option", "callback_url", "must be an http or https URL")
    if parts.username or parts.password:
        raise field_error(422, "invalid_option", "callback_url", "must not carry credentials")
    if not integration.webhook_secret_files or not integration.allows_callback_host(parts.hostname):
        raise field_error(
            422,
            "callback_not_allowed",
            "callback_url",
            "its host is not one the operator allows this tenant to call back",
        )
    try:
        checked_address(url, settings.webhook_allowed_networks)
    except UnsafeUrl as exc:
        raise field_error(422, exc.code, "callback_url", exc.detail) from exc
