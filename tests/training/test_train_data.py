"""Data preparation: splits by case, skin held out, a manifest of every patch."""

from __future__ import annotations

import json
from pathlib import Path

from training.data import load_split


def test_splits_are_disjoint_by_case(prepared_dir: Path) -> None:
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    case_splits: dict[str, set[str]] = {}
    for record in manifest["patches"]:
        split = {"val_skin": "train_skin"}.get(record["split"], record["split"])
        case_splits.setdefault(record["case_id"], set()).add(split)
        assert (prepared_dir / record["file"]).is_file()
    assert all(len(splits) == 1 for splits in case_splits.values())
    # the glioma crops of TCGA-AA-0001 follow the MoNuSeg slide of the same case
    sources = {r["source_file"] for r in manifest["patches"] if r["case_id"] == "TCGA-AA-0001"}
    assert any("monuseg" in s for s in sources) and any("glioma" in s for s in sources)
    skin = {r["case_id"]: r["split"] for r in manifest["patches"] if "skin" in r["source_file"]}
    assert skin["wikimedia-test"] == skin["morphea"] == "heldout_skin"  # held out by slide
    train_skin = {r["file"] for r in manifest["patches"] if r["split"] == "train_skin"}
    val_skin = {r["file"] for r in manifest["patches"] if r["split"] == "val_skin"}
    assert any("keloid-scar-01" in f for f in train_skin)
    assert any("molluscum-contagiosum-01" in f for f in train_skin)
    assert val_skin and all("-10-" in f for f in val_skin)  # every tenth crop validates
    assert {"train_a", "train_b", "test"} <= {r["split"] for r in manifest["patches"]}


def test_patches_are_resampled_to_confocal_pixel_size(prepared_dir: Path) -> None:
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    monuseg = [r for r in manifest["patches"] if "monuseg" in r["source_file"]]
    assert all(r["height_px"] == 96 for r in monuseg)  # 288 px at 0.25 um/px -> 96 at 0.75
    assert load_split(prepared_dir, ("train_a",))[0].shape[2] == 3
