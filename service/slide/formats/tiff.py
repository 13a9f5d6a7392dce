"""The TIFF output formats: a page-per-level pyramid (OpenSlide's generic tiled TIFF) and an
OME-TIFF (a SubIFD pyramid with OME-XML, for Bio-Formats and QuPath)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape

import pyvips

from service.slide.tiff_header import scale_level_resolutions
from service.vocabulary.options import Compression

if TYPE_CHECKING:
    from service.slide.writer import PyramidWriter

TIFF_TILE_PX = 256


def encode_tiff(
    writer: PyramidWriter, image: pyvips.Image, compression: Compression, quality: int
) -> None:
    """A page-per-level pyramid, levels' resolutions scaled, the case in every level's
    ImageDescription."""
    if writer.description is not None:
        image = image.copy()
        image.set_type(pyvips.GValue.gstr_type, "image-description", writer.description)
    image.tiffsave(str(writer.tmp_path), **tiff_options(writer.mpp_um, compression, quality))
    scale_level_resolutions(writer.tmp_path)


def encode_ome_tiff(
    writer: PyramidWriter, image: pyvips.Image, compression: Compression, quality: int
) -> None:
    """A SubIFD pyramid with OME-XML (Bio-Formats, QuPath)."""
    image = image.copy()
    image.set_type(pyvips.GValue.gstr_type, "image-description", ome_xml(writer))
    options = tiff_options(writer.mpp_um, compression, quality) | {"subifd": True}
    image.tiffsave(str(writer.tmp_path), **options)


def tiff_options(mpp_um: float, compression: Compression, jpeg_quality: int) -> dict[str, object]:
    """libvips' tiffsave options for a tiled pyramidal BigTIFF at ``mpp_um``."""
    px_per_mm = 1000.0 / mpp_um
    options: dict[str, object] = {
        "tile": True,
        "tile_width": TIFF_TILE_PX,
        "tile_height": TIFF_TILE_PX,
        "pyramid": True,
        "bigtiff": True,
        "xres": px_per_mm,
        "yres": px_per_mm,
        "resunit": "cm",
    }
    if compression == "jpeg":
        options.update(compression="jpeg", Q=jpeg_quality)
    else:
        options.update(compression="deflate", predictor="horizontal")
    return options


def ome_xml(writer: PyramidWriter) -> str:
    """The OME-XML of one image: size, bands, pixel size, the case as its Description."""
    mpp = f"{writer.mpp_um:.6g}"
    description = ""
    if writer.description is not None:
        description = f"<Description>{xml_escape(writer.description)}</Description>"
    bands = writer.bands
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0" Name="dscm stain">'
        f"{description}"
        '<Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
        f'Type="uint8" SizeX="{writer.width_px}" SizeY="{writer.height_px}" SizeC="{bands}" '
        'SizeZ="1" '
        f'SizeT="1" Interleaved="{str(bands > 1).lower()}" PhysicalSizeX="{mpp}" '
        'PhysicalSizeXUnit="µm" '
        f'PhysicalSizeY="{mpp}" PhysicalSizeYUnit="µm">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="{bands}"><LightPath/></Channel>'
        '<TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>'
    )


def fsync_file(path: Path) -> None:
    """Wait until ``path``'s data is on disk."""
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
