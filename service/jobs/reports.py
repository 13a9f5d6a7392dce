"""What a job's report may show its tenant: no server paths (storage layout, host folders)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any


def without_server_paths(value: Any) -> Any:
    """``value`` with every absolute path cut to its file name, at any depth.

    The engine's report names its inputs by path (``input.rcm.path``); the job's report is
    shown to every key of the tenant and to viewer-link holders, who learn nothing from where
    the server keeps files. Reports stored before this existed are cleaned when shown.
    """
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str) and value.startswith("/"):
        return PurePosixPath(value).name
    return value
