"""The stage registry (service.core.stages) is the one list the vocabulary, the card schema,
the chain and the exporter agree on."""

from __future__ import annotations

import json
from pathlib import Path

from service.core.cards import SCHEMA_PATH
from service.core.chain import resolve_stages
from service.core.models import stages_off_by_default
from service.core.stages import CARD_ROLES, NETWORK_ROLES, STAGE_TABLE
from service.vocabulary.options import STAGES


def test_the_vocabulary_names_the_registered_stages_in_chain_order() -> None:
    assert tuple(stage.name for stage in STAGE_TABLE) == STAGES


def test_the_card_schema_accepts_exactly_the_registered_roles() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert sorted(schema["properties"]["role"]["enum"]) == sorted(CARD_ROLES)
    assert set(NETWORK_ROLES) <= set(CARD_ROLES)


def test_a_card_flag_keeps_its_stage_out_of_the_default_chain(tmp_path: Path) -> None:
    card = {"name": "d", "version": "1.0.0", "role": "despeckle", "median_after": False}
    card |= {"architecture": "a", "sha256": "0" * 64, "halo_px": 1}
    card |= {"input": {"channels": 1, "range": [0, 1]}, "output": {"channels": 1}}
    (tmp_path / "despeckle.json").write_text(json.dumps(card))
    found = {"despeckle": tmp_path / "despeckle.onnx"}
    off = stages_off_by_default(found)
    assert off == ("median",)
    assert resolve_stages(None, found, off) == ("despeckle", "gareau")
    card["default"] = False
    (tmp_path / "despeckle.json").write_text(json.dumps(card))
    assert stages_off_by_default(found) == ("despeckle", "median")
