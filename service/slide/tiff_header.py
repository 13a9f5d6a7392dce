"""Small TIFF directory readers: an extent check for uploads, a resolution fix for outputs.

libvips reads TIFF data lazily, so a truncated upload would otherwise be noticed only when the
missing region is decoded. Reading the offset and byte-count tables (a few KB) catches it
before any pixel is decoded, which lets the API refuse the upload at once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.errors import CorruptSlide

_TYPE_SIZES = {1: 1, 3: 2, 4: 4, 16: 8}  # BYTE, SHORT, LONG, LONG8
_TYPE_CODES = {1: "B", 3: "H", 4: "I", 16: "Q"}
_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS = 273, 279, 324, 325
_WANTED = {_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS}


@dataclass(frozen=True)
class _Layout:
    """Byte order and field sizes of classic TIFF or BigTIFF, and the first directory."""

    order: str
    big: bool
    first_ifd: int

    @property
    def count_fmt(self) -> str:  # entries in a directory
        return "Q" if self.big else "H"

    @property
    def value_count_fmt(self) -> str:  # values in an entry
        return "Q" if self.big else "I"

    @property
    def offset_fmt(self) -> str:
        return "Q" if self.big else "I"

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def value_size(self) -> int:
        return 8 if self.big else 4


def _layout(head: bytes) -> _Layout:
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    if len(head) < (16 if big else 8):
        raise ValueError("TIFF header is truncated")
    first = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
    return _Layout(order, big, first)


def _read_directory(handle: BinaryIO, layout: _Layout, offset: int) -> tuple[int, bytes]:
    """The entry count and raw entry table of the directory at ``offset``."""
    handle.seek(offset)
    count_size = struct.calcsize(layout.count_fmt)
    n_entries = struct.unpack(layout.order + layout.count_fmt, handle.read(count_size))[0]
    return n_entries, handle.read(n_entries * layout.entry_size)


def check_tiff_extent(path: Path) -> None:
    """Raise CorruptSlide if page 0's image data extends past the end of the file."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
        if len(head) < 8:
            raise CorruptSlide(f"{path.name}: TIFF header is truncated")
        try:
            layout = _layout(head)
        except ValueError as exc:
            raise CorruptSlide(f"{path.name}: {exc}") from exc
        order, entry_size, value_size = layout.order, layout.entry_size, layout.value_size
        if layout.first_ifd + struct.calcsize(layout.count_fmt) > size:
            raise CorruptSlide(f"{path.name}: TIFF directory lies past the end of the file")
        n_entries, table = _read_directory(handle, layout, layout.first_ifd)
        if len(table) < n_entries * entry_size:
            raise CorruptSlide(f"{path.name}: TIFF directory is truncated")
        arrays: dict[int, list[int]] = {}
        for i in range(n_entries):
            entry = table[i * entry_size : (i + 1) * entry_size]
            tag, type_id = struct.unpack(order + "HH", entry[:4])
            if tag not in _WANTED or type_id not in _TYPE_SIZES:
                continue
            n_values = struct.unpack(order + layout.value_count_fmt, entry[4 : 4 + value_size])[0]
            raw_bytes = n_values * _TYPE_SIZES[type_id]
            value_field = entry[4 + value_size : 4 + 2 * value_size]
            if raw_bytes <= value_size:
                data = value_field[:raw_bytes]
            else:
                offset = struct.unpack(order + layout.offset_fmt, value_field)[0]
                if offset + raw_bytes > size:
                    raise CorruptSlide(f"{path.name}: TIFF offset table lies past end of file")
                handle.seek(offset)
                data = handle.read(raw_bytes)
            arrays[tag] = list(struct.unpack(order + _TYPE_CODES[type_id] * n_values, data))
    for offsets_tag, counts_tag in ((_STRIP_OFFSETS, _STRIP_COUNTS), (_TILE_OFFSETS, _TILE_COUNTS)):
        offsets, counts = arrays.get(offsets_tag), arrays.get(counts_tag)
        if offsets is None or counts is None:
            continue
        end = max((o + c for o, c in zip(offsets, counts, strict=False) if c), default=0)
        if end > size:
            raise CorruptSlide(
                f"{path.name}: truncated TIFF: image data needs {end} bytes, file has {size}"
            )


_XRES, _YRES, _WIDTH, _RATIONAL = 282, 283, 256, 5


def scale_level_resolutions(path: Path) -> None:
    """Make each page's X/YResolution match its own size (libvips copies level 0's to all).

    Overwrites the 8-byte RATIONAL values in place; the file's layout does not change.
    """
    with path.open("r+b") as handle:
        layout = _layout(handle.read(16))
        order, entry_size, value_size = layout.order, layout.entry_size, layout.value_size
        count_size = struct.calcsize(layout.count_fmt)
        ifd_offset, base_width = layout.first_ifd, 0
        while ifd_offset:
            n_entries, table = _read_directory(handle, layout, ifd_offset)
            next_offset = struct.unpack(order + layout.offset_fmt, handle.read(value_size))[0]
            width, rationals = 0, {}
            for i in range(n_entries):
                entry = table[i * entry_size : (i + 1) * entry_size]
                tag, type_id = struct.unpack(order + "HH", entry[:4])
                field = entry[4 + value_size : 4 + 2 * value_size]
                if tag == _WIDTH:
                    width = struct.unpack(
                        order + ("H" if type_id == 3 else "I"), field[: 2 if type_id == 3 else 4]
                    )[0]
                elif tag in (_XRES, _YRES) and type_id == _RATIONAL:
                    if layout.big:  # 8 bytes fit in the entry itself
                        rationals[tag] = ifd_offset + count_size + i * entry_size + 4 + value_size
                    else:
                        rationals[tag] = struct.unpack(order + "I", field)[0]
            base_width = base_width or width
            for location in rationals.values():
                handle.seek(location)
                numerator, denominator = struct.unpack(order + "II", handle.read(8))
                value = numerator / denominator * width / base_width
                handle.seek(location)
                handle.write(struct.pack(order + "II", round(value * 1000), 1000))
            ifd_offset = next_offset
