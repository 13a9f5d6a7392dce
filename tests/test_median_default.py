"""The 3x3 median after the despeckler is off by default when the despeckler's card says so
(the shipped one does: it measured better alone, docs/models.md), and still runs when asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service.core.cards import card_problems
from service.core.chain import resolve_stages
from service.core.models import discover_stage_models, stages_off_by_default

SHIPPED = Path(__file__).resolve().parents[1] / "models"


def default_chain(folder: Path) -> tuple[str, ...]:
    found = discover_stage_models(folder)
    return resolve_stages(None, found, stages_off_by_default(found))


def test_the_shipped_default_chain_has_no_median_but_runs_it_when_asked() -> None:
    assert default_chain(SHIPPED) == ("despeckle", "gareau", "colour")
    found = discover_stage_models(SHIPPED)
    asked = resolve_stages(["despeckle", "median", "gareau", "colour"], found)
    assert asked == ("despeckle", "median", "gareau", "colour")


def test_a_despeckle_card_without_the_field_keeps_the_median(tmp_path: Path) -> None:
    for name in ("despeckle.onnx", "colour.json"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    card = json.loads((SHIPPED / "despeckle.json").read_text())
    card.pop("median_after")
    (tmp_path / "despeckle.json").write_text(json.dumps(card))
    assert default_chain(tmp_path) == ("despeckle", "median", "gareau", "colour")
    card["median_after"] = "no"
    assert any("median_after" in problem for problem in card_problems(card))


def test_without_a_despeckler_the_median_stays_in_the_default() -> None:
    assert resolve_stages(None, []) == ("median", "gareau")
    assert resolve_stages(None, ["colour"], default_off=["median"]) == ("gareau", "colour")
