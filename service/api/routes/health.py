"""Probes and metrics: /livez, /readyz, /metrics (unauthenticated; expose on the internal net)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.api.deps import ServicesDep
from service.api.metrics import render_metrics
from service.api.problems import problem_response
from service.api.readiness import run_checks
from service.api.schemas import Liveness, Problem, Readiness

router = APIRouter(tags=["operations"])


@router.get("/livez", response_model=Liveness, summary="The process is alive")
def livez() -> Liveness:
    """Always ok while the process answers HTTP; it checks nothing else."""
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Problem, "content": {"application/problem+json": {}}}},
    summary="Database, broker or worker, storage and models are usable",
)
async def readyz(request: Request, services: ServicesDep) -> Response:
    """The readiness checks; 503 problem+json naming the failing required checks."""
    checks = await run_in_threadpool(run_checks, services)
    ready = all(check.ok for check in checks if check.required)
    body = [check.model_dump() for check in checks]
    if ready:
        return JSONResponse(Readiness(ready=True, checks=checks).model_dump())
    failing = ", ".join(check.name for check in checks if check.required and not check.ok)
    return problem_response(
        request.url.path,
        503,
        "not_ready",
        "Service Unavailable",
        f"not ready: {failing}",
        checks=body,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    summary="Prometheus metrics",
)
async def metrics(services: ServicesDep) -> Response:
    """Job counts by state, queue length and the API's and worker's metrics in Prometheus text
    format."""
    payload = await run_in_threadpool(render_metrics, services)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
