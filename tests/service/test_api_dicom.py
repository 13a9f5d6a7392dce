"""A job with output_format=dicom: patient fields checked by their DICOM VR and written into
the series, the series downloaded as a zip or as DICOMweb multipart, the patient fields purged.

Backend and precision: Gareau only (the helpers submit ``stages=gareau``): no network runs.
"""

from __future__ import annotations

import io
import re
import zipfile
from email.parser import BytesParser
from email.policy import HTTP

import pydicom
import pytest
from fastapi.testclient import TestClient
from service_helpers import Keys, Pair, assert_problem, stained
from support.api import submit

from service.vocabulary.case import Patient

DICOM_JOB = {
    "output_format": "dicom",
    "patient_id": "P-0042",
    "patient_name": "Doe^Jane",
    "accession_number": "A17",
    "study_instance_uid": "1.2.840.99.7",
    "external_id": "S24-01234",
}


def read_zip(content: bytes) -> dict[str, pydicom.Dataset]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {
            name: pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()
        }


def test_dicom_job_result_is_the_series(client: TestClient, keys: Keys, pair: Pair) -> None:
    job = stained(client, keys.alice, pair, DICOM_JOB)
    dicom = job["report"]["dicom"]
    assert "/" not in dicom["series"] and dicom["study_instance_uid"] == "1.2.840.99.7"
    auth = Keys.auth(keys.alice)

    zipped = client.get(job["links"]["result"], headers=auth)
    assert zipped.status_code == 200, zipped.text
    assert zipped.headers["content-type"] == "application/zip"
    assert f'filename="{job["id"]}.dicom.zip"' in zipped.headers["content-disposition"]
    instances = read_zip(zipped.content)
    assert len(instances) == len(dicom["instances"]) == len(job["report"]["levels"])
    for ds in instances.values():
        assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == (
            "P-0042",
            "Doe^Jane",
            "A17",
        )
        assert ds.ContainerIdentifier == "S24-01234"
        assert ds.SeriesInstanceUID == dicom["series_instance_uid"]
    sop_uids = sorted(str(ds.SOPInstanceUID) for ds in instances.values())
    assert sop_uids == sorted(i["sop_instance_uid"] for i in dicom["instances"])

    accept = 'multipart/related; type="application/dicom"'
    multipart = client.get(job["links"]["result"], headers={**auth, "Accept": accept})
    assert multipart.status_code == 200
    content_type = multipart.headers["content-type"]
    assert content_type.startswith("multipart/related") and "application/dicom" in content_type
    assert int(multipart.headers["content-length"]) == len(multipart.content)
    probe = client.head(job["links"]["result"], headers={**auth, "Accept": accept})
    assert probe.status_code == 200 and probe.content == b""
    assert probe.headers["content-length"] == multipart.headers["content-length"]
    zip_probe = client.head(job["links"]["result"], headers=auth)
    assert zip_probe.status_code == 200 and zip_probe.content == b""
    assert zip_probe.headers["content-type"] == "application/zip"
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + multipart.content
    )
    parts = [p for p in message.iter_parts() if p.get_content_type() == "application/dicom"]
    assert (
        sorted(
            str(pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))).SOPInstanceUID)
            for p in parts
        )
        == sop_uids
    )

    tiff = client.get(job["links"]["result"], headers={**auth, "Accept": "image/tiff"})
    assert tiff.status_code == 200 and tiff.headers["content-type"] == "image/tiff"
    assert tiff.content[:4] in (b"II*\x00", b"II+\x00")
    assert f"{job['id']}.tiff" in tiff.headers["content-disposition"]
    # the viewer and the thumbnail read the TIFF pyramid beside the series
    thumb = client.get(job["links"]["thumbnail"], headers=auth)
    assert thumb.status_code == 200


def test_dicom_job_same_uids_on_a_rerun_of_the_same_job(
    client: TestClient, keys: Keys, pair: Pair
) -> None:
    """UIDs are seeded by the job id: two jobs differ; a job's own series keeps its UIDs (the
    seed is tested directly in tests/test_dicom_output.py)."""
    first = stained(client, keys.alice, pair, {"output_format": "dicom"})
    second = stained(client, keys.alice, pair, {"output_format": "dicom"})
    one, two = first["report"]["dicom"], second["report"]["dicom"]
    assert one["series_instance_uid"] != two["series_instance_uid"]
    assert one["study_instance_uid"] != two["study_instance_uid"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", "x" * 65),
        ("patient_name", "Doe\\Jane"),
        ("accession_number", "A" * 17),
        ("study_instance_uid", "1.2.03.4"),
        ("study_instance_uid", "not-a-uid"),
    ],
)
def test_bad_patient_field_is_422_naming_the_field(
    client: TestClient, keys: Keys, pair: Pair, field: str, value: str
) -> None:
    refused = submit(client, keys.alice, pair, {"output_format": "dicom", field: value})
    body = assert_problem(refused, 422)
    assert field in body["detail"]
    assert value not in refused.text  # a patient field is never echoed


def test_dicom_refuses_lossless_at_submit(client: TestClient, keys: Keys, pair: Pair) -> None:
    refused = submit(
        client, keys.alice, pair, {"output_format": "dicom", "compression": "lossless"}
    )
    body = assert_problem(refused, 422)
    assert re.search("lossless", body["detail"])


def test_delete_purges_the_series_and_the_patient_fields(
    client: TestClient, keys: Keys, pair: Pair
) -> None:
    job = stained(client, keys.alice, pair, DICOM_JOB)
    services = client.app.state.services  # type: ignore[attr-defined]
    assert services.store.get(job["id"]).patient.patient_id == "P-0042"
    deleted = client.delete(f"/v1/jobs/{job['id']}", headers=Keys.auth(keys.alice))
    assert deleted.status_code == 200
    assert services.store.get(job["id"]).patient == Patient()  # nothing stated any more
    assert not services.files.result_dir(job["id"]).exists()
    gone = client.get(job["links"]["result"], headers=Keys.auth(keys.alice))
    assert_problem(gone, 410, "purged")
