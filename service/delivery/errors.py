"""The one error a send to an archive ends with (STOW-RS or C-STORE), whatever went wrong."""

from __future__ import annotations


class DeliveryError(Exception):
    """An attempt that did not store every instance; the message says why, in words an
    operator reads in ``delivery.last_error`` (never a secret, never a patient field)."""
