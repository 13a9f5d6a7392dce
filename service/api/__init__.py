"""The HTTP API: FastAPI app factory, routes, schemas, auth and problem+json errors."""

from service.api.app import create_app

__all__ = ["create_app"]
