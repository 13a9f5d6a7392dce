"""The `dscm` command: stain (pair and scan folder, onto a full disk), --json, info, models."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import pyvips
from click.testing import CliRunner
from engine_fixtures import SAMPLE_SCAN
from support.tmpfs import run_on_small_disk

from service.cli import main

REPO = Path(__file__).resolve().parents[1]
CANVAS_HEADER_BYTES = 64 * 1024  # more than the working canvas's TIFF header and strip tables
PROGRESS_LINE = re.compile(r"^\s*\d+ % ")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_stain_pair_prints_a_json_report(make_pair, shared_models: Path, tmp_path: Path) -> None:
    inputs = make_pair(700, 900)
    output = tmp_path / "o.tif"
    result = invoke(
        "stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(output),
        "--models", str(shared_models), "--tile-px", "256", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stages"] == ["despeckle", "median", "gareau", "generator"]
    assert {m["role"] for m in report["models"]} == {"despeckle", "generator"}
    assert report["tiles"]["computed"] + report["tiles"]["skipped"] == report["tiles"]["total"]
    assert set(report["timings_s"]) >= {"despeckle", "median", "gareau", "generator", "pyramid"}
    assert output.is_file()


def test_stages_option_selects_stages(make_pair, shared_models: Path, tmp_path: Path) -> None:
    inputs = make_pair(300, 300)
    result = invoke(
        "stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(tmp_path / "g.tif"),
        "--models", str(shared_models), "--stages", "gareau", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"] == ["gareau"]
    bad = invoke(
        "stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(tmp_path / "b.tif"),
        "--stages", "gareau,sharpen",
    )  # fmt: skip
    assert bad.exit_code != 0 and "unknown stage" in bad.stderr


def test_stain_scan_folder_and_info(tmp_path: Path) -> None:
    if not SAMPLE_SCAN.is_dir():
        pytest.skip("bundled sample not present")
    output = tmp_path / "sample.tif"
    result = invoke("stain", str(SAMPLE_SCAN), "-o", str(output), "--stages", "median,gareau")
    assert result.exit_code == 0, result.output
    info = invoke("info", str(output), "--json")
    data = json.loads(info.stdout)
    assert data["mpp_um"] == pytest.approx(0.75, rel=1e-3)
    assert len(data["levels"]) >= 3 and data["bands"] == 3
    text = invoke("info", str(output))
    assert "level 0:" in text.stdout
    folder = json.loads(invoke("info", str(SAMPLE_SCAN), "--json").stdout)
    assert [Path(d["path"]).parent.name for d in folder] == ["DET#1", "DET#2"]
    ome = tmp_path / "sample.ome.tif"
    made = invoke("stain", str(SAMPLE_SCAN), "-o", str(ome), "--stages", "gareau",
                  "--format", "ome-tiff", "--json")  # fmt: skip
    assert made.exit_code == 0, made.output
    written = json.loads(made.stdout)["levels"]
    described = json.loads(invoke("info", str(ome), "--json").stdout)["levels"]
    assert len(described) == len(written) >= 3  # SubIFD levels are levels too


def test_models_lists_cards(shared_models: Path) -> None:
    result = invoke("models", "--models", str(shared_models))
    assert result.exit_code == 0
    assert "despeckle" in result.stdout and "generator" in result.stdout
    assert "{" not in result.stdout  # readable lines, not Python dicts
    assert "default chain: despeckle -> median -> gareau -> generator" in result.stdout
    cards = json.loads(invoke("models", "--models", str(shared_models), "--json").stdout)
    assert cards["generator"]["norm"] == "instance_shared"


def test_without_settings_the_shipped_models_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first command names no models folder: a checkout's models/ is the default."""
    from service.runtime.config import Settings

    monkeypatch.delenv("DSCM_MODELS_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert Settings().models_dir.resolve() == repo / "models"
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert "default chain: despeckle -> gareau -> colour" in result.stdout


def test_tampered_model_is_refused(make_pair, shared_models: Path, tmp_path: Path) -> None:
    with (shared_models / "generator.onnx").open("ab") as handle:
        handle.write(b"\0")
    inputs = make_pair(200, 200)
    result = invoke(
        "stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(tmp_path / "t.tif"),
        "--models", str(shared_models),
    )  # fmt: skip
    assert result.exit_code != 0 and "sha256" in result.stderr
    assert not (tmp_path / "t.tif").exists()


def test_usage_errors(tmp_path: Path) -> None:
    result = invoke("stain", "-o", str(tmp_path / "x.tif"))
    assert result.exit_code != 0 and "SCAN_DIR" in result.stderr


def test_a_file_given_as_scan_dir_says_so_and_suggests_rcm_and_fcm(tmp_path: Path) -> None:
    image = tmp_path / "fcm.tif"
    image.write_bytes(b"II*\x00")
    result = invoke("stain", str(image), "-o", str(tmp_path / "x.tif"))
    assert result.exit_code == 4, result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output
    assert "is a file, not a scan folder" in message and "--rcm" in message and "--fcm" in message
    assert "not found" not in message


def test_threads_help_names_the_backends_it_sets() -> None:
    """--threads sets onnxruntime's or OpenVINO's threads, whichever runs."""
    text = " ".join(invoke("stain", "--help").output.split())
    threads = text[text.index("--threads") :][:200]
    assert "onnxruntime" in threads and "OpenVINO" in threads, threads


@pytest.mark.parametrize("room", ["nothing", "canvas"])
def test_stain_onto_a_full_disk_fails_cleanly(make_pair, tmp_path: Path, room: str) -> None:
    """A disk that really fills up (ENOSPC from a small tmpfs): one line on stderr that says so,
    the exit code of output errors, no traceback, nothing left on the disk. ``nothing``: not
    even the working canvas fits; ``canvas``: it fits, the pyramid saved beside it does not."""
    size_px = 512
    inputs = make_pair(size_px, size_px, tissue_fraction=1.0)
    stain = ["stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm)]
    stain += ["--stages", "median,gareau", "--mpp", "0.75"]
    roomy = tmp_path / "roomy.tif"
    assert invoke(*stain, "-o", str(roomy)).exit_code == 0  # with room, the same stain succeeds
    assert roomy.stat().st_size > CANVAS_HEADER_BYTES  # so the pyramid cannot fit beside the canvas
    # The canvas is uncompressed RGB plus its header: the "canvas" disk holds it and less spare
    # room than the pyramid needs.
    disk_bytes = {"nothing": 64 * 1024, "canvas": size_px * size_px * 3 + CANVAS_HEADER_BYTES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCM_")}
    env["PYTHONPATH"] = str(REPO)
    disk = tmp_path / "small-disk"
    run = run_on_small_disk(
        [sys.executable, "-m", "service.cli", *stain, "-o", str(disk / "o.tif")],
        disk,
        disk_bytes[room],
        env,
        cwd=tmp_path,
    )
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("dscm: error:")]
    progress = [line for line in lines if PROGRESS_LINE.match(line)]
    assert run.returncode == 5, run.stderr  # the CLI's code for output errors (HTTP 507)
    assert len(errors) == 1 and "no space" in errors[0].lower(), run.stderr
    assert lines[-1] == errors[0] and len(progress) == len(lines) - 1, run.stderr  # nothing else
    if room == "canvas":
        assert progress, "the canvas fitted, so staining ran before the disk filled"
    assert run.left_on_disk == []


def test_layers_option_keeps_extra_pyramids_beside_the_stain(make_pair, tmp_path: Path) -> None:
    """`--layers` as the API's layers field: one pyramid per layer, named after the output;
    beside a DICOM series they are TIFFs named after its pyramid. Gareau only (no network)."""
    inputs = make_pair(300, 400)
    pair = ("--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "--stages", "gareau")
    result = invoke("stain", *pair, "-o", str(tmp_path / "o.tif"), "--layers", "fcm, gareau")
    assert result.exit_code == 0, result.output
    for name, bands in (("o.fcm.tif", 1), ("o.gareau.tif", 3)):
        image = pyvips.Image.new_from_file(str(tmp_path / name))
        assert (image.width, image.height, image.bands) == (400, 300, bands)
    assert not (tmp_path / "o.rcm.tif").exists()
    dicom = invoke(
        "stain", *pair, "-o", str(tmp_path / "series"), "--format", "dicom", "--layers", "rcm"
    )
    assert dicom.exit_code == 0, dicom.output
    assert (tmp_path / "series.tiff").is_file() and (tmp_path / "series.rcm.tiff").is_file()
    bogus = invoke("stain", *pair, "-o", str(tmp_path / "b.tif"), "--layers", "fcm,nuclei")
    assert bogus.exit_code == 4 and "unknown layer(s) nuclei" in bogus.stderr
    assert not (tmp_path / "b.tif").exists()
