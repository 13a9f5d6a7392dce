"""Where outbound webhooks may go: never to loopback, link-local, private or otherwise
non-public addresses (SSRF: the cloud metadata service, the database, the broker), unless the
operator lists the network in DSCM_WEBHOOK_ALLOWED_NETWORKS.

A URL is checked when a job names it and again, on its resolved addresses, each time it is
sent to; the sender then connects to the address it checked, so a DNS answer that changes in
between (rebinding) cannot move it onto an internal host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from service.runtime.integrations import IpNetwork
from service.vocabulary.errors import DscmError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(DscmError, ValueError):
    """A webhook URL that resolves nowhere or to an address outbound calls may not reach."""

    code = "callback_url_refused"
    http_status = 422
    title = "Callback URL refused"


def is_refused(address: IpAddress, allowed: Sequence[IpNetwork]) -> bool:
    """Whether ``address`` is non-public (and not in an allowed network)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed if network.version == address.version):
        return False
    return not address.is_global or address.is_multicast


def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to now (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrl(f"the host does not resolve: {exc}") from exc
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def checked_address(url: str, allowed: Sequence[IpNetwork]) -> IpAddress:
    """The address to connect to for ``url``; UnsafeUrl if any address it resolves to is
    refused (a host with one internal address among public ones is refused too)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl("must be an http or https URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(parts.hostname, port)
    refused = [a for a in addresses if is_refused(a, allowed)]
    if refused or not addresses:
        raise UnsafeUrl(
            f"{parts.hostname} resolves to a loopback, link-local or private address "
            f"({', '.join(map(str, refused))}); the operator may allow its network "
            "in DSCM_WEBHOOK_ALLOWED_NETWORKS"
        )
    return addresses[0]
