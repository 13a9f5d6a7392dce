"""One Settings object, read from the environment (prefix ``DSCM_``) at the edges only."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


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
    threads: int | None = Field(default=None, ge=1, description="onnxruntime threads per model")


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; cached, and overridable in tests via dependency injection."""
    return Settings()
