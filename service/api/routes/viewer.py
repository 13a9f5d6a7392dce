"""The viewer's API: Deep Zoom (DZI + tiles) per layer, and signed viewer links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReaderDep, ServicesDep, ViewableJobDep, find_job
from service.api.routes.common import problems
from service.api.schemas import ViewerLink, ViewerLinkCreate, ViewLayer
from service.api.views import API_PREFIX, viewer_url

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["viewer"])

# A finished job's layers never change (a new attempt never follows success), so browsers may
# keep tiles; "private" because every request is authenticated.
TILE_CACHE_CONTROL = "private, max-age=86400, immutable"
DZI_CACHE_CONTROL = "private, max-age=300"


@router.get(
    "/{job_id}/dzi",
    response_class=Response,
    responses={
        200: {"content": {"application/xml": {}}, "description": "Deep Zoom descriptor"},
        **problems(401, 403, 404, 409, 410, 422),
    },
    summary="Deep Zoom descriptor (DZI) of a layer of a finished job",
)
async def get_dzi(
    job: ViewableJobDep, services: ServicesDep, layer: ViewLayer = "stain"
) -> Response:
    xml = await run_in_threadpool(services.tiles.dzi, job, layer)
    return Response(xml, media_type="application/xml", headers={"Cache-Control": DZI_CACHE_CONTROL})


@router.get(
    "/{job_id}/dzi_files/{level:int}/{column:int}_{row:int}.jpeg",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "One Deep Zoom tile"},
        **problems(401, 403, 404, 409, 410, 422),
    },
    summary="One Deep Zoom tile (404 outside the pyramid)",
)
async def get_tile(
    job: ViewableJobDep,
    services: ServicesDep,
    level: int,
    column: int,
    row: int,
    layer: ViewLayer = "stain",
) -> Response:
    data = await run_in_threadpool(services.tiles.tile, job, layer, level, column, row)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": TILE_CACHE_CONTROL})


@router.post(
    "/{job_id}/viewer-link",
    response_model=ViewerLink,
    status_code=201,
    responses=problems(401, 403, 404, 422),
    summary="A short-lived signed link to the viewer of one job (no API key needed to open it)",
)
def create_viewer_link(
    job_id: str,
    principal: ReaderDep,
    services: ServicesDep,
    body: Annotated[ViewerLinkCreate | None, Body()] = None,
) -> ViewerLink:
    job = find_job(services, principal, job_id)
    ttl_s = body.ttl_s if body is not None else None
    token, expires_at_s = services.links.issue(job.id, job.tenant, ttl_s)
    return ViewerLink(
        url=f"{viewer_url(job.id)}#token={token}",
        token=token,
        expires_at=datetime.fromtimestamp(expires_at_s, UTC),
    )
