"""The browser pages: the tenant's job list (/viewer) and one job's viewer (/viewer/{job_id}).

The pages are static shells with no job data in them: their scripts fetch everything from /v1
with the API key the user typed (kept in sessionStorage) or a signed viewer link's token, so a
page needs no credentials of its own and the API enforces tenants exactly as for any client.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.problems import ApiError
from service.api.serialise import VIEWER_PREFIX
from service.jobs.job import is_job_id

API_DIR = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"
STATIC_PREFIX = "/static"

# Scripts only from this origin; tiles are blob:/data: images drawn on a canvas. OpenSeadragon
# writes style attributes into its own markup, so inline styles (not scripts) are allowed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix=VIEWER_PREFIX, include_in_schema=False)


@cache
def _template(name: str) -> str:
    return (TEMPLATES_DIR / name).read_text(encoding="utf-8")


@router.get("", response_class=HTMLResponse)
def job_list_page() -> HTMLResponse:
    """The job list page (a static HTML template)."""
    return HTMLResponse(_template("jobs.html"), headers=PAGE_HEADERS)


@router.get("/{job_id}", response_class=HTMLResponse)
def viewer_page(job_id: str) -> HTMLResponse:
    """The viewer page of one job; 404 for a string that is not a job id."""
    if not is_job_id(job_id):
        raise ApiError(404, "job_not_found", "no such job")
    return HTMLResponse(_template("viewer.html"), headers=PAGE_HEADERS)
