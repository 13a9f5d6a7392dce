"""The viewer's API: Deep Zoom (DZI + tiles) per layer, and signed viewer links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from service.api.deps import ReaderDep, ServicesDep, ViewableJobDep, find_job
from service.api.limits import read_json_body
from service.api.live_tiles import check_live_layer, is_live
from service.api.problems import ApiError
from service.api.published import require_succeeded
from service.api.routes.common import problems
from service.api.schemas import LiveViewPublic, ViewerLink, ViewerLinkCreate
from service.api.serialise import API_PREFIX, viewer_url
from service.jobs.job import JobState
from service.vocabulary.options import ViewLayer

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["viewer"])
MAX_INDEX_DIGITS = 9  # no pyramid has a billion levels, columns or rows


class _Digits(Convertor[str]):
    """A path segment of decimal digits, kept as text: Starlette's ``int`` convertor calls
    int() on any number of digits, and Python refuses more than 4300 (a 500, not a 404)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        """Keep the matched digits as a string; tile_index turns them into a number or refuses
        them."""
        return value

    def to_string(self, value: str) -> str:
        """The digits as they are, for url_path_for."""
        return value


register_url_convertor("digits", _Digits())


def tile_index(digits: str, what: str) -> int:
    """A level, column or row; 404 ``tile_not_found`` for one too long to be in any pyramid."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > MAX_INDEX_DIGITS:
        raise ApiError(
            404, "tile_not_found", f"{what} {significant[:12]}... is outside the pyramid"
        )
    return int(significant)


_VIEWER_LINK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": ViewerLinkCreate.model_json_schema()}},
    }
}

# A finished job's layers never change (a new attempt never follows success), so browsers may
# keep tiles; "private" because every request is authenticated.
TILE_CACHE_CONTROL = "private, max-age=86400, immutable"
DZI_CACHE_CONTROL = "private, max-age=300"
# A running job's tile: one whose grid tiles are all stained is final (the viewer asks for it
# under a URL versioned by the ledger); one with parts still to come changes: never stored.
LIVE_TILE_CACHE_CONTROL = "private, max-age=86400"
UNFINISHED_TILE_CACHE_CONTROL = "no-store"
LIVE_DZI_CACHE_CONTROL = "private, no-cache"


@router.get(
    "/{job_id}/dzi",
    response_class=Response,
    responses={
        200: {"content": {"application/xml": {}}, "description": "Deep Zoom descriptor"},
        **problems(401, 403, 404, 409, 410, 422),
    },
    summary="Deep Zoom descriptor (DZI) of a layer of a job (while it runs: its final size)",
)
async def get_dzi(
    job: ViewableJobDep, services: ServicesDep, layer: ViewLayer = "stain"
) -> Response:
    """The Deep Zoom descriptor of one layer of the job's result; while the job runs, the same
    descriptor (the final pyramid's size), so a viewer opened early does not jump."""
    xml = await run_in_threadpool(services.tiles.dzi, job, layer)
    cache = LIVE_DZI_CACHE_CONTROL if is_live(job) else DZI_CACHE_CONTROL
    return Response(xml, media_type="application/xml", headers={"Cache-Control": cache})


@router.get(
    "/{job_id}/live",
    response_model=LiveViewPublic,
    responses=problems(401, 403, 404, 409, 422),
    summary="Which tiles of a running job are stained (for a viewer that fills in)",
)
async def get_live_view(
    job: ViewableJobDep, services: ServicesDep, layer: ViewLayer = "stain"
) -> LiveViewPublic:
    """The running job's tile grid and, per grid tile, whether it is stained; 409 once the job
    finished (its published pyramid is then served)."""
    if not is_live(job):
        if job.state == JobState.SUCCEEDED:
            raise ApiError(409, "job_finished", "the job succeeded: its pyramid is published")
        require_succeeded(job, "live view")
    check_live_layer(job, layer)
    found = await run_in_threadpool(services.tiles.live.done, job)
    return LiveViewPublic.of(job, found)


@router.get(
    "/{job_id}/dzi_files/{level:digits}/{column:digits}_{row:digits}.jpeg",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "One Deep Zoom tile"},
        **problems(401, 403, 404, 409, 410, 422),
    },
    summary="One Deep Zoom tile (404 outside the pyramid; while the job runs, what is stained)",
)
async def get_tile(
    job: ViewableJobDep,
    services: ServicesDep,
    level: str,
    column: str,
    row: str,
    layer: ViewLayer = "stain",
) -> Response:
    """One JPEG tile of a layer; 404 for a tile outside the pyramid. While the job runs, the
    stained parts and, greyed, the slide's overview for the rest (never stored by the browser
    until complete); a failed or cancelled job's tiles are 409."""
    index = (tile_index(level, "level"), tile_index(column, "column"), tile_index(row, "row"))
    served = await run_in_threadpool(services.tiles.tile, job, layer, *index)
    if not served.live:
        cache = TILE_CACHE_CONTROL
    else:
        cache = LIVE_TILE_CACHE_CONTROL if served.final else UNFINISHED_TILE_CACHE_CONTROL
    return Response(served.jpeg, media_type="image/jpeg", headers={"Cache-Control": cache})


@router.post(
    "/{job_id}/viewer-link",
    response_model=ViewerLink,
    status_code=201,
    openapi_extra=_VIEWER_LINK_BODY,
    responses=problems(401, 403, 404, 408, 413, 422),
    summary="A short-lived signed link to the viewer of one job (no API key needed to open it)",
)
async def create_viewer_link(
    request: Request, job_id: str, principal: ReaderDep, services: ServicesDep
) -> ViewerLink:
    """A signed viewer URL and token for one job, valid for ``ttl_s`` (capped at the configured
    maximum), opening on the view the body asks for."""
    # The body is read here, after the key was checked, and at most MAX_JSON_BODY_BYTES of it.
    settings = services.settings
    body = await read_json_body(
        request,
        ViewerLinkCreate,
        settings.upload_idle_timeout_s,
        deadline_s=settings.upload_deadline_s,
    )
    job = await run_in_threadpool(find_job, services, principal, job_id)
    ttl_s = body.ttl_s if body is not None else None
    view = body.view() if body is not None else ViewerLinkCreate().view()
    token, expires_at_s = services.links.issue(job.id, job.tenant, ttl_s)
    return ViewerLink(
        url=f"{viewer_url(job.id)}{view.query()}#token={token}",
        token=token,
        expires_at=datetime.fromtimestamp(expires_at_s, UTC),
    )
