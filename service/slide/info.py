"""Describe an image file for `dscm info`: levels, size and resolution (headers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyvips

from service.slide.reader import open_image, read_mpp_um, sniff_format


def describe(path: Path) -> dict[str, Any]:
    """Format, level sizes, bands, pixel type and microns per pixel of an image file."""
    first = open_image(path)
    pages = [first]
    if sniff_format(path) == "tiff":
        n_pages = int(first.get("n-pages")) if "n-pages" in first.get_fields() else 1
        pages += [pyvips.Image.tiffload(str(path), page=i) for i in range(1, n_pages)]
    levels = [
        {"width_px": p.width, "height_px": p.height, "downsample": round(first.width / p.width, 4)}
        for p in pages
        if p.bands == first.bands
    ]
    return {
        "path": str(path),
        "format": sniff_format(path),
        "width_px": first.width,
        "height_px": first.height,
        "bands": first.bands,
        "pixel_format": first.format,
        "mpp_um": read_mpp_um(first),
        "levels": levels,
    }
