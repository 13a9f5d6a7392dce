"""DICOM C-STORE (PS3.4 Annex B, PS3.7 9.1.1): store a series' instances in an archive over
one DIMSE association, for PACS that speak no DICOMweb.

Each instance is streamed from its file as stored (its own transfer syntax, JPEG baseline for
dscm's series: nothing is decoded or transcoded), so memory stays bounded. As with STOW-RS, the
archive keys instances by SOP Instance UID: a retry after a partial attempt stores each
instance once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.association import Association

from service.delivery.errors import DeliveryError
from service.runtime.integrations import Destination

# Send each file's bytes as they are instead of decoding the dataset and encoding it again.
_config.STORE_SEND_CHUNKED_DATASET = True
# pynetdicom describes every association and message at INFO and a refused connection at
# ERROR; the dispatcher logs each failed attempt itself, and a debug dump of a dataset would
# show its patient fields.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

_SUCCESS = 0x0000
# Stored, with a warning (PS3.4 B.2.3): coerced attributes, elements discarded, not checked.
_STORED_WITH_WARNING = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


def cstore_series(
    destination: Destination,
    instances: Sequence[Path],
    after_each: Callable[[int], None] = lambda _: None,
) -> None:
    """Send every instance to ``destination`` over one association; DeliveryError at the first
    that is not stored. ``after_each(n)`` runs after the n-th instance is stored."""
    if destination.ae_title is None or destination.host is None or destination.port is None:
        raise DeliveryError(f"destination {destination.name} has no AE title, host or port")
    contexts = sorted({_context(path) for path in instances})
    entity = AE(ae_title=destination.calling_ae_title)
    for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(entity, timeout, destination.timeout_s)
    for sop_class, transfer_syntax in contexts:
        entity.add_requested_context(sop_class, transfer_syntax)
    peer = f"{destination.ae_title} at {destination.host}:{destination.port}"
    association = entity.associate(
        destination.host, destination.port, ae_title=destination.ae_title
    )
    if not association.is_established:
        raise DeliveryError(_refusal(association, peer))
    try:
        for number, path in enumerate(instances, start=1):
            where = f"instance {number} of {len(instances)}"
            try:
                status = association.send_c_store(path)
            except (RuntimeError, ValueError) as exc:  # no accepted context, association lost
                raise DeliveryError(f"{where}: {exc}") from exc
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise DeliveryError(
                    f"{where}: no answer from {peer} within {destination.timeout_s:g} s "
                    "(or the association was aborted)"
                )
            if code != _SUCCESS and code not in _STORED_WITH_WARNING:
                raise DeliveryError(f"{where}: the archive answered status 0x{code:04X}")
            after_each(number)
    finally:
        if association.is_established:
            association.release()
        entity.shutdown()


def _context(path: Path) -> tuple[str, str]:
    """The SOP class and transfer syntax an instance file is stored in."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _refusal(association: Association, peer: str) -> str:
    """Why no association was established, in words."""
    if association.is_rejected:
        return f"{peer} rejected the association (AE title or presentation context not accepted)"
    # pynetdicom reports a refused or timed-out connection as an aborted association
    return f"cannot connect to {peer} (or it aborted the association)"
