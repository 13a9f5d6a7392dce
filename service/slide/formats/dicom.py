"""The DICOM output format: the TIFF pyramid, then a VL Whole Slide Microscopy Image series
made of its very tiles (service.slide.dicom), in a folder published beside it."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pyvips

from service.slide.dicom import write_series
from service.slide.formats.tiff import encode_tiff, fsync_file
from service.vocabulary.options import Compression

if TYPE_CHECKING:
    from service.slide.writer import PyramidWriter


def encode_dicom(
    writer: PyramidWriter, image: pyvips.Image, compression: Compression, quality: int
) -> None:
    """The TIFF pyramid, then the series (no re-encoding) into ``writer.tmp_series``. The TIFF
    goes to disk (fsync) while the series is being made from the page cache."""
    encode_tiff(writer, image, compression, quality)
    shutil.rmtree(writer.tmp_series, ignore_errors=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiff-fsync") as syncer:
        synced = syncer.submit(fsync_file, writer.tmp_path)
        writer.series = write_series(
            writer.tmp_path,
            writer.tmp_series,
            writer.mpp_um,
            writer.case,
            writer.uid_root,
            writer.uid_seed,
        )
        synced.result()
