"""DICOM whole-slide output (`--format dicom`): a VL WSI series that the standard's validator,
wsidicom and a real Orthanc with its WSI plugin accept, holding the TIFF pyramid's own pixels.

Backend and precision: Gareau only (``--stages gareau``): no network runs, so nothing here
depends on the inference backend.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import pyvips
from click.testing import CliRunner
from support.orthanc import Orthanc, orthanc_running

from service.cli import main
from service.slide.dicom import VL_WSI_SOP_CLASS, read_level_image, write_series
from service.vocabulary.case import Case, Patient

DCIODVFY = shutil.which("dciodvfy")
PATIENT = ("--patient-id", "P-0042", "--patient-name", "Doe^Jane", "--accession-number", "A17")


def stain_dicom(inputs, output: Path, *extra: str):
    return CliRunner().invoke(
        main,
        [
            "stain", "--rcm", str(inputs.rcm), "--fcm", str(inputs.fcm), "-o", str(output),
            "--stages", "gareau", "--format", "dicom", "--tile-px", "256", "--json", *extra,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One slide (1100 x 1300 px: levels 1300, 650, 325, 162 wide) stained to a DICOM series."""
    from support.pairs import confocal_like, write_gray

    from service.slide import SlideInputs

    root = tmp_path_factory.mktemp("dicom")
    fcm, rcm = confocal_like(1100, 1300)
    inputs = SlideInputs(write_gray(root / "rcm.tif", rcm), write_gray(root / "fcm.tif", fcm))
    result = stain_dicom(
        inputs, root / "out", "--external-id", "S24-01234", "--label", "Left cheek", *PATIENT
    )
    assert result.exit_code == 0, result.output
    return root / "out", json.loads(result.stdout)


def test_series_has_one_instance_per_pyramid_level(series: tuple[Path, dict]) -> None:
    folder, report = series
    pyramid = folder.with_name("out.tiff")
    files = sorted(folder.glob("*.dcm"))
    assert report["output"] == str(pyramid) and pyramid.is_file()
    assert [i["file"] for i in report["dicom"]["instances"]] == [f.name for f in files]
    assert len(files) == len(report["levels"]) == 4
    uids = set()
    for level, (path, expected) in enumerate(zip(files, report["levels"], strict=True)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPClassUID == VL_WSI_SOP_CLASS and ds.Modality == "SM"
        assert ds.DimensionOrganizationType == "TILED_FULL"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (
            expected["width_px"],
            expected["height_px"],
        )
        spacing_mm = float(
            ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]
        )
        assert spacing_mm == pytest.approx(report["mpp_um"] / 1000 * 1300 / expected["width_px"])
        assert ds.ImageType[3] == ("NONE" if level == 0 else "RESAMPLED")
        assert len(ds.OpticalPathSequence[0].ICCProfile) > 100
        assert ds.StudyInstanceUID == report["dicom"]["study_instance_uid"]
        assert ds.SeriesInstanceUID == report["dicom"]["series_instance_uid"]
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == 4


def test_case_and_patient_go_where_dicom_puts_them(series: tuple[Path, dict]) -> None:
    ds = pydicom.dcmread(series[0] / "level-0.dcm", stop_before_pixels=True)
    assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == ("P-0042", "Doe^Jane", "A17")
    assert ds.ContainerIdentifier == "S24-01234"
    specimen = ds.SpecimenDescriptionSequence[0]
    assert specimen.SpecimenIdentifier == "S24-01234"
    assert specimen.SpecimenShortDescription == "Left cheek"


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy missing: apt-get install dicom3tools")
def test_every_instance_passes_the_standard_validator(series: tuple[Path, dict]) -> None:
    for path in sorted(series[0].glob("*.dcm")):
        checked = subprocess.run(
            [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120
        )
        output = checked.stdout + checked.stderr
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert "VLWholeSlideMicroscopyImage" in output, output
        assert errors == [], f"{path.name}: {errors}"
        # The one warning (docs/dicom-conformance.md): dscm makes no Study ID
        warnings = [line for line in output.splitlines() if line.startswith("Warning")]
        assert all("Study ID" in line for line in warnings), warnings


def test_wsidicom_reads_the_tiff_pyramids_pixels(series: tuple[Path, dict]) -> None:
    from wsidicom import WsiDicom

    folder, _ = series
    tiff = pyvips.Image.new_from_file(str(folder.with_name("out.tiff")))
    with WsiDicom.open(folder) as slide:
        assert (slide.size.width, slide.size.height) == (tiff.width, tiff.height)
        region = np.asarray(slide.read_region((300, 200), 0, (600, 500)))[..., :3]
    expected = tiff.crop(300, 200, 600, 500).numpy()
    # the frames are the TIFF's own JPEG tiles: decoded, they are the same pixels
    assert np.array_equal(region, expected)


def test_level_image_helper_matches_each_tiff_page(series: tuple[Path, dict]) -> None:
    folder, _ = series
    for level, path in enumerate(sorted(folder.glob("*.dcm"))):
        page = pyvips.Image.new_from_file(str(folder.with_name("out.tiff")), page=level)
        image = read_level_image(path)
        assert (image.width, image.height) == (page.width, page.height)
        assert np.array_equal(image.numpy(), page.numpy())


def test_uids_are_seeded_and_rooted(series: tuple[Path, dict], tmp_path: Path) -> None:
    pyramid = series[0].with_name("out.tiff")
    root = "1.2.3.4."
    first = write_series(pyramid, tmp_path / "a", 0.75, Case(), root, uid_seed="job-1")
    again = write_series(pyramid, tmp_path / "b", 0.75, Case(), root, uid_seed="job-1")
    other = write_series(pyramid, tmp_path / "c", 0.75, Case(), root, uid_seed="job-2")
    uids = [i.sop_instance_uid for i in first.instances]
    assert uids == [i.sop_instance_uid for i in again.instances]
    assert first.series_instance_uid == again.series_instance_uid
    assert not set(uids) & {i.sop_instance_uid for i in other.instances}
    assert all(uid.startswith(root) and len(uid) <= 64 for uid in uids)
    given = Case(patient=Patient(study_instance_uid="1.2.840.99.1"))
    filed = write_series(pyramid, tmp_path / "d", 0.75, given, root, uid_seed="job-1")
    assert filed.study_instance_uid == "1.2.840.99.1"


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("patient_id", "x" * 65, "at most 64"),
        ("patient_id", "a\\b", "backslash"),
        ("patient_name", "A^B^C^D^E^F", "at most 4 ^"),
        ("patient_name", "Doe=Jane", "no ="),
        ("accession_number", "A" * 17, "at most 16"),
        ("study_instance_uid", "1.2.03", "DICOM UID"),
        ("study_instance_uid", "1." + "2" * 70, "DICOM UID"),
        ("patient_id", "line\nbreak", "printable"),
    ],
)
def test_patient_fields_are_checked_by_their_vr(field: str, value: str, rule: str) -> None:
    with pytest.raises(ValueError, match=re.escape(rule)) as caught:
        Patient.checked(**{field: value})
    assert value not in str(caught.value)  # the message names the rule, never the value


def test_cli_refusals(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(200, 200)
    named_tif = stain_dicom(inputs, tmp_path / "x.tif")
    assert named_tif.exit_code == 4 and "DICOM series is a folder" in named_tif.stderr
    lossless = stain_dicom(inputs, tmp_path / "y", "--compression", "lossless")
    assert lossless.exit_code == 4 and "lossless compression is for tiff" in lossless.stderr
    bad_uid = stain_dicom(inputs, tmp_path / "z", "--study-uid", "1.02")
    assert bad_uid.exit_code == 4 and "DICOM UID" in bad_uid.stderr
    assert not any(tmp_path.glob("x*")) and not any(tmp_path.glob("y*"))
    first = stain_dicom(inputs, tmp_path / "w")
    assert first.exit_code == 0, first.output
    again = stain_dicom(inputs, tmp_path / "w")
    assert again.exit_code == 5 and "--overwrite" in again.stderr
    replaced = stain_dicom(inputs, tmp_path / "w", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert len(list((tmp_path / "w").glob("*.dcm"))) == len(json.loads(replaced.stdout)["levels"])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    yield from orthanc_running(tmp_path_factory)


def test_orthanc_wsi_plugin_serves_the_series(series: tuple[Path, dict], orthanc: Orthanc) -> None:
    """Stored in a real Orthanc, the WSI plugin lists the pyramid with the right sizes, and its
    tiles are the TIFF's within JPEG tolerance."""
    import httpx

    folder, report = series
    orthanc.clear()
    for path in sorted(folder.glob("*.dcm")):
        stored = httpx.post(
            f"{orthanc.url}/instances", content=path.read_bytes(), auth=orthanc.auth
        )
        assert stored.status_code == 200, stored.text
    found = httpx.post(
        f"{orthanc.url}/tools/lookup", content=report["dicom"]["series_instance_uid"],
        auth=orthanc.auth,
    ).json()  # fmt: skip
    series_id = next(item["ID"] for item in found if item["Type"] == "Series")
    pyramid = orthanc.json(f"/wsi/pyramids/{series_id}")
    sizes = list(zip(pyramid["Sizes"], report["levels"], strict=True))
    assert all(tuple(size) == (lvl["width_px"], lvl["height_px"]) for size, lvl in sizes)
    tiff = pyvips.Image.new_from_file(str(folder.with_name("out.tiff")), page=1)
    tile = orthanc.get(f"/wsi/tiles/{series_id}/1/1/1")
    assert tile.status_code == 200
    served = pyvips.Image.new_from_buffer(tile.content, "").numpy()[..., :3].astype(float)
    width, height = pyramid["TilesSizes"][1]
    expected = tiff.crop(
        width, height, min(width, tiff.width - width), min(height, tiff.height - height)
    )
    expected = expected.numpy().astype(float)
    served = served[: expected.shape[0], : expected.shape[1]]
    mse = float(np.mean((served - expected) ** 2))
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) >= 35.0
