"""Inputs for the engine tests: the sample scan, hand-made TIFF headers (synthetic pairs are
in support.pairs)."""

from __future__ import annotations

import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCAN = REPO / "samples" / "skin-scan"


def huge_header_tiff(path: Path, width: int, height: int) -> Path:
    """A small, valid-looking TIFF whose header declares width x height 8-bit pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: just after the IFD
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, type_id, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if type_id == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, type_id, count) + packed
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16)
    return path
