"""Pixel-data checks for JPEG and PNG uploads, like tiff_header's for TIFF.

libjpeg reads a JPEG whose frame header claims more pixels than its data holds as a "premature
end of data segment" warning and fills the rest with gray: a 16 x 16 px JPEG whose SOF says
7000 x 7000 would be stained as a blank slide. Counting the entropy-coded bytes against the
least a Huffman coder must spend per 8 x 8 block refuses such a file from its headers. A PNG
whose IDAT chunks cannot inflate to the rows its IHDR claims is refused the same way (libpng
would fail only when the job decodes it).
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from service.vocabulary.errors import CorruptSlide

# Huffman-coded frames: baseline, extended, progressive and lossless sequential. Each 8 x 8
# block of each component costs at least one bit in each of its scans (the shortest Huffman
# code is one bit; a progressive AC scan may run many blocks into one EOBRUN, but the DC scan
# codes every block). Arithmetic-coded (SOF9-11) and hierarchical frames have no such floor.
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2, 0xC3}
_OTHER_SOF = {0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
# Inside entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker
# (0xD0-0xD7); any other byte after 0xFF ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
# Deflate expands one byte into at most 1032; a little above it.
_DEFLATE_MAX_EXPANSION = 1100


@dataclass(frozen=True)
class _Frame:
    """A JPEG frame header: its SOF marker, size and each component's sampling factors."""

    marker: int
    width_px: int
    height_px: int
    sampling: list[tuple[int, int]]

    def blocks(self) -> int:
        """8 x 8 blocks over all components (subsampled ones cover fewer)."""
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        return sum(
            math.ceil(math.ceil(self.width_px * h / h_max) / 8)
            * math.ceil(math.ceil(self.height_px * v / v_max) / 8)
            for h, v in self.sampling
        )


def check_jpeg_extent(path: Path) -> None:
    """Raise CorruptSlide unless the JPEG's scans hold at least one bit per 8 x 8 block."""
    name = path.name
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        frame, scan_bytes = _jpeg_frame_and_scan_bytes(data, name)
    if frame is None:
        raise CorruptSlide(f"{name}: truncated JPEG: no frame header")
    if frame.marker not in _HUFFMAN_SOF or frame.height_px == 0:
        return  # no floor to check against (libvips refuses a height of 0 itself)
    blocks = frame.blocks()
    if scan_bytes * 8 < blocks:
        raise CorruptSlide(
            f"{name}: JPEG claims {frame.width_px} x {frame.height_px} px ({blocks} blocks of "
            f"8 x 8) but holds {scan_bytes} bytes of image data (at least one bit per block)"
        )


def _jpeg_frame_and_scan_bytes(data: mmap.mmap, name: str) -> tuple[_Frame | None, int]:
    """The first frame header and the number of entropy-coded bytes in all scans."""
    size = len(data)
    pos, frame, scan_bytes = 2, None, 0
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise CorruptSlide(f"{name}: corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker == _SOI or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) < length - 2:
            raise CorruptSlide(f"{name}: truncated JPEG: a marker segment runs past the end")
        if frame is None and (marker in _HUFFMAN_SOF or marker in _OTHER_SOF):
            frame = _frame(marker, segment, name)
        pos += 2 + length
        if marker == _SOS:
            end = _SCAN_END.search(data, pos)
            stop = end.start() if end else size
            scan_bytes += stop - pos
            pos = stop
    return frame, scan_bytes


def _frame(marker: int, segment: bytes, name: str) -> _Frame:
    if len(segment) < 6:
        raise CorruptSlide(f"{name}: truncated JPEG frame header")
    height_px, width_px = struct.unpack(">HH", segment[1:5])
    n_components = segment[5]
    table = segment[6 : 6 + 3 * n_components]
    if n_components == 0 or len(table) < 3 * n_components:
        raise CorruptSlide(f"{name}: truncated JPEG frame header")
    sampling = [(table[i + 1] >> 4, table[i + 1] & 0x0F) for i in range(0, len(table), 3)]
    if min(min(h, v) for h, v in sampling) == 0:
        raise CorruptSlide(f"{name}: corrupt JPEG frame header (a sampling factor of 0)")
    return _Frame(marker, width_px, height_px, sampling)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type


def check_png_extent(path: Path) -> None:
    """Raise CorruptSlide unless the PNG's IDAT chunks can inflate to the rows IHDR claims."""
    name = path.name
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(8) != _PNG_SIGNATURE:
            raise CorruptSlide(f"{name}: corrupt PNG signature")
        header, idat_bytes, pos = None, 0, 8
        while pos + 8 <= size:
            handle.seek(pos)
            length, kind = struct.unpack(">I4s", handle.read(8))
            if kind == b"IHDR":
                header = handle.read(13)
            elif kind == b"IDAT":
                idat_bytes += min(length, max(size - pos - 8, 0))
            elif kind == b"IEND":
                break
            pos += 12 + length
    if header is None or len(header) < 13:
        raise CorruptSlide(f"{name}: truncated PNG: no image header")
    width_px, height_px, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = _PNG_CHANNELS.get(colour_type, 4)
    row_bytes = 1 + math.ceil(width_px * channels * bit_depth / 8)  # a filter byte per row
    # Adam7 stores up to 7 passes, each with its own filter bytes: never fewer bytes than this.
    decoded_bytes = height_px * row_bytes if not interlace else height_px * (row_bytes - 1)
    if idat_bytes * _DEFLATE_MAX_EXPANSION < decoded_bytes:
        raise CorruptSlide(
            f"{name}: PNG claims {width_px} x {height_px} px ({decoded_bytes} bytes) but holds "
            f"{idat_bytes} bytes of image data (Deflate expands at most "
            f"{_DEFLATE_MAX_EXPANSION}:1)"
        )
