"""One Settings object, read from the environment (prefix ``DSCM_``) at the edges only."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime.integrations import (
    NO_INTEGRATION,
    Destination,
    IpNetwork,
    TenantIntegration,
    check_destinations,
    check_public_url,
    read_integrations,
)
from service.vocabulary.options import DEFAULT_UID_ROOT, MPP_RANGE_UM

REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


KeyRole = Literal["submit", "read", "admin"]


class ApiKeyEntry(BaseModel):
    """One API key as stored: only the sha256 of the key, never the key itself."""

    id: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    roles: list[KeyRole] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: str | None = None


class Settings(BaseSettings):
    """Configuration of the engine, the API and the workers."""

    model_config = SettingsConfigDict(env_prefix="DSCM_", env_file=None, extra="ignore")

    models_dir: Path = Field(
        default=REPO_MODELS_DIR, description="Folder of ONNX models and their cards"
    )
    max_pixels: int = Field(
        default=400_000_000, gt=0, description="Largest accepted image, in pixels per mode"
    )
    tile_px: int = Field(default=1024, ge=64, le=8192, description="Output tile edge, pixels")
    threads: int | None = Field(
        default=None, ge=1, description="Inference threads per model (onnxruntime or OpenVINO)"
    )
    batch_size: int = Field(
        default=1, ge=1, le=64, description="Tiles per model call (raise it on a GPU)"
    )
    inference: Literal["auto", "cpu", "openvino", "cuda"] = Field(
        default="auto",
        description="Inference backend: onnxruntime cpu, openvino (CPU), cuda (onnxruntime-gpu); "
        "auto picks CUDA, else OpenVINO where it is faster, else cpu",
    )
    default_mpp_um: float | None = Field(
        default=None,
        ge=MPP_RANGE_UM[0],
        le=MPP_RANGE_UM[1],
        description="Pixel size (um) assumed for inputs without resolution tags whose caller "
        "states none; unset: such inputs are refused",
    )
    inference_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on OpenVINO with AMX/AVX512-BF16, else fp32; fp16 on cuda",
    )

    # ---- service (API, jobs, workers); see docs/api.md ----
    storage_dir: Path = Field(
        default=Path("dscm-data"), description="Uploads, results and the SQLite database"
    )
    results_dir: Path | None = Field(
        default=None, description="Where results are published; default <storage_dir>/results"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<storage_dir>/dscm.sqlite3"
    )
    broker_url: str | None = Field(
        default=None, description="Redis URL for Celery; unset runs an in-process worker"
    )
    queue_name: str = Field(default="dscm", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    api_keys_file: Path | None = Field(
        default=None,
        description="JSON file of hashed API keys; default <storage_dir>/api-keys.json",
    )
    api_keys: list[ApiKeyEntry] = Field(
        default_factory=list, description="Hashed keys as JSON, in addition to api_keys_file"
    )
    anonymous_tenant: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Local demo only: requests without a key act as this tenant (submit, read)",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Cap on one POST /v1/jobs body (both files)"
    )
    job_time_limit_s: float = Field(default=3600.0, gt=0, description="Longest one attempt may run")
    visibility_timeout_s: float | None = Field(
        default=None, gt=0, description="Redis redelivery timeout; default 2 x job_time_limit_s"
    )
    region_tiles: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Celery workers: split a slide's tissue tiles into regions of this many "
        "tiles that several workers stain at once (shared storage); 0: one worker per slide",
    )
    max_attempts: int = Field(default=3, ge=1, le=20)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older was lost"
    )
    sweep_interval_s: float = Field(default=15.0, gt=0)
    requeue_grace_s: float = Field(
        default=30.0, ge=0, description="Queued this long and held by no queue: enqueue again"
    )
    retention_s: float = Field(
        default=7 * 86400.0, gt=0, description="Finished jobs and their files are purged after this"
    )
    thumbnail_px: int = Field(default=1024, ge=64, le=8192)
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines of `dscm serve` / `dscm worker`: text or JSON"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Prometheus port of a Celery worker process"
    )
    viewer_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="HMAC key of signed viewer links; unset: a random key per process",
    )
    viewer_link_ttl_s: float = Field(
        default=3600.0, gt=0, le=7 * 86400.0, description="Longest life of a signed viewer link"
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="A connection must send its request head within"
    )
    http_keep_alive_s: float = Field(
        default=5.0, gt=0, le=300, description="An idle keep-alive connection is closed after"
    )
    upload_idle_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="An upload that sends nothing this long gets 408"
    )
    upload_deadline_s: float = Field(
        default=3600.0,
        gt=0,
        description="A request body (an upload) must arrive whole within this, or 408: "
        "2 GiB in an hour is 4.8 Mbit/s, a slow hospital uplink",
    )
    orphan_grace_s: float = Field(
        default=3600.0, gt=0, description="Unfinished uploads untouched this long are deleted"
    )
    worker_ping_timeout_s: float = Field(
        default=1.0, gt=0, le=10, description="How long /readyz waits for Celery workers' pongs"
    )

    # ---- delivery to PACS destinations and webhooks (service.delivery; docs/operations.md) ----
    destinations: list[Destination] = Field(
        default_factory=list, description="DICOMweb STOW-RS destinations, as JSON"
    )
    tenants: dict[str, TenantIntegration] = Field(
        default_factory=dict,
        description="Per tenant, as JSON: allowed destinations, default, webhook, callback hosts",
    )
    integrations_file: Path | None = Field(
        default=None,
        description="JSON file {destinations, tenants} read at start-up, added to the two "
        "settings above; secret files named in it are relative to its folder",
    )
    public_url: str | None = Field(
        default=None,
        description="The service's address as the hospital's systems reach it "
        "(https://dscm.example.org, or with a path prefix behind a proxy): webhook events "
        "then carry absolute links to the job and its result; unset, the links are relative",
    )
    dispatch_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="How often a dispatcher looks for due work"
    )
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_retry_base_s: float = Field(
        default=30.0, gt=0, description="First retry delay of a delivery; doubles each time"
    )
    delivery_retry_max_s: float = Field(default=3600.0, gt=0, description="Cap on that delay")
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_retry_base_s: float = Field(
        default=10.0, gt=0, description="First retry delay of a webhook event; doubles each time"
    )
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="Cap on that delay")
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="A receiver must answer within this"
    )
    webhook_allowed_networks: list[IpNetwork] = Field(
        default_factory=list,
        description="Private, loopback or link-local networks webhooks may still reach "
        "(everything else in those ranges is refused)",
    )

    dicom_uid_root: str = Field(
        default=DEFAULT_UID_ROOT,
        max_length=40,
        pattern=r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\.$",
        description="The organisation's UID root for DICOM output (ends with a dot); the "
        "default is pydicom's, for trials: a site registers its own",
    )

    @field_validator("integrations_file", "public_url", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value  # compose passes unset variables as ""

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_public_url(value)

    @model_validator(mode="after")
    def _check_service_timing(self) -> Settings:
        if self.visibility_timeout_s is not None and (
            self.visibility_timeout_s <= self.job_time_limit_s
        ):
            raise ValueError("visibility_timeout_s must be above job_time_limit_s")
        if self.stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("stale_after_s must be more than twice heartbeat_interval_s")
        if self.upload_deadline_s < self.upload_idle_timeout_s:
            raise ValueError("upload_deadline_s must be at least upload_idle_timeout_s")
        if self.orphan_grace_s <= self.upload_idle_timeout_s:
            raise ValueError("orphan_grace_s must be above upload_idle_timeout_s")
        if self.integrations_file is not None:
            loaded = read_integrations(self.integrations_file)
            self.destinations = [*self.destinations, *loaded.destinations]
            self.tenants = {**loaded.tenants, **self.tenants}
        check_destinations(self.destinations, self.tenants)
        return self

    @property
    def effective_database_url(self) -> str:
        """DSCM_DATABASE_URL, or a SQLite file in the storage folder."""
        return self.database_url or f"sqlite:///{self.storage_dir.resolve() / 'dscm.sqlite3'}"

    @property
    def effective_visibility_timeout_s(self) -> float:
        """DSCM_VISIBILITY_TIMEOUT_S, or twice the job time limit, so the broker does not redeliver
        a job that is still running."""
        return self.visibility_timeout_s or 2 * self.job_time_limit_s

    @property
    def effective_api_keys_file(self) -> Path:
        """DSCM_API_KEYS_FILE, or api-keys.json in the storage folder."""
        return self.api_keys_file or self.storage_dir / "api-keys.json"

    def integration(self, tenant: str) -> TenantIntegration:
        """The tenant's destinations and webhooks (none configured: nothing allowed)."""
        return self.tenants.get(tenant, NO_INTEGRATION)

    def destination(self, name: str) -> Destination | None:
        """The configured destination with this name, or None."""
        return next((d for d in self.destinations if d.name == name), None)


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; cached, and overridable in tests via dependency injection."""
    return Settings()
