"""The output formats' writers, one registration each: ``WRITERS[name]`` encodes a stained
canvas as that format (``PyramidWriter.save`` calls it). What a format gives a caller (suffix,
media type, the pyramid kept beside it) is its ``ResultFormat`` in the vocabulary
(service.vocabulary.options.RESULT_FORMATS), which the API reads without loading pyvips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyvips

from service.slide.formats.dicom import encode_dicom
from service.slide.formats.tiff import encode_ome_tiff, encode_tiff
from service.vocabulary.options import Compression, OutputFormat

if TYPE_CHECKING:
    from service.slide.writer import PyramidWriter

# writer, the full-size image, compression, JPEG quality: writes writer.tmp_path (and, for a
# format made from the TIFF pyramid, its own files, which writer.publish renames into place)
Encoder = Callable[["PyramidWriter", pyvips.Image, Compression, int], None]

WRITERS: dict[OutputFormat, Encoder] = {
    "tiff": encode_tiff,
    "ome-tiff": encode_ome_tiff,
    "dicom": encode_dicom,
}
