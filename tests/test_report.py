"""The stain report's JSON (`dscm stain --json`, the job's stored report, the API) keeps its
shape key for key now that its parts are typed records (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.engine.pipeline import StainSpec, stain_slide
from service.vocabulary.options import JobOptions
from service.vocabulary.report import (
    ColourSummary,
    ColourTransferSummary,
    DicomInstance,
    DicomSeriesSummary,
    FaithfulnessCheck,
    GlassLevelSummary,
    ImageInfo,
    IntensityRange,
    LabSummary,
    LevelSize,
    ModeCheckSummary,
    ModelSummary,
    PairInfo,
    PixelSizeSummary,
    PublicReport,
    StainReport,
    SwapThresholds,
    TileCounts,
)

# The JSON a report of every part serialised to before its parts were records (dicts then).
PINNED: dict[str, Any] = {
    "input": {
        "width_px": 2000,
        "height_px": 1500,
        "mpp_um": 0.75000004577637,
        "rcm": {"path": "/data/scan/DET#1/highres_raw.tif", "format": "tiff", "width_px": 2000,
                "height_px": 1500, "bands": 1, "dtype": "uint16", "mpp_um": 0.75000004577637},
        "fcm": {"path": "/data/scan/DET#2/highres_raw.tif", "format": "tiff", "width_px": 2000,
                "height_px": 1500, "bands": 1, "dtype": "uint16", "mpp_um": 0.75000004577637},
    },
    "output": "/data/out/stain.tiff",
    "output_sha256": "c" * 64,
    "output_bytes": 3190414,
    "output_format": "dicom",
    "compression": "jpeg",
    "jpeg_quality": 90,
    "mpp_um": 0.75,
    "pixel_size": {"mpp_um": 0.75, "source": "file", "model_mpp_um": 0.75, "resampled": False,
                   "work_px": [2000, 1500]},
    "levels": [{"width_px": 2000, "height_px": 1500, "downsample": 1.0},
               {"width_px": 1000, "height_px": 750, "downsample": 2.0}],
    "stages": ["despeckle", "gareau", "colour"],
    "models": [{"name": "despeckle-w16-d7", "role": "despeckle",
                "architecture": "despeckle-cnn(width=16,depth=7)", "version": "1.0.0",
                "sha256": "7" * 64, "halo_px": 8, "norm": "none"}],
    "providers": ["OpenVINO CPU bf16"],
    "normalisation": {"fcm": {"low": 1120.0, "high": 35680.0},
                      "rcm": {"low": 1152.0, "high": 36224.0}},
    "tiles": {"total": 4, "computed": 4, "skipped": 0, "tile_px": 1024, "halo_px": 8,
              "batch_size": 1},
    "shared_norm_stats": False,
    "colour": {"target": "skin-he", "slide_lab": {"mean": [57.553, 51.071, -58.16],
                                                  "std": [8.95, 12.018, 12.681],
                                                  "cov": [[80.1, -105.2, 112.4],
                                                          [-105.2, 144.4, -143.9],
                                                          [112.4, -143.9, 160.8]]},
               "transfer": {"matrix": [[1.29875, 0.0, 0.0], [0.0, 0.77943, 0.0],
                                       [0.0, 0.0, 0.33333]], "offset": [1.5, -2.25, 3.0]}},
    "timings_s": {"tiles": 2.5037, "total": 6.0102},
    "background_rgb": [255, 255, 255],
    "qc": {"nuc_r": 0.9584, "nuc_r_gareau": 0.9303, "ratio": 1.0302, "threshold": 0.9,
           "flag": None, "tissue_fraction": 0.8096, "overview_px": [2000, 1500]},
    "extra_outputs": {"gareau": "/data/out/stain.gareau.tiff"},
    "dicom": {"series": "/data/out/stain.dcm", "study_instance_uid": "1.2.3",
              "series_instance_uid": "1.2.4",
              "instances": [{"file": "level-0.dcm", "level": 0, "sop_instance_uid": "1.2.5",
                             "width_px": 2000, "height_px": 1500, "frames": 48,
                             "bytes": 1000}],
              "bytes": 1000},
    "inputs_check": {"outcome": "ok", "evidence": 0.4726,
                     "features": {"skew": 0.6474, "blob": 0.4297, "peak": 0.3408},
                     "correlation": 0.8306, "thresholds": {"doubtful": -0.15, "swapped": -0.3},
                     "allowed": False, "flag": None},
    "glass_level": {"fcm": 0.014, "rcm": 0.0094},
    "backend_reason": {"despeckle": "probe, cached"},
}  # fmt: skip


IDENTITY_TRANSFER = ColourTransferSummary(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [0.0] * 3
)


def image(detector: str) -> ImageInfo:
    """The header record of one mode of the pinned pair."""
    return ImageInfo(
        f"/data/scan/{detector}/highres_raw.tif", "tiff", 2000, 1500, 1, "uint16", 0.75000004577637
    )


def full_report() -> StainReport:
    """A report with every part filled, as the records that make PINNED."""
    instance = DicomInstance("level-0.dcm", 0, "1.2.5", 2000, 1500, 48, 1000)
    return StainReport(
        input=PairInfo(2000, 1500, 0.75000004577637, image("DET#1"), image("DET#2")),
        output="/data/out/stain.tiff",
        output_sha256="c" * 64,
        output_bytes=3190414,
        output_format="dicom",
        compression="jpeg",
        jpeg_quality=90,
        mpp_um=0.75,
        pixel_size=PixelSizeSummary(0.75, "file", 0.75, False, [2000, 1500]),
        levels=[LevelSize(2000, 1500, 1.0), LevelSize(1000, 750, 2.0)],
        stages=["despeckle", "gareau", "colour"],
        models=[
            ModelSummary(
                "despeckle-w16-d7",
                "despeckle",
                "despeckle-cnn(width=16,depth=7)",
                "1.0.0",
                "7" * 64,
                8,
                "none",
            )
        ],
        providers=["OpenVINO CPU bf16"],
        normalisation={
            "fcm": IntensityRange(1120.0, 35680.0),
            "rcm": IntensityRange(1152.0, 36224.0),
        },
        tiles=TileCounts(4, 4, 0, 1024, 8, 1),
        shared_norm_stats=False,
        colour=ColourSummary(
            "skin-he",
            LabSummary(
                [57.553, 51.071, -58.16],
                [8.95, 12.018, 12.681],
                [[80.1, -105.2, 112.4], [-105.2, 144.4, -143.9], [112.4, -143.9, 160.8]],
            ),
            ColourTransferSummary(
                [[1.29875, 0.0, 0.0], [0.0, 0.77943, 0.0], [0.0, 0.0, 0.33333]], [1.5, -2.25, 3.0]
            ),
        ),
        timings_s={"tiles": 2.5037, "total": 6.0102},
        background_rgb=[255, 255, 255],
        qc=FaithfulnessCheck(0.9584, 0.9303, 1.0302, 0.9, None, 0.8096, [2000, 1500]),
        extra_outputs={"gareau": "/data/out/stain.gareau.tiff"},
        dicom=DicomSeriesSummary("/data/out/stain.dcm", "1.2.3", "1.2.4", [instance], 1000),
        inputs_check=ModeCheckSummary(
            "ok",
            0.4726,
            {"skew": 0.6474, "blob": 0.4297, "peak": 0.3408},
            0.8306,
            SwapThresholds(-0.15, -0.3),
            False,
            None,
        ),
        glass_level=GlassLevelSummary(0.014, 0.0094),
        backend_reason={"despeckle": "probe, cached"},
    )


def test_the_report_serialises_to_the_json_it_always_had() -> None:
    """Key for key and in the same order: the CLI's --json and stored reports do not change."""
    assert json.dumps(full_report().to_dict()) == json.dumps(PINNED)


def test_optional_keys_stay_absent_where_they_always_were() -> None:
    """Too little tissue: the check has a note and no threshold; a card without covariance
    has no cov key; a stain without colour, DICOM or check has nulls."""
    qc = FaithfulnessCheck(None, None, None, note="too little tissue to check")
    no_cov = ColourSummary("t", LabSummary([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), IDENTITY_TRANSFER)
    report = full_report()
    plain = StainReport(**{**vars(report), "qc": qc, "colour": no_cov, "dicom": None})
    data = plain.to_dict()
    assert data["qc"] == {
        "nuc_r": None, "nuc_r_gareau": None, "ratio": None, "flag": None,
        "note": "too little tissue to check",
    }  # fmt: skip
    assert list(data["qc"]) == ["nuc_r", "nuc_r_gareau", "ratio", "flag", "note"]
    assert data["colour"]["slide_lab"] == {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}
    assert data["dicom"] is None


def test_the_public_report_names_files_only_and_reads_back(tmp_path: Path) -> None:
    """The job's stored view: files by name; a PublicReport reads it (and a record stored by
    the previous version, which is the same JSON) back."""
    (tmp_path / "stain.gareau.tiff").write_bytes(b"x")
    (tmp_path / "stain.dcm").mkdir()
    report = full_report()
    placed = StainReport(
        **{
            **vars(report),
            "output": str(tmp_path / "stain.tiff"),
            "extra_outputs": {"gareau": str(tmp_path / "stain.gareau.tiff")},
            "dicom": DicomSeriesSummary(str(tmp_path / "stain.dcm"), "1.2.3", "1.2.4", [], 0),
        }
    )
    public = placed.public(tmp_path)
    assert public["output"] == "stain.tiff" and public["dicom"]["series"] == "stain.dcm"
    assert public["input"]["rcm"]["path"] == "highres_raw.tif"
    assert list(public) == list(PINNED)
    stored = PublicReport.from_json(json.loads(json.dumps(public)))
    assert stored is not None
    assert stored.layer_files == {"gareau": "stain.gareau.tiff"}
    assert stored.dicom_series == "stain.dcm" and stored.dicom_ids.series_instance_uid == "1.2.4"
    previous = PublicReport.from_json(PINNED)  # the previous version stored server paths
    assert previous is not None and previous.dicom_series == "stain.dcm"
    assert previous.document["input"]["fcm"]["path"] == "highres_raw.tif"


def test_a_stain_reports_every_part_with_its_keys(make_pair, tmp_path: Path) -> None:
    """A real stain (Gareau only): every part of the report carries the keys it always had."""
    spec = StainSpec(options=JobOptions(stages=("gareau",)))
    data = stain_slide(make_pair(256, 320), tmp_path / "s.tif", spec).to_dict()
    assert list(data) == list(PINNED)
    for part in ("input", "pixel_size", "tiles", "inputs_check", "glass_level"):
        assert list(data[part]) == list(PINNED[part]), part
    assert list(data["input"]["rcm"]) == list(PINNED["input"]["rcm"])
    assert set(data["qc"]) in (
        set(PINNED["qc"]),
        {"nuc_r", "nuc_r_gareau", "ratio", "flag", "note"},
    )
    assert list(data["normalisation"]) == ["fcm", "rcm"]
    assert list(data["normalisation"]["fcm"]) == ["low", "high"]
    assert [list(level) for level in data["levels"]] == [list(PINNED["levels"][0])] * len(
        data["levels"]
    )
    assert data["colour"] is None and data["dicom"] is None and data["models"] == []
    json.dumps(data)  # plain JSON, nothing left as a record
