"""Synthetic inputs for the engine tests: confocal-like pairs, hand-made TIFF headers."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyvips

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCAN = REPO / "samples" / "skin-scan"


def confocal_like(height: int, width: int, seed: int = 0, tissue_fraction: float = 0.6):
    """(fcm, rcm) float arrays in [0, 1]: blobs of tissue with bright nuclei, speckled RCM,
    background (zero) outside a tissue region covering about ``tissue_fraction`` of the width."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = (
        0.5 + 0.2 * np.sin(xx / 37.0 + 3 * np.sin(yy / 91.0)) + 0.15 * np.cos(yy / 23.0 + xx / 59.0)
    )
    nuclei = np.zeros((height, width), np.float32)
    for _ in range(max(1, height * width // 4000)):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        y0, y1, x0, x1 = max(cy - 4, 0), min(cy + 5, height), max(cx - 4, 0), min(cx + 5, width)
        nuclei[y0:y1, x0:x1] = 1.0
    tissue = (xx < tissue_fraction * width).astype(np.float32)
    fcm = np.clip((0.15 * texture + 0.6 * nuclei) * tissue, 0, 1)
    speckle = rng.normal(1.0, 0.2, (height, width)).astype(np.float32)
    rcm = np.clip(texture * 0.5 * speckle * tissue, 0, 1)
    return fcm, rcm


FIXTURE_MPP_UM = 0.75  # what test pairs say of their pixel size unless told otherwise


def write_gray(
    path: Path,
    unit: np.ndarray,
    dtype: str = "uint8",
    mpp_um: float | None = FIXTURE_MPP_UM,
    **options: object,
) -> Path:
    """A gray image file; with resolution tags for ``mpp_um`` (None: no tags) unless
    ``options`` set their own."""
    scale = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    array = (unit * scale).astype(dtype) if dtype != "float32" else unit.astype(np.float32)
    image = pyvips.Image.new_from_array(array)
    if mpp_um is not None and "xres" not in options:
        image = image.copy(xres=1000.0 / mpp_um, yres=1000.0 / mpp_um)
        if path.suffix.lower() in (".tif", ".tiff"):
            options = {"resunit": "cm", **options}
    image.write_to_file(str(path), **options)
    return path


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
