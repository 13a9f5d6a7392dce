"""DICOM whole-slide output: a stained pyramid as a VL Whole Slide Microscopy Image series.

One instance per pyramid level (Supplement 145, TILED_FULL, JPEG baseline frames), made from the
pyramidal TIFF the TIFF writer produced for the same slide: each TIFF tile's JPEG stream is the
DICOM frame (the shared JPEG tables spliced in front), so the series holds the very pixels the
TIFF holds, and no tile is decoded or encoded again. Encoding is pydicom's; conformance is in
docs/dicom-conformance.md.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pyvips
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from service import __version__
from service.vocabulary.case import Case
from service.vocabulary.errors import OutputError
from service.vocabulary.options import DEFAULT_UID_ROOT
from service.vocabulary.report import DicomInstance, DicomSeriesSummary

VL_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_JPEG_COMPRESSION = 7  # TIFF Compression tag value of JPEG ("new-style")
_MANUFACTURER = "dscm"
_MODEL_NAME = "dscm digital stain"


@dataclass(frozen=True)
class SeriesIds:
    """The UIDs of one series; made from a seed (the job id) they are the same on every attempt,
    so a delivery retried after a re-run never puts a second copy in the archive."""

    study: str
    series: str
    frame_of_reference: str
    dimension_organization: str
    specimen: str
    instances: tuple[str, ...]

    @classmethod
    def make(cls, root: str, levels: int, seed: str | None, study: str | None) -> SeriesIds:
        """The study, series and instance UIDs of a series with ``levels`` levels under ``root``;
        the same ``seed`` gives the same UIDs (reproducible output), and ``study`` joins an existing
        study."""

        def uid(what: str) -> str:
            """A UID for one part of the series, derived from the seed when one is given."""
            entropy = None if seed is None else [seed, what]
            return str(generate_uid(prefix=root, entropy_srcs=entropy))

        return cls(
            study=study or uid("study"),
            series=uid("series"),
            frame_of_reference=uid("frame-of-reference"),
            dimension_organization=uid("dimension-organization"),
            specimen=uid("specimen"),
            instances=tuple(uid(f"level-{level}") for level in range(levels)),
        )


@dataclass(frozen=True)
class DicomSeries:
    """What was written: the folder's instances and the UIDs a PACS will know them by."""

    folder: Path
    study_instance_uid: str
    series_instance_uid: str
    instances: list[DicomInstance] = field(default_factory=list)

    def summary(self) -> DicomSeriesSummary:
        """The series for the report: its folder, UIDs, instances and total bytes."""
        return DicomSeriesSummary(
            series=str(self.folder),  # a job's public report names the folder only
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            instances=list(self.instances),
            bytes=sum(instance.bytes for instance in self.instances),
        )


@dataclass(frozen=True)
class _Level:
    width_px: int
    height_px: int
    tile_width_px: int
    tile_height_px: int
    frames: list[bytes]  # standalone JPEG streams, TILED_FULL order (row by row)


def write_series(
    pyramid: Path,
    folder: Path,
    mpp_um: float,
    case: Case,
    uid_root: str = DEFAULT_UID_ROOT,
    uid_seed: str | None = None,
) -> DicomSeries:
    """Write ``pyramid`` (a JPEG-tiled pyramidal TIFF made by the TIFF writer) as a VL WSI
    series into the new folder ``folder``, one ``level-<n>.dcm`` per level. Memory holds one
    level's compressed tiles at a time. OutputError when the TIFF is not JPEG-tiled RGB."""
    # Each written instance is fsynced on a second thread while the next level is prepared.
    with (
        tifffile.TiffFile(pyramid) as tiff,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicom-fsync") as syncer,
    ):
        pages = [page for page in tiff.pages if isinstance(page, tifffile.TiffPage)]
        ids = SeriesIds.make(uid_root, len(pages), uid_seed, case.patient.study_instance_uid)
        now = datetime.now(UTC)
        folder.mkdir(parents=True)
        written, synced = [], []
        base_width_px = pages[0].imagewidth
        for index, page in enumerate(pages):
            level = _read_level(tiff, page)
            level_mpp_um = mpp_um * base_width_px / level.width_px
            dataset = _level_dataset(level, index, level_mpp_um, mpp_um, base_width_px, case)
            _identify(dataset, ids, index, now)
            path = folder / f"level-{index}.dcm"
            _save(dataset, level, path)
            synced.append(syncer.submit(_fsync, path))
            written.append(
                DicomInstance(
                    file=path.name,
                    level=index,
                    sop_instance_uid=ids.instances[index],
                    width_px=level.width_px,
                    height_px=level.height_px,
                    frames=len(level.frames),
                    bytes=path.stat().st_size,
                )
            )
        for done in synced:
            done.result()  # an fsync's OSError (no space, I/O error) surfaces here
    return DicomSeries(folder, ids.study, ids.series, written)


def _read_level(tiff: tifffile.TiffFile, page: tifffile.TiffPage) -> _Level:
    """The page's tiles as standalone JPEG streams: the tables (SOI..EOI) spliced in front of
    each abbreviated tile stream, which is exactly what a JPEG decoder needs."""
    if page.compression != _JPEG_COMPRESSION or not page.is_tiled or page.samplesperpixel != 3:
        raise OutputError("DICOM output needs a JPEG-tiled RGB pyramid (compression jpeg)")
    tables = bytes(page.jpegtables or b"")
    head = tables[:-2] if tables.endswith(b"\xff\xd9") else b"\xff\xd8"
    # libvips writes a level's tiles one after another: one read, then slices
    start = min(page.dataoffsets)
    end = max(o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True))
    handle = tiff.filehandle
    handle.seek(start)
    data = memoryview(handle.read(end - start))
    frames = []
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
        stream = data[offset - start + 2 : offset - start + count]  # without its SOI
        frames.append(head + stream if tables else b"\xff\xd8" + stream)
    del data
    return _Level(page.imagewidth, page.imagelength, page.tilewidth, page.tilelength, frames)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sequence(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _level_dataset(
    level: _Level, index: int, level_mpp_um: float, mpp_um: float, base_width_px: int, case: Case
) -> Dataset:
    """Every attribute of the VL WSI IOD that does not depend on the series' identity."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = VL_WSI_SOP_CLASS
    ds.Modality = "SM"
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE" if index == 0 else "RESAMPLED"]
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = _MODEL_NAME
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = f"dscm {__version__}"
    # Image pixel: 8-bit RGB, JPEG baseline frames as the TIFF writer made them (no colour
    # transform: the streams carry Adobe's RGB marker).
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.Rows, ds.Columns = level.tile_height_px, level.tile_width_px
    ds.NumberOfFrames = len(level.frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = level.width_px, level.height_px
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = _ratio(level)
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.ExtendedDepthOfField = "NO"
    ds.FocusMethod = "AUTO"
    ds.VolumetricProperties = "VOLUME"
    # Geometry: the whole slide is imaged_mm across at every level; x along columns, y rows.
    ds.ImagedVolumeWidth = mpp_um * base_width_px / 1000.0  # FL, mm
    ds.ImagedVolumeHeight = level_mpp_um * level.height_px / 1000.0
    ds.ImagedVolumeDepth = 0.001
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 0
    origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = _sequence(origin)
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    measures = Dataset()
    spacing_mm = _ds(level_mpp_um / 1000.0)
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = _ds(0.001)
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = _sequence(measures)
    shared.WholeSlideMicroscopyImageFrameTypeSequence = _sequence(frame_type)
    shared.OpticalPathIdentificationSequence = _sequence(optical)
    ds.SharedFunctionalGroupsSequence = _sequence(shared)
    ds.NumberOfOpticalPaths = 1
    ds.OpticalPathSequence = _sequence(_optical_path())
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.InstanceNumber = index + 1
    ds.SeriesNumber = 1
    ds.SeriesDescription = "dscm digital H&E-like stain"
    _subject(ds, case)
    return ds


def _optical_path() -> Dataset:
    """One optical path: brightfield-like, described by its sRGB ICC profile (a digital
    stain has no real illumination; the code says what a viewer must assume)."""
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.OpticalPathDescription = "digital stain of confocal reflectance and fluorescence"
    brightfield = _code("111744", "DCM", "Brightfield illumination")
    path.IlluminationTypeCodeSequence = _sequence(brightfield)
    path.IlluminationColorCodeSequence = _sequence(_code("414298005", "SCT", "Full Spectrum"))
    path.ICCProfile = srgb_icc_profile()
    path.ColorSpace = "SRGB"
    return path


def _subject(ds: Dataset, case: Case) -> None:
    """Patient, study and specimen attributes from the case (type 2: present, maybe empty)."""
    patient = case.patient
    ds.PatientName = patient.patient_name or ""
    ds.PatientID = patient.patient_id or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = patient.accession_number or ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.ContainerIdentifier = case.external_id or "unidentified"
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence([])
    ds.ContainerTypeCodeSequence = _sequence(_code("433466003", "SCT", "Microscope slide"))
    specimen = Dataset()
    specimen.SpecimenIdentifier = case.external_id or "unidentified"
    specimen.IssuerOfTheSpecimenIdentifierSequence = DicomSequence([])
    specimen.SpecimenPreparationSequence = DicomSequence([])
    if case.label is not None:
        specimen.SpecimenShortDescription = case.label[:64]
        specimen.SpecimenDetailedDescription = case.label
    ds.SpecimenDescriptionSequence = _sequence(specimen)


def _identify(ds: Dataset, ids: SeriesIds, index: int, now: datetime) -> None:
    ds.StudyInstanceUID = ids.study
    ds.SeriesInstanceUID = ids.series
    ds.FrameOfReferenceUID = ids.frame_of_reference
    ds.SOPInstanceUID = ids.instances[index]
    ds.SpecimenDescriptionSequence[0].SpecimenUID = ids.specimen
    organization = Dataset()
    organization.DimensionOrganizationUID = ids.dimension_organization
    ds.DimensionOrganizationSequence = _sequence(organization)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AcquisitionDateTime = f"{date}{time}"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time


def _save(ds: Dataset, level: _Level, path: Path) -> None:
    """Write the instance (``_fsync`` makes it durable). The frames are encapsulated in one
    value (pydicom's buffered encapsulation is quadratic in the frame count); a Basic Offset
    Table is kept where its 32-bit offsets reach (levels under 4 GiB)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    has_bot = sum(len(frame) + 8 for frame in level.frames) < 2**32
    # A buffered value is written straight to the file (a bytes value is copied once more)
    ds.PixelData = _LargeReads(encapsulate(level.frames, has_bot=has_bot))
    ds["PixelData"].VR = "OB"
    with path.open("wb") as handle:
        ds.save_as(handle, enforce_file_format=True)


class _LargeReads(io.BytesIO):
    """The pixel data as pydicom's writer reads a buffered value: in chunks of at least 4 MiB
    (its default is 8 KiB: 15 000 writes for a 15000 x 10000 level instead of 30)."""

    def read(self, size: int | None = -1, /) -> bytes:
        """Read at least _WRITE_CHUNK_BYTES at a time, so pydicom writes a level in a few large
        writes."""
        if size is not None and 0 <= size < _WRITE_CHUNK_BYTES:
            size = _WRITE_CHUNK_BYTES
        return super().read(size)


_WRITE_CHUNK_BYTES = 4 << 20


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _ratio(level: _Level) -> str:
    raw = level.tile_width_px * level.tile_height_px * 3 * len(level.frames)
    coded = max(1, sum(len(frame) for frame in level.frames))
    return _ds(raw / coded)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


_SRGB: bytes | None = None


def srgb_icc_profile() -> bytes:
    """libvips' built-in sRGB ICC profile (the one it attaches when converting to sRGB)."""
    global _SRGB
    if _SRGB is None:
        pixel = pyvips.Image.black(1, 1, bands=3).copy(interpretation="srgb")
        _SRGB = bytes(pixel.icc_transform("srgb", input_profile="srgb").get("icc-profile-data"))
    return _SRGB


def read_level_image(path: Path) -> pyvips.Image:
    """One instance's total pixel matrix (TILED_FULL JPEG frames joined), as a vips image."""
    ds = pydicom.dcmread(path)
    columns = -(-int(ds.TotalPixelMatrixColumns) // int(ds.Columns))
    tiles = [pyvips.Image.jpegload_buffer(frame) for frame in _frames(ds)]
    joined = pyvips.Image.arrayjoin(tiles, across=columns)
    return joined.crop(0, 0, int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))


def _frames(ds: Dataset) -> Iterator[bytes]:
    from pydicom.encaps import generate_frames

    yield from generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
