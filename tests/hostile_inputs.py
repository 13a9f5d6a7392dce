"""Hostile and broken inputs for the hardening tests: lying TIFF headers, undecodable data,
mutated bytes and multipart bodies (deterministic for a given random generator)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyvips
import tifffile

PX_PER_CM = 1e4 / 0.75  # 0.75 um/px, as the shipped models were trained at


def gray_tiff_bytes(
    height_px: int, width_px: int, seed: int = 0, compression: str | None = None, **options: object
) -> bytes:
    """A small textured 8-bit gray TIFF (with resolution tags) as bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height_px, 0:width_px]
    values = (100 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)) * rng.uniform(0.8, 1.0, xx.shape)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        values.astype(np.uint8),
        compression=compression,
        resolution=(PX_PER_CM, PX_PER_CM),
        resolutionunit="CENTIMETER",
        **options,  # type: ignore[arg-type]
    )
    return buffer.getvalue()


def undecodable_tiff(path: Path, height_px: int = 128, width_px: int = 128) -> Path:
    """A Deflate TIFF whose header and strip sizes are right but whose data is noise: it passes
    every header check, and fails only when its pixels are decoded."""
    path.write_bytes(gray_tiff_bytes(height_px, width_px, compression="zlib"))
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        chunks = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    for offset, count in chunks:
        data[offset : offset + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def mutate(data: bytes, rng: np.random.Generator, head_bytes: int = 512) -> bytes:
    """One random mutation of a file, mostly in its first ``head_bytes`` (header, directory)."""
    out = bytearray(data)
    kind = rng.integers(0, 6)
    limit = max(1, min(len(out), head_bytes))
    at = int(rng.integers(0, limit))
    if kind == 0:  # flip bits in a few bytes
        for i in rng.integers(0, limit, size=int(rng.integers(1, 8))):
            out[int(i)] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # a random 32-bit value (an offset, a count, a size)
        value = int(
            rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(0, 1 << 32))])
        )
        out[at : at + 4] = struct.pack("<I", value)
    elif kind == 2:  # cut the file
        out = out[: int(rng.integers(0, len(out)))]
    elif kind == 3:  # random bytes over a stretch
        length = int(rng.integers(1, 64))
        out[at : at + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    elif kind == 4:  # duplicate a stretch (repeated directory entries, shifted tables)
        length = int(rng.integers(1, 64))
        out[at:at] = out[at : at + length]
    else:  # a 16-bit field to a boundary value (tag, type, entry count)
        out[at : at + 2] = struct.pack("<H", int(rng.choice([0, 1, 3, 4, 16, 0xFFFF])))
    return bytes(out)


def lying_jpeg(path: Path, claimed_px: int = 7000) -> Path:
    """A 16 x 16 px gray JPEG whose frame header (SOF0) claims ``claimed_px`` square: libjpeg
    decodes the missing data as gray, with a warning only."""
    data = bytearray(_small_gray().jpegsave_buffer(Q=90))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, claimed_px, claimed_px)  # height, width
    path.write_bytes(bytes(data))
    return path


def lying_png(path: Path, claimed_px: int = 7000) -> Path:
    """A 16 x 16 px gray PNG whose IHDR claims ``claimed_px`` square (its CRC made right)."""
    data = bytearray(_small_gray().pngsave_buffer())
    struct.pack_into(">II", data, 16, claimed_px, claimed_px)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _small_gray() -> pyvips.Image:
    values = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    return pyvips.Image.new_from_array(values)
