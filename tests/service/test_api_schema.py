"""schemathesis against the app's own OpenAPI schema: no generated request gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from fastapi import FastAPI
from service_helpers import Keys, make_app
from support.settings import settings_in

from service.api.services import Services
from service.jobs.stainer import PipelineStainer

# schemathesis (and the Hypothesis it brings) belongs to the dev extra; skip cleanly without it.
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[FastAPI]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    config = settings_in(root, keys.entries, max_upload_bytes=1_000_000)
    app = make_app(config)
    # schemathesis calls the ASGI app without its lifespan, so open the services here.
    services = Services.start(config, PipelineStainer())
    app.state.services = services
    yield app
    services.close()


# schemathesis' own pytest plugin does not load under pytest 9, so drive Hypothesis directly.
OPERATIONS = [
    "POST /v1/jobs",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/result",
    "GET /v1/jobs/{job_id}/thumbnail",
    "HEAD /v1/jobs/{job_id}/result",
    "HEAD /v1/jobs/{job_id}/thumbnail",
    "DELETE /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/dzi",
    "GET /v1/jobs/{job_id}/dzi_files/{level}/{column}_{row}.jpeg",
    "GET /v1/jobs/{job_id}/live",
    "POST /v1/jobs/{job_id}/viewer-link",
    "POST /v1/jobs/{job_id}/deliveries",
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
]


def test_schema_lists_every_operation(api_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def test_the_submit_form_describes_every_field_the_api_takes(api_app: FastAPI) -> None:
    """The multipart description is made from JobCreate and CaseIdentity, so a field added
    there (the DICOM patient fields were missing from the hand-written one) is described."""
    from service.api.schemas import CaseIdentity, JobCreate

    body = api_app.openapi()["paths"]["/v1/jobs"]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]
    expected = {"rcm", "fcm", *JobCreate.model_fields, *CaseIdentity.model_fields}
    assert set(form["properties"]) == expected and form["required"] == ["rcm", "fcm"]
    assert form["properties"]["output_format"]["enum"] == ["tiff", "ome-tiff", "dicom"]
    assert form["properties"]["stages"]["type"] == "string"  # comma-separated in a form


def test_the_form_and_dscm_stain_describe_each_option_in_the_same_words(
    api_app: FastAPI,
) -> None:
    """One definition (OPTION_HELP): every job option the API's form takes is a `dscm stain`
    flag with the same help, except the service's own (where a series and events go)."""
    from service.api.schemas import JobCreate
    from service.cli import stain
    from service.vocabulary.options import OPTION_HELP, SERVICE_ONLY_OPTIONS

    cli = {p.name: p for p in stain.params if isinstance(p, click.Option)}
    form = api_app.openapi()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    fields = form["multipart/form-data"]["schema"]["properties"]
    assert set(JobCreate.model_fields) == {*OPTION_HELP, *SERVICE_ONLY_OPTIONS}
    for name, words in OPTION_HELP.items():
        assert fields[name]["description"].startswith(words), name
        assert cli[name].help == words, name
    assert not set(SERVICE_ONLY_OPTIONS) & set(cli)


def test_a_jobs_progress_and_message_have_one_name_each(api_app: FastAPI) -> None:
    """The progress model is JobProgress (not rich's bar or the engine's callback); the job's
    message in words is ``message``, its earlier name ``stage`` kept and marked deprecated."""
    components = api_app.openapi()["components"]["schemas"]
    assert "JobProgress" in components and "Progress" not in components
    job = components["JobPublic"]["properties"]
    assert job["progress"] == {"$ref": "#/components/schemas/JobProgress"}
    assert "message" in job and job["stage"].get("deprecated") is True


@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors(api_app: FastAPI, keys: Keys, label: str) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operation = schema.find_operation_by_label(label)
    assert operation is not None
    auth = Keys.auth(keys.alice)

    @given(data=st.data())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def check(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy())
        response = case.call(headers=auth)
        case.validate_response(response, checks=[not_a_server_error])

    check()
