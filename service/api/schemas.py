"""Request and response schemas, named by role (JobCreate in, JobPublic out)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlencode

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.jobs.job import Job, JobState
from service.runtime.integrations import NAME_PATTERN
from service.vocabulary.case import (
    EXTERNAL_ID_MAX_CHARS,
    EXTERNAL_ID_PATTERN,
    LABEL_MAX_CHARS,
    Patient,
    check_external_id,
    check_label,
)
from service.vocabulary.errors import InputError
from service.vocabulary.options import (
    DEFAULT_OPTIONS,
    JPEG_QUALITY_RANGE,
    MPP_RANGE_UM,
    OPTION_HELP,
    Compression,
    ExtraLayer,
    JobOptions,
    OutputFormat,
    StageName,
    ViewLayer,
)

if TYPE_CHECKING:  # service.slide imports pyvips, which the API loads only when it needs it
    from service.slide.live import LivePlan

CompareMode = Literal["side", "swipe"]


class ViewerView(NamedTuple):
    """A viewer page's view: the main layer, the comparison layout and its second layer."""

    layer: ViewLayer | None
    compare: CompareMode | None
    compare_with: ViewLayer | None

    def query(self) -> str:
        """``?layer=fcm&compare=side&with=stain`` (only what is set), as viewer.js reads it."""
        pairs = {"layer": self.layer, "compare": self.compare, "with": self.compare_with}
        given = {key: value for key, value in pairs.items() if value is not None}
        return f"?{urlencode(given)}" if given else ""


class JobCreate(BaseModel):
    """The option fields of ``POST /v1/jobs`` (sent as multipart form fields beside the files)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageName] | None = Field(default=None, description=OPTION_HELP["stages"])
    output_format: OutputFormat = Field(
        default=DEFAULT_OPTIONS.output_format, description=OPTION_HELP["output_format"]
    )
    compression: Compression = Field(
        default=DEFAULT_OPTIONS.compression, description=OPTION_HELP["compression"]
    )
    jpeg_quality: int = Field(
        default=DEFAULT_OPTIONS.jpeg_quality,
        ge=JPEG_QUALITY_RANGE[0],
        le=JPEG_QUALITY_RANGE[1],
        description=OPTION_HELP["jpeg_quality"],
    )
    layers: list[ExtraLayer] | None = Field(default=None, description=OPTION_HELP["layers"])
    mpp_um: float | None = Field(
        default=DEFAULT_OPTIONS.mpp_um,
        ge=MPP_RANGE_UM[0],
        le=MPP_RANGE_UM[1],
        description=OPTION_HELP["mpp_um"],
    )
    allow_swapped: bool = Field(
        default=DEFAULT_OPTIONS.allow_swapped, description=OPTION_HELP["allow_swapped"]
    )
    deliver_to: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="DICOM jobs: the destination (PACS) to deliver the series to, one the "
        "operator allows the tenant; default: the tenant's default destination",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=1000,
        description="Also send this job's signed events here (a host the operator allows)",
    )

    @model_validator(mode="after")
    def _check_as_job_options(self) -> JobCreate:
        """The rules between fields (a DICOM series is JPEG) are JobOptions', checked once."""
        try:
            self.to_options()
        except InputError as exc:
            raise ValueError(exc.detail) from exc
        return self

    def to_options(self) -> JobOptions:
        """The options as the job records and the workers read them (InputError if invalid)."""
        return JobOptions.from_json(self.model_dump(mode="json"))

    @classmethod
    def from_options(cls, options: JobOptions) -> JobCreate:
        """A recorded job's options as the API shows them."""
        return cls.model_validate(options.to_json())

    @field_validator("stages", "layers", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            parts = [p.strip() for v in value for p in v.split(",") if p.strip()]
            return parts or None
        return value

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[ExtraLayer] | None) -> list[ExtraLayer] | None:
        return list(dict.fromkeys(value)) if value else None

    @field_validator(
        "output_format",
        "compression",
        "jpeg_quality",
        "mpp_um",
        "allow_swapped",
        "deliver_to",
        "callback_url",
        mode="before",
    )
    @classmethod
    def _single(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("give this field once")
            return value[0]
        return value


class CaseIdentity(BaseModel):
    """The case fields of ``POST /v1/jobs`` (form fields); they may identify a patient, so they
    are stored and returned but never logged (service.vocabulary.case)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        default=None,
        max_length=LABEL_MAX_CHARS,
        description="Free text shown in the job list and the viewer (one line)",
    )
    external_id: str | None = Field(
        default=None,
        max_length=EXTERNAL_ID_MAX_CHARS,
        pattern=EXTERNAL_ID_PATTERN,
        description="The hospital's accession number; GET /v1/jobs?external_id= finds the job",
    )

    patient_id: str | None = Field(
        default=None, description="DICOM output: Patient ID (LO, at most 64 characters)"
    )
    patient_name: str | None = Field(
        default=None,
        description="DICOM output: Patient's Name (PN: Family^Given^Middle^Prefix^Suffix)",
    )
    study_instance_uid: str | None = Field(
        default=None,
        description="DICOM output: the study to file the series under (a UID); default a new one",
    )
    accession_number: str | None = Field(
        default=None, description="DICOM output: Accession Number (SH, at most 16 characters)"
    )

    @field_validator(
        "patient_id", "patient_name", "study_instance_uid", "accession_number", mode="before"
    )
    @classmethod
    def _patient(cls, value: Any, info: ValidationInfo) -> Any:
        value = _one(value)
        if not isinstance(value, str):
            return value
        stated = Patient.checked(**{str(info.field_name): value})
        return getattr(stated, str(info.field_name))

    @property
    def patient(self) -> Patient:
        """The DICOM patient and study fields as the job stores them."""
        return Patient(
            self.patient_id, self.patient_name, self.study_instance_uid, self.accession_number
        )

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        value = _one(value)
        return check_label(value) if isinstance(value, str) else value

    @field_validator("external_id", mode="before")
    @classmethod
    def _external_id(cls, value: Any) -> Any:
        value = _one(value)
        return check_external_id(value) if isinstance(value, str) else value


def _one(value: Any) -> Any:
    """A form field given once (multipart fields arrive as lists)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError("give this field once")
        return value[0]
    return value


class JobProgress(BaseModel):
    """How far a job is: ``done`` of ``total`` (thousandths of the whole job) and the percent."""

    done: int
    total: int
    percent: float


class JobError(BaseModel):
    code: str
    detail: str


class InputFilePublic(BaseModel):
    filename: str | None
    size_bytes: int
    sha256: str


class JobInputsPublic(BaseModel):
    rcm: InputFilePublic
    fcm: InputFilePublic
    width_px: int
    height_px: int
    mpp_um: float | None


class JobResultPublic(BaseModel):
    size_bytes: int
    sha256: str
    media_type: str


class DeliveryPublic(BaseModel):
    """The job's delivery to a PACS (service.delivery); it never changes the stain result."""

    destination: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a pending delivery tries next")
    instances: int | None = Field(description="Instances stored by the last delivery")


class JobLinks(BaseModel):
    self: str
    result: str
    thumbnail: str
    viewer: str
    dzi: str


class JobPublic(BaseModel):
    id: str
    state: JobState
    message: str | None = Field(
        description='Where the job is, in words ("staining 37 of 150 tiles"); null when queued'
    )
    stage: str | None = Field(
        deprecated=True, description="The same as message (its earlier name; not a stain stage)"
    )
    progress: JobProgress
    attempts: int
    max_attempts: int
    options: JobCreate
    inputs: JobInputsPublic
    label: str | None = Field(description="The case's label, as submitted")
    external_id: str | None = Field(description="The case's accession number, as submitted")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    purged_at: datetime | None
    result: JobResultPublic | None
    report: dict[str, Any] | None
    error: JobError | None
    layers: list[ViewLayer] = Field(
        description="Layers the viewer can show (Deep Zoom), once the job succeeded"
    )
    delivery: DeliveryPublic | None = Field(
        default=None, description="Delivery of the DICOM series to a PACS, if the job has one"
    )
    links: JobLinks


class JobList(BaseModel):
    items: list[JobPublic]
    next: str | None = Field(description="URL of the next (older) page; null on the last page")


class ViewerLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: float | None = Field(
        default=None,
        ge=60,  # a link that expires before anyone can open it is a mistake, not a request
        description="Life of the link, at least 60 s; default and cap: DSCM_VIEWER_LINK_TTL_S",
    )
    layer: ViewLayer | None = Field(
        default=None, description="The layer the link opens on (default: the stain)"
    )
    compare: CompareMode | None = Field(
        default=None,
        description="Open comparing two layers: side by side or under a swipe divider "
        "(default: with compare_with, side; else no comparison)",
    )
    compare_with: ViewLayer | None = Field(
        default=None, description="The second layer of the comparison (default: FCM, else Gareau)"
    )

    @model_validator(mode="after")
    def _two_layers(self) -> ViewerLinkCreate:
        if self.compare_with is not None and self.compare_with == (self.layer or "stain"):
            raise ValueError("compare_with must differ from the layer the link opens on")
        return self

    def view(self) -> ViewerView:
        """The view the link opens, as the viewer page reads it from its query."""
        compare = self.compare or ("side" if self.compare_with is not None else None)
        return ViewerView(self.layer, compare, self.compare_with if compare else None)


class ViewerLink(BaseModel):
    url: str = Field(
        description="The viewer page, its view (layer, compare, with) in the query; the token "
        "is in the fragment, never sent"
    )
    token: str
    expires_at: datetime


class LiveViewPublic(BaseModel):
    """A running job's grid of tiles and which are stained, for a viewer that fills in: a Deep
    Zoom tile changes when a grid tile under it (work_px coordinates) turns to 1."""

    attempt: int = Field(description="The job's attempt; a new attempt starts from no tile")
    planned: bool = Field(description="Whether the worker has laid the grid yet")
    width_px: int = Field(description="The slide's (and the published pyramid's) width")
    height_px: int
    work_width_px: int = Field(description="The size the tiles are stained at (resampled)")
    work_height_px: int
    tile_px: int
    columns: int
    tiles: int
    tiles_done: int
    done: str = Field(description="One character per grid tile, row-major: 1 stained, 0 not yet")

    @classmethod
    def of(cls, job: Job, found: tuple[LivePlan, np.ndarray] | None) -> LiveViewPublic:
        """The view of a running job from its plan and ledger (None: no plan yet)."""
        if found is None:
            width, height = job.inputs.width_px, job.inputs.height_px
            return cls(
                attempt=job.attempts, planned=False, width_px=width, height_px=height,
                work_width_px=width, work_height_px=height, tile_px=max(width, height, 1),
                columns=1, tiles=0, tiles_done=0, done="",
            )  # fmt: skip
        plan, done = found
        return cls(
            attempt=job.attempts,
            planned=True,
            width_px=plan.width_px,
            height_px=plan.height_px,
            work_width_px=plan.work_width_px,
            work_height_px=plan.work_height_px,
            tile_px=plan.tile_px,
            columns=plan.columns,
            tiles=plan.tiles,
            tiles_done=int(done.sum()),
            done=(done.astype(np.uint8) + ord("0")).tobytes().decode("ascii"),
        )


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is the machine-readable error code."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str


class Liveness(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    name: str
    ok: bool
    detail: str
    required: bool = Field(
        default=True, description="false: reported only; readiness does not depend on it"
    )


class Readiness(BaseModel):
    ready: bool
    checks: list[Check]
