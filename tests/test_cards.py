"""Model cards follow the published schema (docs/model-card.schema.json); a card that breaks it
is refused on load with the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.core.cards import SCHEMA_PATH, card_problems, read_card_json
from service.core.models import discover_stage_models, read_card
from service.vocabulary.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


def shipped_cards() -> list[Path]:
    return sorted((REPO / "models").glob("*.json"))


def test_docs_publish_the_schema_the_engine_checks() -> None:
    published = REPO / "docs" / "model-card.schema.json"
    assert published.resolve() == SCHEMA_PATH.resolve()
    assert "model-card.schema.json" in (REPO / "docs" / "models.md").read_text()


@pytest.mark.parametrize("card", shipped_cards(), ids=lambda p: p.name)
def test_shipped_cards_follow_the_schema(card: Path) -> None:
    assert card_problems(json.loads(card.read_text())) == []


def write_card(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "models" / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("despeckle", lambda d: d.pop("halo_px"), "(card): 'halo_px' is a required property"),
        ("despeckle", lambda d: d.update(sha256="not-a-hash"), "sha256"),
        ("generator", lambda d: d["input"].pop("range"), "input: 'range'"),
        ("generator", lambda d: d.update(norm="batch"), "norm"),
        ("generator", lambda d: d.update(default="no"), "default"),
        ("colour", lambda d: d.update(lab_std=[1.0, -2.0, 3.0]), "lab_std.1"),
        ("colour", lambda d: d.pop("lab_mean"), "'lab_mean' is a required property"),
        ("colour", lambda d: d.update(mpp_um=0), "mpp_um"),
        ("despeckle", lambda d: d["training_data"].update(mpp_um=50.0), "training_data.mpp_um"),
        ("colour", lambda d: d.update(um_per_px=0.01), "um_per_px"),  # the old name: same range
    ],
)  # fmt: skip
def test_a_card_that_breaks_the_schema_is_refused_naming_the_field(
    tmp_path: Path, name: str, change: Any, field: str
) -> None:
    data = shipped(name)
    change(data)
    path = write_card(tmp_path, name, data)
    with pytest.raises(ModelError, match="does not follow the model-card schema") as refused:
        read_card_json(path)
    assert field in refused.value.detail


def test_the_engine_refuses_a_bad_card_when_it_discovers_the_models(tmp_path: Path) -> None:
    data = shipped("despeckle")
    data["halo_px"] = -1
    write_card(tmp_path, "despeckle", data)
    (tmp_path / "despeckle.onnx").write_bytes((REPO / "models" / "despeckle.onnx").read_bytes())
    with pytest.raises(ModelError, match="halo_px"):
        discover_stage_models(tmp_path)
    with pytest.raises(ModelError, match="halo_px"):
        read_card(tmp_path / "despeckle.json")


def test_the_schema_bounds_a_cards_pixel_size_by_the_services_range() -> None:
    from service.vocabulary.options import MPP_RANGE_UM

    bounds = json.loads(SCHEMA_PATH.read_text())["$defs"]["mpp_um"]
    assert (bounds["minimum"], bounds["maximum"]) == MPP_RANGE_UM


@pytest.mark.parametrize("name", ["despeckle", "generator", "colour"])
def test_a_card_written_before_mpp_um_still_states_its_pixel_size(
    tmp_path: Path, name: str
) -> None:
    from service.core.chain import card_mpp_um

    data = shipped(name)
    section = data.get("training_data", data)
    section["um_per_px"] = section.pop("mpp_um")  # what cards said before issue 18
    card = read_card_json(write_card(tmp_path, name, data))
    assert card_mpp_um(card) == card_mpp_um(shipped(name)) == 0.75
