"""/readyz checks: database, broker (or the in-process worker), storage, models.

The model check is the engine's (cards and file hashes); the API never imports onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable

from service.api.schemas import Check
from service.api.services import Services


def _run(name: str, action: Callable[[], object]) -> Check:
    try:
        action()
    except Exception as exc:
        return Check(name=name, ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
    return Check(name=name, ok=True, detail="ok")


def run_checks(services: Services) -> list[Check]:
    broker = "worker" if services.worker is not None else "broker"
    models_ok, models_detail = services.engine.check_models(services.settings.models_dir)
    return [
        _run("database", services.store.ping),
        _run(broker, services.queue.ping),
        _run("storage", services.storage.check_writable),
        Check(name="models", ok=models_ok, detail=models_detail),
    ]
