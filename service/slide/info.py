"""Describe an image file for `dscm info`: levels, size and resolution (headers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.slide.reader import pyramid_pages, read_mpp_um, sniff_format


def describe(path: Path) -> dict[str, Any]:
    """Format, level sizes, bands, pixel type and microns per pixel of an image file."""
    pages = pyramid_pages(path)
    first = pages[0]
    levels = [
        {"width_px": p.width, "height_px": p.height, "downsample": round(first.width / p.width, 4)}
        for p in pages
    ]
    mpp_um = read_mpp_um(first)
    return {
        "path": str(path),
        "format": sniff_format(path),
        "width_px": first.width,
        "height_px": first.height,
        "bands": first.bands,
        "pixel_format": first.format,
        "mpp_um": round(mpp_um, 4) if mpp_um is not None else None,
        "levels": levels,
    }
