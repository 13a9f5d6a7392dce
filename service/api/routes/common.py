"""Helpers shared by the routers."""

from __future__ import annotations

from typing import Any

from service.api.schemas import Problem


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: these statuses answer with problem+json."""
    return {code: {"model": Problem, "content": {"application/problem+json": {}}} for code in codes}
