"""StainReport: what one stain did, as the pipeline returns it and as a job shows it.

The pipeline fills it; `dscm stain --json` prints it; the runner stores its public view with the
job; telemetry reads its timings and tile counts. Each part is a frozen record defined here
(the lower layers fill them: core's checks, slide's headers and DICOM series), and `plain`
turns the whole into the JSON every report has had. Reports stored as JSON are read back only
through the functions at the bottom, so the report's shape is written down once, here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from service.vocabulary.errors import OutputError
from service.vocabulary.options import PixelSizeSource

# A record field with this metadata is left out of the JSON when it is None (the key was absent
# in reports before the records existed, and stored reports keep that shape).
OMIT_NONE: Mapping[str, bool] = {"omit_none": True}


def plain(value: Any) -> Any:
    """``value`` as JSON-ready builtins: a record as a dict in field order (a field marked
    OMIT_NONE left out when None), dicts, lists and tuples item by item."""
    if is_dataclass(value) and not isinstance(value, type):
        items = ((f, getattr(value, f.name)) for f in fields(value))
        return {
            f.name: plain(item)
            for f, item in items
            if not (item is None and f.metadata.get("omit_none"))
        }
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)
    return value


@dataclass(frozen=True)
class ImageInfo:
    """What the header of one mode says."""

    path: str
    format: str
    width_px: int
    height_px: int
    bands: int
    dtype: str
    mpp_um: float | None


@dataclass(frozen=True)
class PairInfo:
    """What the headers of both modes say: the pair's size and pixel size, and each file's."""

    width_px: int
    height_px: int
    mpp_um: float | None  # from the files' resolution tags; None when they do not say
    rcm: ImageInfo
    fcm: ImageInfo


@dataclass(frozen=True)
class PixelSizeSummary:
    """The pixel size a stain used, where it came from, and the grid the networks ran on."""

    mpp_um: float
    source: PixelSizeSource
    model_mpp_um: float | None  # what the chain's models were trained at
    resampled: bool
    work_px: list[int]  # [width, height] of the grid the chain ran on


@dataclass(frozen=True)
class LevelSize:
    """One level of the published pyramid."""

    width_px: int
    height_px: int
    downsample: float


@dataclass(frozen=True)
class ModelSummary:
    """A model card as a report lists it."""

    name: str
    role: str
    architecture: str
    version: str
    sha256: str
    halo_px: int
    norm: str


@dataclass(frozen=True)
class IntensityRange:
    """Input values mapped to 0 and 1 (in the file's own units): the normalisation of one mode
    (service.core.normalize estimates it)."""

    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """The range as a dict (the region plan)."""
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class LabSummary:
    """Lab statistics over tissue, rounded (``cov`` absent from the JSON when not known)."""

    mean: list[float]
    std: list[float]
    cov: list[list[float]] | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class ColourTransferSummary:
    """The colour stage's fitted Lab transfer, rounded."""

    matrix: list[list[float]]
    offset: list[float]


@dataclass(frozen=True)
class ColourSummary:
    """What the colour stage did to one slide: the target, the slide's measured look, the map."""

    target: str
    slide_lab: LabSummary | None
    transfer: ColourTransferSummary


@dataclass(frozen=True)
class FaithfulnessCheck:
    """The faithfulness check (service.core.quality.faithfulness_qc): nuc_r of the stain and of
    Gareau's stain, their ratio and the flag; with too little tissue only the ``note``."""

    nuc_r: float | None
    nuc_r_gareau: float | None
    ratio: float | None
    threshold: float | None = field(default=None, metadata=OMIT_NONE)
    flag: str | None = None
    tissue_fraction: float | None = field(default=None, metadata=OMIT_NONE)
    overview_px: list[int] | None = field(default=None, metadata=OMIT_NONE)
    note: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class SwapThresholds:
    """The evidence at or below which a pair is doubtful, and swapped."""

    doubtful: float
    swapped: float


@dataclass(frozen=True)
class ModeCheckSummary:
    """Is FCM fluorescence and RCM reflectance? (service.core.sanity.ModeCheck, rounded)."""

    outcome: str
    evidence: float
    features: dict[str, float]
    correlation: float
    thresholds: SwapThresholds
    allowed: bool
    flag: str | None


@dataclass(frozen=True)
class GlassLevelSummary:
    """Per mode, the normalised level below which the slide shows glass, rounded."""

    fcm: float
    rcm: float


@dataclass(frozen=True)
class DicomInstance:
    """One written DICOM instance (one pyramid level)."""

    file: str
    level: int
    sop_instance_uid: str
    width_px: int
    height_px: int
    frames: int
    bytes: int


@dataclass(frozen=True)
class DicomSeriesSummary:
    """The DICOM series a stain wrote: its folder, UIDs, instances and total bytes."""

    series: str  # the folder (a job's public report: its name only)
    study_instance_uid: str
    series_instance_uid: str
    instances: list[DicomInstance]
    bytes: int


@dataclass(frozen=True)
class TileCounts:
    """The tile grid: every tile, the ones run through the networks, and the glass ones filled."""

    total: int
    computed: int
    skipped: int
    tile_px: int
    halo_px: int
    batch_size: int


@dataclass(frozen=True)
class StainReport:
    """Inputs, models, tiles, timings, quality check and the output's identity of one stain."""

    input: PairInfo  # both images: path, size, pixel format, resolution
    output: str  # the pyramid's path (the public view: its file name)
    output_sha256: str
    output_bytes: int
    output_format: str
    compression: str
    jpeg_quality: int | None  # None for lossless
    mpp_um: float
    pixel_size: PixelSizeSummary  # where the pixel size came from, the grid the networks ran on
    levels: list[LevelSize]
    stages: list[str]
    models: list[ModelSummary]  # the model cards' summaries
    providers: list[str]  # the inference backend(s) and precision that ran
    normalisation: dict[str, IntensityRange]  # per mode
    tiles: TileCounts
    shared_norm_stats: bool
    colour: ColourSummary | None  # the colour stage's per-slide transfer
    timings_s: dict[str, float]
    background_rgb: list[int]
    qc: FaithfulnessCheck
    extra_outputs: dict[str, str]  # layer -> path (the public view: file name)
    dicom: DicomSeriesSummary | None = None
    inputs_check: ModeCheckSummary | None = None
    glass_level: GlassLevelSummary | None = None
    # per model role, why it runs on its backend (service.core.backend_probe: the probe's times)
    backend_reason: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The full report as nested dicts (`dscm stain --json` prints it; a job stores
        ``public``): the records in field order, the JSON every report has had."""
        return dict(plain(self))

    def public(self, result_dir: Path) -> dict[str, Any]:
        """The report a job shows its tenant: files by name, no server path anywhere.

        Each extra output must be a file published in ``result_dir`` beside the stain and under
        its name, so the API can later serve it by name without ever leaving that folder.
        """
        stem = Path(self.output).name.split(".", 1)[0]
        for layer, location in self.extra_outputs.items():
            path = Path(location)
            if path.parent.resolve() != result_dir.resolve() or not path.name.startswith(
                f"{stem}."
            ):
                raise OutputError(f"the stainer wrote layer {layer!r} outside the job's folder")
            if not path.is_file():
                raise OutputError(f"the stainer did not publish layer {layer!r}")
        dicom = self.dicom
        if dicom is not None:
            series = Path(dicom.series)
            if series.parent.resolve() != result_dir.resolve() or not series.is_dir():
                raise OutputError("the stainer wrote the DICOM series outside the job's folder")
            dicom = replace(dicom, series=series.name)
        named = replace(
            self,
            output=Path(self.output).name,
            extra_outputs={layer: Path(p).name for layer, p in self.extra_outputs.items()},
            dicom=dicom,
        )
        return dict(without_server_paths(named.to_dict()))


def without_server_paths(value: Any) -> Any:
    """``value`` with every absolute path, and every ``path`` field, cut to its file name, at
    any depth.

    The report names its inputs by path (``input.rcm.path``); a job's report is shown to every
    key of the tenant and to viewer-link holders, who learn nothing from where the server keeps
    files. Reports stored before the public view existed are cleaned when shown.
    """
    if isinstance(value, dict):
        return {
            key: PurePosixPath(item).name
            if key == "path" and isinstance(item, str)  # relative too (./dscm-data/...)
            else without_server_paths(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        return PurePosixPath(value).name
    return value


@dataclass(frozen=True)
class DicomIds:
    """The study and series a job's DICOM series is filed under in the archive."""

    study_instance_uid: str | None
    series_instance_uid: str | None


@dataclass(frozen=True)
class PublicReport:
    """A stain's report as a job stores and shows it (``StainReport.public``: files by name,
    no server path anywhere). The stored JSON is read only through these properties, so its
    shape, old records included, is known here and nowhere else."""

    document: dict[str, Any]

    @classmethod
    def from_json(cls, stored: dict[str, Any] | None) -> PublicReport | None:
        """The stored column (None for jobs without a report); records written before the
        public view existed are cleaned of server paths here."""
        if not isinstance(stored, dict):
            return None
        return cls(without_server_paths(stored))

    def to_json(self) -> dict[str, Any]:
        """The report as the API shows it (a copy)."""
        return dict(self.document)

    @property
    def layer_files(self) -> dict[str, str]:
        """The extra layers it names: layer -> file name in the job's result folder."""
        extra = self.document.get("extra_outputs")
        if not isinstance(extra, dict):
            return {}
        return {str(layer): name for layer, name in extra.items() if isinstance(name, str)}

    @property
    def dicom_series(self) -> str | None:
        """The DICOM series folder it names (in the job's result folder), if it wrote one."""
        series = self._dicom.get("series")
        return series if isinstance(series, str) else None

    @property
    def dicom_ids(self) -> DicomIds:
        """The study and series UIDs of its DICOM series (None where it wrote none)."""
        study, series = (self._dicom.get(k) for k in ("study_instance_uid", "series_instance_uid"))
        return DicomIds(
            str(study) if study is not None else None, str(series) if series is not None else None
        )

    @property
    def _dicom(self) -> dict[str, Any]:
        dicom = self.document.get("dicom")
        return dicom if isinstance(dicom, dict) else {}
