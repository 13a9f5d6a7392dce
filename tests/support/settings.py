"""Settings for an API under test: everything it writes under one folder, small tiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.runtime.config import ApiKeyEntry, Settings


def settings_in(root: Path, api_keys: Sequence[ApiKeyEntry], **overrides: Any) -> Settings:
    """Storage, key file and an empty model folder under ``root``; 128 px tiles and thumbnails
    (fast), unless ``overrides`` say otherwise."""
    values: dict[str, Any] = {
        "storage_dir": root / "storage",
        "models_dir": root / "no-models",
        "tile_px": 128,
        "thumbnail_px": 128,
        "api_keys": list(api_keys),
        "api_keys_file": root / "keys.json",
    }
    return Settings(**{**values, **overrides})
