"""Write the stained slide as a pyramid (TIFF, OME-TIFF or a DICOM series), atomically, in
bounded memory.

Tiles land in an uncompressed TIFF on disk (RGB for the stain, one band for an FCM or RCM
layer) (``DiskCanvas``: preallocated, written with
pwrite, so memory does not grow with the slide); libvips then streams that file into a
page-per-level pyramid (the generic tiled TIFF layout OpenSlide and QuPath open; SubIFD
pyramids are only used for OME-TIFF, which OpenSlide does not read anyway). Each output format
is one writer in service.slide.formats.WRITERS; a DICOM series is made from the TIFF pyramid.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyvips

from service.slide.canvas import DiskCanvas
from service.slide.dicom import DicomSeries
from service.slide.formats import WRITERS
from service.slide.formats.tiff import fsync_file
from service.slide.reader import pyramid_pages
from service.vocabulary.case import NO_CASE, Case
from service.vocabulary.errors import OutputError
from service.vocabulary.options import DEFAULT_UID_ROOT, Compression, OutputFormat, pyramid_path
from service.vocabulary.report import LevelSize


class PyramidWriter:
    """Collects the tiles (RGB, or gray with ``bands=1``) of a ``width x height`` slide, then
    saves the pyramid."""

    def __init__(
        self,
        output: Path,
        width_px: int,
        height_px: int,
        mpp_um: float,
        bands: int = 3,
        work_size_px: tuple[int, int] | None = None,
        case: Case = NO_CASE,
        uid_root: str = DEFAULT_UID_ROOT,
        uid_seed: str | None = None,
        canvas_path: Path | None = None,
    ) -> None:
        """``canvas_path``: where the uncompressed canvas goes (a live folder's, which the viewer
        and region workers read and write: service.slide.live); a private name beside the
        output by default. ``work_size_px`` (width, height): the grid tiles are written on when
        the slide is stained at another resolution; the pyramid is resized back to the slide size.
        ``case``: in the ImageDescription of a tiff (every level), the OME Image's Description
        of an ome-tiff, the patient, study and specimen of a DICOM series. ``uid_root`` and
        ``uid_seed`` make a series' UIDs (service.slide.dicom.SeriesIds)."""
        self.output, self.bands, self.case = output, bands, case
        self.description = case.description()
        self.uid_root, self.uid_seed = uid_root, uid_seed
        self.output_format: OutputFormat = "tiff"
        self.series: DicomSeries | None = None
        self.width_px, self.height_px, self.mpp_um = width_px, height_px, mpp_um
        self.work_width_px, self.work_height_px = work_size_px or (width_px, height_px)
        stem = f".{output.name}.{uuid.uuid4().hex[:8]}"
        self.canvas_path = canvas_path or output.parent / f"{stem}.canvas.tif"
        self.own_canvas = canvas_path is None  # a live folder's canvas is its owner's to remove
        self.tmp_path = output.parent / f"{stem}.partial.tif"
        self.tmp_series = output.parent / f"{stem}.partial.dcm"
        self.canvas: DiskCanvas | None = None
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            self.canvas = DiskCanvas(
                self.canvas_path, self.work_width_px, self.work_height_px, bands
            )
        except OSError as exc:
            self._remove_temporaries()
            raise output_error(exc, output) from exc

    def write(self, l0_x: int, l0_y: int, pixels: np.ndarray) -> None:
        """Place an ``(h, w, bands)`` uint8 block with its top-left corner at level-0 (x, y)."""
        assert self.canvas is not None, "write after save"
        try:
            self.canvas.write(l0_x, l0_y, pixels)
        except OSError as exc:
            raise output_error(exc, self.output) from exc

    def flush(self) -> None:
        """Flush the canvas (DiskCanvas.flush): before a live folder's ledger marks tiles."""
        assert self.canvas is not None, "flush after save"
        try:
            self.canvas.flush()
        except OSError as exc:
            raise output_error(exc, self.output) from exc

    def fill(self, l0_x: int, l0_y: int, width_px: int, height_px: int, colour: np.ndarray) -> None:
        """Write one solid colour over a level-0 rectangle."""
        shape = (height_px, width_px, self.bands)
        self.write(l0_x, l0_y, np.broadcast_to(np.asarray(colour, np.uint8), shape))

    def save(
        self, compression: Compression, jpeg_quality: int, output_format: OutputFormat
    ) -> None:
        """Encode the pyramid to the temporary name (durably); ``publish`` renames it."""
        self.output_format = output_format
        try:
            assert self.canvas is not None, "save called twice"
            self.canvas.close()
            WRITERS[output_format](self, self._full_size(), compression, jpeg_quality)
            fsync_file(self.tmp_path)
        except (OSError, pyvips.Error) as exc:
            self.abort()
            raise output_error(exc, self.output) from exc
        except OutputError:
            self.abort()
            raise
        finally:
            if self.own_canvas:
                with contextlib.suppress(OSError):
                    self.canvas_path.unlink()

    def _full_size(self) -> pyvips.Image:
        """The canvas at the slide's own size (resized back when it was stained at another)."""
        resize = (self.work_width_px, self.work_height_px) != (self.width_px, self.height_px)
        # an enlarging resize reads out of order: the uncompressed canvas allows that
        access = "random" if resize else "sequential"
        image = pyvips.Image.tiffload(str(self.canvas_path), access=access)
        if resize:
            image = image.resize(
                self.width_px / image.width,
                vscale=self.height_px / image.height,
                kernel="lanczos3",
            )
            if (image.width, image.height) != (self.width_px, self.height_px):
                image = image.embed(0, 0, self.width_px, self.height_px, extend="copy")
            image = image.cast("uchar")
        if self.bands == 3:
            image = image.copy(interpretation="srgb")
        return image

    @property
    def pyramid(self) -> Path:
        """The published TIFF pyramid: the output, or the file beside a DICOM series."""
        return pyramid_path(self.output, self.output_format)

    def publish(self) -> list[LevelSize]:
        """Atomically rename the saved pyramid (and series) to its final name; returns the
        pyramid's levels. A series folder is renamed last: its presence means it is whole."""
        try:
            os.replace(self.tmp_path, self.pyramid)
            if self.series is not None:
                shutil.rmtree(self.output, ignore_errors=True)  # --overwrite was checked
                os.replace(self.tmp_series, self.output)
                self.series = replace(self.series, folder=self.output)
        except OSError as exc:
            self.abort()
            raise output_error(exc, self.output) from exc
        return read_levels(self.pyramid)

    def abort(self) -> None:
        """Remove every temporary; the final name is never touched."""
        if self.canvas is not None:
            self.canvas.close()
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for path in (self.canvas_path, self.tmp_path):
            with contextlib.suppress(OSError):
                path.unlink()
        shutil.rmtree(self.tmp_series, ignore_errors=True)


def read_levels(path: Path) -> list[LevelSize]:
    """The pyramid levels as written in the file, pages or OME SubIFDs (headers only)."""
    pages = pyramid_pages(path)
    first = pages[0]
    return [LevelSize(p.width, p.height, round(first.width / p.width, 4)) for p in pages]


def output_error(exc: BaseException, output: Path) -> OutputError:
    """The OutputError a user can act on for a write failure: disk full, permission denied, or
    libvips' message with our temporary names replaced by the output's."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space" in str(exc):
        return OutputError(f"no space left to write {output.name}")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "ermission" in str(exc):
        return OutputError(f"cannot write to {output.parent}: permission denied")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # our temporaries (".out.tif.1a2b3c4d.canvas.tif") mean nothing to the user: name theirs
    temporary = r"\S*\." + re.escape(output.name) + r"\.[0-9a-f]{8}\.\w+\.tif"
    message = re.sub(temporary, str(output), message)
    return OutputError(f"cannot write {output.name}: {message}")


def write_thumbnail(tiff: Path, jpeg: Path, max_px: int = 1024) -> None:
    """A JPEG preview of a stained pyramid (reads its smallest sufficient level)."""
    try:
        thumb = pyvips.Image.thumbnail(str(tiff), max_px, height=max_px, size="down")
        tmp = jpeg.with_name(f".{jpeg.name}.{uuid.uuid4().hex[:8]}.tmp.jpg")
        thumb.jpegsave(str(tmp), Q=85)
        os.replace(tmp, jpeg)
    except (OSError, pyvips.Error) as exc:
        raise output_error(exc, jpeg) from exc


def read_overview(tiff: Path, width_px: int, height_px: int) -> np.ndarray:
    """The stained pyramid resized to exactly ``width_px x height_px`` (from its smallest
    sufficient level), ``(H, W, 3)`` uint8: what the faithfulness check compares with FCM."""
    try:
        image = pyvips.Image.thumbnail(str(tiff), width_px, height=height_px, size="force")
        array = np.asarray(image.numpy())
    except (OSError, pyvips.Error) as exc:
        raise output_error(exc, tiff) from exc
    return array[..., :3] if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)
