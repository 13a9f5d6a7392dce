"""The command line end to end on tiny data: prepare, train, export, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from service.core.models import discover_stage_models, stages_off_by_default
from training.cli import main


def run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_prepare_train_export_evaluate(fake_data_root: Path, tmp_path: Path) -> None:
    prepared, models, docs = tmp_path / "prepared", tmp_path / "models", tmp_path / "docs"
    assert "heldout_skin" in run(["prepare", str(fake_data_root), "--out", str(prepared)])
    run([
        "despeckle", "--prepared", str(prepared), "--out", str(tmp_path / "d"), "--width", "4",
        "--depth", "2", "--steps", "2", "--batch-size", "2", "--crop-px", "32", "--threads", "1",
    ])  # fmt: skip
    run(["export", "despeckle", str(tmp_path / "d"), "--out", str(models / "despeckle.onnx")])
    run([
        "fit-colour", str(fake_data_root), "--slide", "he/skin-wsi/molluscum-contagiosum",
        "--out", str(models / "colour.json"),
    ])  # fmt: skip
    run([
        "cyclegan", "--prepared", str(prepared), "--out", str(tmp_path / "c"), "--despeckle-onnx",
        str(models / "despeckle.onnx"), "--colour-card", str(models / "colour.json"),
        "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--stage-crops", "32,48",
        "--stage-steps", "1,1", "--checkpoint-every", "1", "--threads", "1",
    ])  # fmt: skip
    run([
        "export", "generator", str(tmp_path / "c"), "--out", str(models / "generator.onnx"),
        "--off-by-default",
    ])  # fmt: skip
    found = discover_stage_models(models)
    assert set(found) == {"despeckle", "generator", "colour"}
    # installed, one flag away; the exported despeckler's card keeps the median out by default
    assert stages_off_by_default(found) == ("generator", "median")
    card = json.loads((models / "generator.json").read_text())
    assert card["architecture"].endswith("upsample=resize)")  # no transposed convolutions
    assert card["splits"]["counts"]["train_skin"]["cases"] == 2 and card["licence"]
    doc = docs / "models.md"
    docs.mkdir()
    doc.write_text("# Models\n")
    run([
        "evaluate", str(fake_data_root), "--prepared", str(prepared), "--models", str(models),
        "--figures", str(docs / "figures"), "--doc", str(doc), "--json", str(docs / "r.json"),
    ])  # fmt: skip
    text = doc.read_text()
    assert "colour + generator" in text and "network + median 3x3" in text
    assert (docs / "figures" / "stain-example-skin-morphea.png").is_file()
    metrics = json.loads((models / "generator.json").read_text())["metrics"]
    assert "colour + generator" in metrics["held_out_skin_median"]
