"""What a caller may ask of one stain: the job options, their defaults and their vocabularies.

One definition for the API schema (JobCreate), the CLI (`dscm stain`), the workers and the
pipeline (StainSpec): a default or a name changes here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from service.vocabulary.errors import InputError, PixelSizeUnknown

StageName = Literal["despeckle", "median", "gareau", "colour", "generator"]
ExtraLayer = Literal["gareau", "fcm", "rcm"]  # kept beside the stain when asked (viewer layers)
ViewLayer = Literal["stain", ExtraLayer]
OutputFormat = Literal["tiff", "ome-tiff", "dicom"]
Compression = Literal["jpeg", "lossless"]

STAGES: tuple[StageName, ...] = get_args(StageName)  # in the order the chain runs them
EXTRA_LAYERS: tuple[ExtraLayer, ...] = get_args(ExtraLayer)
VIEW_LAYERS: tuple[ViewLayer, ...] = get_args(ViewLayer)
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)


@dataclass(frozen=True)
class ResultFormat:
    """What one output format gives a caller: the result's suffix and media type, and the
    format of the TIFF pyramid the stain is kept in (the result itself, or beside it for a
    format made from it). Its writer is ``service.slide.formats.WRITERS[name]``."""

    name: OutputFormat
    suffix: str
    media_type: str
    pyramid: OutputFormat


# The output formats, one entry each (a test holds them to OutputFormat and to the writers).
RESULT_FORMATS: dict[OutputFormat, ResultFormat] = {
    f.name: f
    for f in (
        ResultFormat("tiff", ".tiff", "image/tiff", pyramid="tiff"),
        ResultFormat("ome-tiff", ".ome.tiff", "image/tiff", pyramid="ome-tiff"),
        # a folder of instances (one per level), made from the TIFF pyramid kept beside it
        # (pyramid_path) for dscm's viewer and QuPath
        ResultFormat("dicom", ".dcm", "application/dicom", pyramid="tiff"),
    )
}
# The pixel sizes a confocal microscope makes, from a high-NA objective sampled at Nyquist
# (0.1 um/px) to a low-magnification mosaic (5 um/px; the Vivascope 2500 scans at 0.75):
# a stated pixel size or resolution tag outside is refused, never resampled into the pixel limit.
MPP_RANGE_UM = (0.1, 5.0)
# A Vivascope scan folder holds one image per detector: <scan>/<detector>/highres_raw.tif.
# Public code of the instrument's users disagrees on which is which, so callers may swap them.
RCM_DETECTOR = "DET#1"
FCM_DETECTOR = "DET#2"
JPEG_QUALITY_RANGE = (1, 100)
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; sites set DSCM_DICOM_UID_ROOT


# What each job option means, in the words both `POST /v1/jobs` (JobCreate's OpenAPI form) and
# `dscm stain --help` show: a test holds the two to these and to each other.
OPTION_HELP: dict[str, str] = {
    "stages": f"Comma-separated stages to run, a subset of {','.join(STAGES)} (default: the "
    "installed models' default chain, see `dscm models` or GET /v1/models)",
    "layers": f"Comma-separated extra pyramids kept beside the stain: {','.join(EXTRA_LAYERS)} "
    "(the viewer's layers)",
    "mpp_um": f"Pixel size in um ({MPP_RANGE_UM[0]}-{MPP_RANGE_UM[1]}); overrides the files' "
    "resolution tags (required when they have none and the operator set no "
    "DSCM_DEFAULT_MPP_UM)",
    "output_format": "The result: a pyramidal TIFF, an OME-TIFF, or a DICOM whole-slide series "
    "(JPEG; its TIFF pyramid kept beside it)",
    "compression": "Tile compression of the pyramid",
    "jpeg_quality": "JPEG quality of the tiles",
    "allow_swapped": "Stain a pair the input check refuses (the file given as FCM looks like "
    "reflectance and RCM like fluorescence, or both are one image) as given; without it the "
    "stain fails with inputs_swapped or inputs_identical",
}
# Options of a service job only: where its DICOM series and its events go.
SERVICE_ONLY_OPTIONS = ("deliver_to", "callback_url")


@dataclass(frozen=True)
class JobOptions:
    """How one slide is to be stained and where its result goes, as its caller stated it (the
    defaults live here; the API's JobCreate and the CLI's options are made from them)."""

    stages: tuple[StageName, ...] | None = None  # None: the installed models' default chain
    output_format: OutputFormat = "tiff"
    compression: Compression = "jpeg"
    jpeg_quality: int = 90
    layers: tuple[ExtraLayer, ...] = ()
    mpp_um: float | None = None  # stated by the caller; overrides the files' resolution tags
    # stain a pair the input check refuses (FCM/RCM look swapped, or one image twice) as given
    allow_swapped: bool = False
    deliver_to: str | None = (
        None  # a DICOM job's destination (service.runtime.integrations), by name
    )
    callback_url: str | None = None  # also send this job's signed events here

    def __post_init__(self) -> None:
        if self.stages is not None:
            check_names("stage", self.stages, STAGES)
        check_names("layer", self.layers, EXTRA_LAYERS)
        check_names("output format", (self.output_format,), OUTPUT_FORMATS)
        check_names("compression", (self.compression,), COMPRESSIONS)
        if self.output_format == "dicom" and self.compression != "jpeg":
            raise InputError(
                "output_format dicom is JPEG baseline (the archive's whole-slide viewers read "
                "it); lossless compression is for tiff and ome-tiff"
            )
        low, high = JPEG_QUALITY_RANGE
        if not low <= self.jpeg_quality <= high:
            raise InputError(f"jpeg_quality must be {low}-{high}, got {self.jpeg_quality}")
        check_mpp_um("mpp_um", self.mpp_um)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobOptions:
        """Options as the API stores them with the job (JSON: lists, nulls for unstated)."""
        stated = {key: value for key, value in data.items() if value is not None}
        for key in ("stages", "layers"):
            if key in stated:
                stated[key] = tuple(stated[key])
        if "jpeg_quality" in stated:
            stated["jpeg_quality"] = int(stated["jpeg_quality"])
        if "allow_swapped" in stated:
            stated["allow_swapped"] = bool(stated["allow_swapped"])
        known = {key: value for key, value in stated.items() if key in _FIELDS}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        """The stored form: lists for tuples, so the database and the API read the same."""
        data = asdict(self)
        data["stages"] = list(self.stages) if self.stages is not None else None
        data["layers"] = list(self.layers)
        return data

    @property
    def result_suffix(self) -> str:
        """The suffix of the published result (``.tiff``, ``.ome.tiff``, ``.dcm`` folder)."""
        return RESULT_FORMATS[self.output_format].suffix

    @property
    def pyramid_suffix(self) -> str:
        """The suffix of the stain's TIFF pyramid (``.tiff`` beside a DICOM series)."""
        return RESULT_FORMATS[self.layer_format].suffix

    @property
    def pyramid_media_type(self) -> str:
        """The media type of the stain's TIFF pyramid (what the result route serves)."""
        return RESULT_FORMATS[self.layer_format].media_type

    @property
    def layer_format(self) -> OutputFormat:
        """The format of the stain's pyramid and the extra (gray and Gareau) layers: the
        output format's own, TIFF beside a DICOM series."""
        return RESULT_FORMATS[self.output_format].pyramid

    def pyramid_path(self, output: Path) -> Path:
        """Where the stained TIFF pyramid of ``output`` is (see ``pyramid_path``)."""
        return pyramid_path(output, self.output_format)


_FIELDS = frozenset(JobOptions.__dataclass_fields__)


def check_mpp_um(name: str, value: float | None, hint: str = "") -> None:
    """A stated pixel size must be one a confocal microscope makes (MPP_RANGE_UM)."""
    low, high = MPP_RANGE_UM
    if value is not None and not low <= value <= high:
        raise InputError(f"{name} must be {low}-{high} um/px, got {value:g}{hint}")


def pyramid_path(output: Path, output_format: OutputFormat) -> Path:
    """Where the stained TIFF pyramid of ``output`` is: ``output`` itself for the TIFF
    formats; beside a format made from it (a DICOM series folder ``out``) as ``out.tiff`` (the
    viewer and QuPath read it)."""
    pyramid = RESULT_FORMATS[output_format].pyramid
    if pyramid != output_format:
        return output.with_name(f"{output.name}{RESULT_FORMATS[pyramid].suffix}")
    return output


PixelSizeSource = Literal["caller", "file", "operator default"]


def stated_mpp_um(
    caller: float | None, files: float | None, operator: float | None, how_to_state: str
) -> tuple[float, PixelSizeSource]:
    """The slide's pixel size and who stated it: the caller, else the files' resolution tags,
    else the operator's default. PixelSizeUnknown when nobody does (a guess would mislead every
    measurement made on the slide); InputError when the tags say what no confocal microscope
    makes. ``how_to_state`` tells the caller how to say it (``--mpp``, the ``mpp_um`` field)."""
    if caller is not None:
        return caller, "caller"
    if files is not None:
        check_mpp_um("the files' resolution tags", files, f"; {how_to_state}")
        return files, "file"
    if operator is not None:
        return operator, "operator default"
    raise PixelSizeUnknown(
        f"the images carry no pixel size (resolution tags): {how_to_state}, or set "
        "DSCM_DEFAULT_MPP_UM for this site's scanner"
    )


def check_names(what: str, given: Iterable[str], known: tuple[str, ...]) -> None:
    """InputError naming every unknown name and the known ones."""
    unknown = [name for name in given if name not in known]
    if unknown:
        raise InputError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")


DEFAULT_OPTIONS = JobOptions()
