"""The output formats: one ResultFormat (suffix, media type, the pyramid kept) and one writer
each, so the API, the CLI, the jobs and the pyramid writer agree on every format."""

from __future__ import annotations

from pathlib import Path

from service.slide.formats import WRITERS
from service.vocabulary.options import OUTPUT_FORMATS, RESULT_FORMATS, JobOptions, pyramid_path


def test_every_format_has_its_words_and_one_writer() -> None:
    assert tuple(RESULT_FORMATS) == OUTPUT_FORMATS
    assert set(WRITERS) == set(OUTPUT_FORMATS)
    for name, result in RESULT_FORMATS.items():
        assert result.name == name and result.suffix.startswith(".")
        assert RESULT_FORMATS[result.pyramid].pyramid == result.pyramid  # a pyramid is its own


def test_the_pyramid_is_the_result_or_kept_beside_a_series() -> None:
    out = Path("/x/out")
    assert pyramid_path(out, "tiff") == out and pyramid_path(out, "ome-tiff") == out
    assert pyramid_path(out, "dicom") == Path("/x/out.tiff")
    dicom = JobOptions(output_format="dicom")
    assert (dicom.result_suffix, dicom.pyramid_suffix) == (".dcm", ".tiff")
    assert dicom.pyramid_media_type == "image/tiff" and dicom.layer_format == "tiff"
    assert JobOptions(output_format="ome-tiff").pyramid_suffix == ".ome.tiff"
