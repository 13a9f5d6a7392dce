"""The FastAPI app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service import __version__
from service.api.limits import RequestLimits
from service.api.problems import install_problem_handlers
from service.api.routes import deliveries, health, jobs, pages, viewer
from service.api.services import Services
from service.jobs.runner import Stainer
from service.runtime.config import Settings, get_settings


def create_app(stainer: Stainer, settings: Settings | None = None) -> FastAPI:
    """The API around ``stainer`` (service.jobs.stainer.PipelineStainer in `dscm serve`).

    The engine stains in-process when there is no broker, and answers model questions (readyz,
    stage checks) either way; taking it as an argument keeps the pipeline out of this package.
    ``settings`` default to the environment.

    Services (database, queue, in-process worker, sweeper) open in the lifespan, so a bad
    configuration stops the server at start-up rather than at the first request.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Start the Services with the app and close them when it stops."""
        app.state.services = Services.start(settings, stainer)
        try:
            yield
        finally:
            services, app.state.services = app.state.services, None
            services.close()

    app = FastAPI(
        title="dscm",
        version=__version__,
        summary="Digitally stained confocal microscopy: RCM/FCM slides to H&E-like pyramids",
        lifespan=lifespan,
    )
    app.dependency_overrides[get_settings] = lambda: settings
    install_problem_handlers(app)
    app.add_middleware(RequestLimits, max_upload_bytes=settings.max_upload_bytes)
    app.include_router(jobs.router)
    app.include_router(deliveries.router)
    app.include_router(viewer.router)
    app.include_router(health.router)
    app.include_router(pages.router)
    app.mount(pages.STATIC_PREFIX, StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
