"""/readyz checks: database, broker (or the in-process worker), storage, models.

The model check reads cards and hashes files; it never imports onnxruntime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from service.api.schemas import Check
from service.api.services import Services
from service.core.models import discover_models, file_sha256, read_card
from service.errors import DscmError

_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = file_sha256(path)
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def check_models(models_dir: Path) -> Check:
    try:
        found = discover_models(models_dir)
        for onnx in found.values():
            card = read_card(onnx.with_suffix(".json"))
            if _cached_sha256(onnx) != card.sha256:
                return Check(name="models", ok=False, detail=f"{onnx.name} does not match its card")
    except (DscmError, OSError) as exc:
        return Check(name="models", ok=False, detail=str(exc))
    if not found:
        return Check(name="models", ok=True, detail="no models installed: median + gareau only")
    names = ", ".join(f"{role}={path.name}" for role, path in sorted(found.items()))
    return Check(name="models", ok=True, detail=names)


def _run(name: str, action: Callable[[], object]) -> Check:
    try:
        action()
    except Exception as exc:
        return Check(name=name, ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
    return Check(name=name, ok=True, detail="ok")


def run_checks(services: Services) -> list[Check]:
    broker = "worker" if services.worker is not None else "broker"
    return [
        _run("database", services.store.ping),
        _run(broker, services.queue.ping),
        _run("storage", services.storage.check_writable),
        check_models(services.settings.models_dir),
    ]
