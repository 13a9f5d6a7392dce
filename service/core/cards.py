"""Reading a model or colour card: JSON, checked against the published model-card schema.

The schema (service/core/schemas/model-card.schema.json, linked from docs/) is the contract
between training and the engine; a card that breaks it is refused when it is loaded, with the
field named, instead of failing later inside a stain.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from service.vocabulary.errors import ModelError

SCHEMA_PATH = Path(__file__).with_name("schemas") / "model-card.schema.json"


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def card_problems(data: Any) -> list[str]:
    """Every way ``data`` breaks the model-card schema, as ``field: reason`` (empty: none)."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(card)'}: {e.message}" for e in errors]


def read_card_json(path: Path) -> dict[str, Any]:
    """A model or colour card's JSON object; a ModelError when it cannot be read as one or does
    not follow the schema."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read model card {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model card {path} is not a JSON object")
    problems = card_problems(data)
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (and {len(problems) - 3} more)" if problems[3:] else ""
        )
        raise ModelError(f"model card {path.name} does not follow the model-card schema: {shown}")
    return data
