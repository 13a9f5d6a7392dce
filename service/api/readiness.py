"""/readyz checks: database, broker (or the in-process worker), files, models, workers.

The model check is the engine's (cards and file hashes); the API never imports onnxruntime.
The workers check (Celery mode) is reported but not required: with no worker alive the API
still accepts jobs (they wait in the queue) and serves results, so it stays in rotation.
"""

from __future__ import annotations

from collections.abc import Callable

from service.api.schemas import Check
from service.api.services import Services


def _run(name: str, action: Callable[[], object]) -> Check:
    try:
        said = action()
    except Exception as exc:
        return Check(name=name, ok=False, detail=f"{type(exc).__name__}: {exc}"[:300])
    return Check(name=name, ok=True, detail=said if isinstance(said, str) else "ok")


def check_workers(services: Services) -> Check:
    """Which Celery workers answer a ping now (advisory: see the module docstring)."""
    timeout_s = services.settings.worker_ping_timeout_s
    try:
        names = services.queue.live_workers(timeout_s)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"[:300]
        return Check(name="workers", ok=False, detail=detail, required=False)
    if not names:
        detail = f"no worker answered a ping within {timeout_s:g} s: jobs wait in the queue"
        return Check(name="workers", ok=False, detail=detail, required=False)
    detail = f"{len(names)} live: {', '.join(names)}"[:300]
    return Check(name="workers", ok=True, detail=detail, required=False)


def run_checks(services: Services) -> list[Check]:
    """The readiness checks: database, broker (or in-process worker), storage, models and, with a
    broker, live workers."""
    broker = "worker" if services.worker is not None else "broker"
    models_ok, models_detail = services.stainer.check_models(services.settings.models_dir)
    checks = [
        _run("database", services.store.ping),
        _run(broker, services.queue.ping),
        _run("storage", services.files.check_writable),
        Check(name="models", ok=models_ok, detail=models_detail),
    ]
    if services.worker is None:
        checks.append(check_workers(services))
    return checks
