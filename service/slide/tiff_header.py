"""Small TIFF directory readers: a pixel-data check for uploads, a resolution fix for outputs.

libvips reads TIFF data lazily, so a truncated upload would otherwise be noticed only when the
missing region is decoded, and a header that claims more pixels than its bytes can hold would be
"decoded" into a blank slide. Reading page 0's directory and its offset and byte-count tables
(a few KB) catches both before any pixel is decoded, which lets the API refuse the upload at once.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from service.vocabulary.errors import CorruptSlide

# BYTE, SHORT, LONG, IFD, LONG8, IFD8: the integer types offsets, counts and sizes come in.
_TYPE_CODES = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}
_WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC = 256, 257, 258, 259, 262
_STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS, _PLANAR = 273, 277, 278, 279, 284
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325
_SAMPLE_FORMAT = 339
_WANTED = {
    _WIDTH, _LENGTH, _BITS, _COMPRESSION, _PHOTOMETRIC, _STRIP_OFFSETS, _SAMPLES,
    _ROWS_PER_STRIP, _STRIP_COUNTS, _PLANAR, _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS,
    _TILE_COUNTS, _SAMPLE_FORMAT,
}  # fmt: skip
_SAMPLE_KINDS = {1: "unsigned", 2: "signed", 3: "float", 4: "undefined", 5: "complex signed",
                 6: "complex float"}  # fmt: skip
_MAX_ENTRIES = 1 << 16  # tags are 16-bit: a directory cannot hold more distinct ones
MAX_CHUNKS = 1 << 22  # strips or tiles of page 0 (400 MP in 16 x 16 px tiles is 1.6 M)
_UNCOMPRESSED, _YCBCR = 1, 6
# The most decoded bytes one coded byte can become, by TIFF compression code, a little above
# each codec's own limit: PackBits 128 from 2; LZW about 1360 (12-bit codes, reset at 4094
# entries); Deflate 1032; JPEG about 700 (2 bits per 8 x 8 block with 4:1:1 chroma).
_MAX_EXPANSION = {_UNCOMPRESSED: 1, 32773: 64, 5: 1500, 8: 1100, 32946: 1100, 6: 1100, 7: 1100}
# Codecs with no small limit (zstd, LZMA, WebP, JPEG 2000, ...): generous, and still far below
# what a header that claims a slide with next to no data behind it would need.
_OTHER_MAX_EXPANSION = 100_000
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class _Layout:
    """Byte order and field sizes of classic TIFF or BigTIFF, and the first directory."""

    order: str
    big: bool
    first_ifd: int

    @property
    def count_fmt(self) -> str:  # entries in a directory
        """struct format of a directory's entry count."""
        return "Q" if self.big else "H"

    @property
    def value_count_fmt(self) -> str:  # values in an entry
        """struct format of an entry's value count."""
        return "Q" if self.big else "I"

    @property
    def offset_fmt(self) -> str:
        """struct format of an offset."""
        return "Q" if self.big else "I"

    @property
    def entry_size(self) -> int:
        """Bytes in one directory entry."""
        return 20 if self.big else 12

    @property
    def value_size(self) -> int:
        """Bytes of an entry's inline value field (larger values are stored at an offset)."""
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


@dataclass(frozen=True)
class _Chunks:
    """Page 0's strips or tiles as the directory describes them, and what decoding needs."""

    kind: str  # "strip" or "tile"
    offsets: np.ndarray  # uint64, the chunks decoding reads (extra table entries dropped)
    counts: np.ndarray  # uint64
    needed: np.ndarray  # uint64, decoded bytes of each chunk
    decoded_bytes: int
    compression: int
    photometric: int


def check_tiff_extent(path: Path) -> None:
    """Raise CorruptSlide unless page 0's pixel data can exist in the file, whatever it claims.

    Every strip or tile must lie inside the file and hold at least one byte; uncompressed ones
    must each hold their full decoded size; together (overlaps counted once) they must span at
    least the decoded size divided by the most the codec can expand one byte into.
    """
    name = path.name
    size = path.stat().st_size
    with path.open("rb") as handle:
        try:
            tags = _read_first_directory(handle, size, name)
        except struct.error as exc:
            raise CorruptSlide(f"{name}: TIFF directory is truncated") from exc
    chunks = _page0_chunks(tags, name)
    _check_extent(chunks, size, name)
    _check_content(chunks, name)


def sample_description(path: Path) -> str | None:
    """Page 0's samples in words ("64-bit float"), or None where its directory is unreadable:
    for naming a sample format that libvips refuses with a message about something else."""
    try:
        with path.open("rb") as handle:
            tags = _read_first_directory(handle, path.stat().st_size, path.name)
    except (CorruptSlide, struct.error, OSError):
        return None
    bits, kinds = tags.get(_BITS), tags.get(_SAMPLE_FORMAT)
    if bits is None or not len(bits):
        return None
    kind = _SAMPLE_KINDS.get(int(kinds[0]) if kinds is not None and len(kinds) else 1, "unknown")
    return f"{int(bits.max())}-bit {kind}"


def _read_first_directory(handle: BinaryIO, size: int, name: str) -> dict[int, np.ndarray]:
    """The wanted integer tags of page 0, each as a uint64 array."""
    head = handle.read(16)
    if len(head) < 8:
        raise CorruptSlide(f"{name}: TIFF header is truncated")
    try:
        layout = _layout(head)
    except ValueError as exc:
        raise CorruptSlide(f"{name}: {exc}") from exc
    order, entry_size, value_size = layout.order, layout.entry_size, layout.value_size
    count_size = struct.calcsize(layout.count_fmt)
    if layout.first_ifd + count_size > size:
        raise CorruptSlide(f"{name}: TIFF directory lies past the end of the file")
    handle.seek(layout.first_ifd)
    n_entries = struct.unpack(order + layout.count_fmt, handle.read(count_size))[0]
    if n_entries > _MAX_ENTRIES or layout.first_ifd + n_entries * entry_size > size:
        raise CorruptSlide(f"{name}: TIFF directory is truncated")
    table = handle.read(n_entries * entry_size)
    if len(table) < n_entries * entry_size:
        raise CorruptSlide(f"{name}: TIFF directory is truncated")
    tags: dict[int, np.ndarray] = {}
    for i in range(n_entries):
        entry = table[i * entry_size : (i + 1) * entry_size]
        tag, type_id = struct.unpack(order + "HH", entry[:4])
        if tag not in _WANTED or type_id not in _TYPE_CODES:
            continue
        n_values = struct.unpack(order + layout.value_count_fmt, entry[4 : 4 + value_size])[0]
        if n_values > MAX_CHUNKS:
            raise CorruptSlide(f"{name}: TIFF tag {tag} has {n_values} values")
        item = np.dtype(order + _TYPE_CODES[type_id])
        raw_bytes = n_values * item.itemsize
        value_field = entry[4 + value_size : 4 + 2 * value_size]
        if raw_bytes <= value_size:
            data = value_field[:raw_bytes]
        else:
            offset = struct.unpack(order + layout.offset_fmt, value_field)[0]
            if offset + raw_bytes > size:
                raise CorruptSlide(f"{name}: TIFF offset table lies past end of file")
            handle.seek(offset)
            data = handle.read(raw_bytes)
        tags[tag] = np.frombuffer(data, dtype=item).astype(np.uint64)
    return tags


def _page0_chunks(tags: dict[int, np.ndarray], name: str) -> _Chunks:
    def first(tag: int, what: str, default: int | None = None) -> int:
        """The first value of a tag, ``default`` when absent; CorruptSlide when a required tag is
        missing."""
        values = tags.get(tag)
        if values is not None and len(values):
            return int(values[0])
        if default is None:
            raise CorruptSlide(f"{name}: TIFF has no {what}")
        return default

    width, height = first(_WIDTH, "ImageWidth"), first(_LENGTH, "ImageLength")
    samples = first(_SAMPLES, "SamplesPerPixel", 1)
    bits = int(tags[_BITS].max()) if len(tags.get(_BITS, ())) else 1
    if min(width, height, samples, bits) <= 0 or bits > 64:
        raise CorruptSlide(f"{name}: TIFF has no pixels ({width} x {height} px, {bits} bits)")
    planes = samples if first(_PLANAR, "PlanarConfiguration", 1) == 2 else 1
    chunk_samples = 1 if planes > 1 else samples
    offsets: np.ndarray | None
    if _TILE_OFFSETS in tags:
        kind, offsets, counts = "tile", tags[_TILE_OFFSETS], tags.get(_TILE_COUNTS)
        tile_w, tile_h = first(_TILE_WIDTH, "TileWidth"), first(_TILE_LENGTH, "TileLength")
        if min(tile_w, tile_h) <= 0:
            raise CorruptSlide(f"{name}: TIFF tiles of {tile_w} x {tile_h} px")
        per_plane = math.ceil(width / tile_w) * math.ceil(height / tile_h)
        full = last = tile_h * math.ceil(tile_w * chunk_samples * bits / 8)
    else:
        kind, offsets, counts = "strip", tags.get(_STRIP_OFFSETS), tags.get(_STRIP_COUNTS)
        rows = min(first(_ROWS_PER_STRIP, "RowsPerStrip", height), height) or height
        per_plane = math.ceil(height / rows)
        row_bytes = math.ceil(width * chunk_samples * bits / 8)
        full, last = rows * row_bytes, (height - (per_plane - 1) * rows) * row_bytes
    n_chunks = per_plane * planes
    if n_chunks > MAX_CHUNKS:
        raise CorruptSlide(f"{name}: TIFF page 0 has {n_chunks} {kind}s (at most {MAX_CHUNKS})")
    if offsets is None or counts is None:
        raise CorruptSlide(f"{name}: TIFF has no {kind} offsets or byte counts")
    if min(len(offsets), len(counts)) < n_chunks:
        raise CorruptSlide(
            f"{name}: truncated TIFF: {width} x {height} px needs {n_chunks} {kind}s, "
            f"the directory lists {min(len(offsets), len(counts))}"
        )
    needed = np.full(n_chunks, min(full, _UINT64_MAX), dtype=np.uint64)
    needed[per_plane - 1 :: per_plane] = min(last, _UINT64_MAX)
    return _Chunks(
        kind=kind,
        offsets=offsets[:n_chunks],
        counts=counts[:n_chunks],
        needed=needed,
        decoded_bytes=(per_plane - 1) * planes * full + planes * last,
        compression=first(_COMPRESSION, "Compression", _UNCOMPRESSED),
        photometric=first(_PHOTOMETRIC, "PhotometricInterpretation", 1),
    )


def _check_extent(chunks: _Chunks, size: int, name: str) -> None:
    """Every chunk inside the file (without overflowing uint64) and not empty."""
    file_bytes = np.uint64(size)
    past_end = (chunks.counts > file_bytes) | (chunks.offsets > file_bytes - chunks.counts)
    if past_end.any():
        i = int(np.argmax(past_end))
        end = int(chunks.offsets[i]) + int(chunks.counts[i])
        raise CorruptSlide(f"{name}: truncated TIFF: image data needs {end} bytes, file has {size}")
    empty = chunks.counts == 0
    if empty.any():
        raise CorruptSlide(f"{name}: TIFF {chunks.kind} {int(np.argmax(empty))} has no data")


def _check_content(chunks: _Chunks, name: str) -> None:
    """The chunks hold enough bytes to decode into the pixels the directory claims."""
    uncompressed = chunks.compression == _UNCOMPRESSED
    if uncompressed and chunks.photometric != _YCBCR:  # YCbCr may store subsampled chroma
        short = chunks.counts < chunks.needed
        if short.any():
            i = int(np.argmax(short))
            raise CorruptSlide(
                f"{name}: truncated TIFF: uncompressed {chunks.kind} {i} holds "
                f"{int(chunks.counts[i])} bytes, its pixels need {int(chunks.needed[i])}"
            )
    expansion = _MAX_EXPANSION.get(chunks.compression, _OTHER_MAX_EXPANSION)
    if uncompressed and chunks.photometric == _YCBCR:
        expansion = 3
    spanned = _spanned_bytes(chunks.offsets, chunks.counts)
    if spanned * expansion < chunks.decoded_bytes:
        raise CorruptSlide(
            f"{name}: TIFF claims {chunks.decoded_bytes} bytes of pixels but holds {spanned} "
            f"bytes of image data (compression {chunks.compression} expands at most "
            f"{expansion}:1)"
        )


def _spanned_bytes(offsets: np.ndarray, counts: np.ndarray) -> int:
    """How many distinct file bytes the chunks cover (chunks that overlap count once)."""
    order = np.argsort(offsets, kind="stable")
    starts, ends = offsets[order], offsets[order] + counts[order]
    reach = np.maximum.accumulate(ends)
    before = np.concatenate(([np.uint64(0)], reach[:-1]))
    fresh = ends.astype(np.int64) - np.maximum(starts, before).astype(np.int64)
    return int(np.clip(fresh, 0, None).sum())


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
