"""A disk-backed RGB or gray canvas: an uncompressed strip BigTIFF that tiles are written into.

Tiles go in with ``pwrite`` (no memory mapping, so the process's memory does not grow with the
slide), and libvips later streams the file sequentially into the pyramid. The file is
preallocated, so a full disk fails when the canvas is created, not half-way through a slide.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

ROWS_PER_STRIP = 16
_SHORT, _LONG, _LONG8 = 3, 4, 16
_DATA_ALIGN_BYTES = 4096


def _entry(tag: int, type_id: int, count: int, value: bytes) -> bytes:
    return struct.pack("<HHQ", tag, type_id, count) + value.ljust(8, b"\0")


def _header(width_px: int, height_px: int, bands: int) -> tuple[bytes, int]:
    """The TIFF header, directory and strip tables; returns them and the pixel data offset."""
    n_strips = -(-height_px // ROWS_PER_STRIP)
    row_bytes = width_px * bands
    n_entries = 10
    ifd_offset = 16
    tables_offset = ifd_offset + 8 + n_entries * 20 + 8
    offsets_at, counts_at = tables_offset, tables_offset + 8 * n_strips
    data_offset = -(-(counts_at + 8 * n_strips) // _DATA_ALIGN_BYTES) * _DATA_ALIGN_BYTES
    offsets = [data_offset + i * ROWS_PER_STRIP * row_bytes for i in range(n_strips)]
    counts = [
        min(ROWS_PER_STRIP, height_px - i * ROWS_PER_STRIP) * row_bytes for i in range(n_strips)
    ]
    short = lambda v: struct.pack("<H", v)  # noqa: E731
    entries = [
        _entry(256, _LONG, 1, struct.pack("<I", width_px)),
        _entry(257, _LONG, 1, struct.pack("<I", height_px)),
        _entry(258, _SHORT, bands, struct.pack(f"<{bands}H", *([8] * bands))),
        _entry(259, _SHORT, 1, short(1)),  # no compression
        _entry(262, _SHORT, 1, short(2 if bands == 3 else 1)),  # RGB or min-is-black
        _entry(273, _LONG8, n_strips, struct.pack("<Q", offsets_at)),
        _entry(277, _SHORT, 1, short(bands)),
        _entry(278, _LONG, 1, struct.pack("<I", ROWS_PER_STRIP)),
        _entry(279, _LONG8, n_strips, struct.pack("<Q", counts_at)),
        _entry(284, _SHORT, 1, short(1)),  # interleaved
    ]
    if n_strips == 1:  # a single LONG8 fits in the entry: TIFF then stores it inline
        entries[5] = _entry(273, _LONG8, 1, struct.pack("<Q", offsets[0]))
        entries[8] = _entry(279, _LONG8, 1, struct.pack("<Q", counts[0]))
    head = b"II" + struct.pack("<HHHQ", 43, 8, 0, ifd_offset)
    ifd = struct.pack("<Q", n_entries) + b"".join(entries) + struct.pack("<Q", 0)
    tables = struct.pack(f"<{n_strips}Q", *offsets) + struct.pack(f"<{n_strips}Q", *counts)
    return head + ifd + tables, data_offset


class DiskCanvas:
    """``height x width`` RGB (or gray) pixels in a TIFF file, written by tile."""

    def __init__(
        self, path: Path, width_px: int, height_px: int, bands: int = 3, create: bool = True
    ) -> None:
        """``create``: a new, preallocated file (refused when one exists); otherwise the canvas
        another process created at ``path`` with the same size, opened to write more tiles."""
        if bands not in (1, 3):
            raise ValueError(f"a canvas has 1 or 3 bands, not {bands}")
        self.path, self.width_px, self.height_px, self.bands = path, width_px, height_px, bands
        header, self.data_offset = _header(width_px, height_px, bands)
        if not create:
            self.fd = os.open(path, os.O_RDWR)
            if os.fstat(self.fd).st_size < self.data_offset + width_px * height_px * bands:
                self.close()
                raise ValueError(f"{path} is not a {width_px} x {height_px} x {bands} canvas")
            return
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(self.fd, 0, self.data_offset + width_px * height_px * bands)
            os.pwrite(self.fd, header, 0)
        except OSError:
            self.close()
            raise

    def write(self, l0_x: int, l0_y: int, pixels: np.ndarray) -> None:
        """Place an ``(h, w, bands)`` uint8 block with its top-left corner at (l0_x, l0_y)."""
        block = np.ascontiguousarray(pixels, dtype=np.uint8)
        row_bytes = self.width_px * self.bands
        start = self.data_offset + l0_y * row_bytes + l0_x * self.bands
        if block.shape[1] == self.width_px:  # whole rows: one write
            os.pwrite(self.fd, block.tobytes(), start)
            return
        for row in range(block.shape[0]):
            os.pwrite(self.fd, block[row].tobytes(), start + row * row_bytes)

    def flush(self) -> None:
        """Make the pixels written so far durable and visible to readers on other hosts (a
        shared file system), before the tile ledger says they are there."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the canvas file; closing twice is fine."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_canvas(path: Path, width_px: int, height_px: int, bands: int = 3) -> np.ndarray:
    """A read-only ``(height, width, bands)`` view of a canvas's pixels (memory-mapped: a crop
    reads only its rows); ValueError when the file is not such a canvas. Only pixels the writer
    has finished (a live folder's ledger says which) are meaningful."""
    data_offset = _header(width_px, height_px, bands)[1]
    if path.stat().st_size < data_offset + width_px * height_px * bands:
        raise ValueError(f"{path} is not a {width_px} x {height_px} x {bands} canvas")
    return np.memmap(path, np.uint8, "r", data_offset, (height_px, width_px, bands))
