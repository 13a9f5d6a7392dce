"""Case identity: the label and accession number rules, and the TIFF that carries them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tifffile
from click.testing import CliRunner

from service.cli import main
from service.vocabulary.case import Case, check_external_id, check_label

LABEL = "Mrs Ångström, left cheek, margin 3 o'clock"
EXTERNAL_ID = "S24-01234/B"
OME_NS = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def test_label_rules_keep_one_line_of_text_and_never_echo_it() -> None:
    assert check_label(f"  {LABEL} ") == LABEL
    assert check_label("   ") is None and check_label(None) is None
    assert check_label("x" * 200) == "x" * 200
    assert check_label("नमस्ते \u200dश्री") is not None  # joiners are part of scripts
    for bad in ("x" * 201, "two\nlines", "tab\there", "bidi \u202e trick", "nul\x00"):
        with pytest.raises(ValueError) as refused:
            check_label(bad)
        assert bad.strip() not in str(refused.value)


def test_external_id_rules() -> None:
    for good in ("S24-01234", "HP 2024/0193", "a.b_c:d", "7", "x" * 64):
        assert check_external_id(good) == good
    assert check_external_id(" S24 ") == "S24" and check_external_id("") is None
    for bad in ("Q9Z" * 22, "Q9Z#1", "Q9Z+1", "-Q9Z", "Q9Z\u00a0B", "Ü9Z", "Q9Z&b=c", "Q9Z\nb"):
        with pytest.raises(ValueError) as refused:
            check_external_id(bad)
        assert "9Z" not in str(refused.value)


def test_description_names_the_case() -> None:
    assert Case().description() is None
    text = Case(LABEL, EXTERNAL_ID).description()
    assert text is not None
    assert f"label: {LABEL}" in text.splitlines() and f"external_id: {EXTERNAL_ID}" in text
    assert "label" not in (Case(None, EXTERNAL_ID).description() or "")


def stain(make_pair, output: Path, *extra: str) -> None:
    inputs = make_pair(300, 400)
    result = CliRunner().invoke(
        main,
        ["stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(output),
         "--stages", "gareau", "--tile-px", "128", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_cli_writes_the_case_into_every_level_of_a_tiff(make_pair, tmp_path: Path) -> None:
    output = tmp_path / "case.tif"
    stain(make_pair, output, "--label", LABEL, "--external-id", EXTERNAL_ID)
    with tifffile.TiffFile(output) as tiff:
        assert len(tiff.pages) >= 2
        for page in tiff.pages:
            description = page.tags["ImageDescription"].value
            assert f"label: {LABEL}" in description
            assert f"external_id: {EXTERNAL_ID}" in description
    import openslide  # the reader most whole-slide tools use

    with openslide.OpenSlide(output) as slide:
        assert LABEL in slide.properties["openslide.comment"]


def test_cli_without_a_case_writes_no_description(make_pair, tmp_path: Path) -> None:
    output = tmp_path / "plain.tif"
    stain(make_pair, output)
    with tifffile.TiffFile(output) as tiff:
        assert "ImageDescription" not in tiff.pages[0].tags


def test_ome_tiff_carries_the_case_in_the_image_description_element(
    make_pair, tmp_path: Path
) -> None:
    output = tmp_path / "case.ome.tif"
    label = 'biopsy <2> & "margin"'  # must be escaped in the XML
    stain(make_pair, output, "--format", "ome-tiff", "--label", label, "--external-id", "A1")
    with tifffile.TiffFile(output) as tiff:
        root = ET.fromstring(tiff.pages[0].tags["ImageDescription"].value)
    image = root.find(f"{OME_NS}Image")
    assert image is not None
    children = [child.tag.removeprefix(OME_NS) for child in image]
    assert children[:2] == ["Description", "Pixels"]  # the schema's order
    description = image.find(f"{OME_NS}Description")
    assert description is not None and description.text == Case(label, "A1").description()


def test_cli_refuses_a_bad_case_without_repeating_it(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(64, 64)
    output = tmp_path / "bad.tif"
    for option, value in (("--external-id", "S24#SECRET"), ("--label", "SECRET\nline")):
        result = CliRunner().invoke(
            main,
            ["stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(output),
             "--stages", "gareau", option, value],
        )  # fmt: skip
        assert result.exit_code == 4, result.output
        assert "SECRET" not in result.output and not output.exists()
