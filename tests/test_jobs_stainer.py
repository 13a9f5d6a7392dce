"""The workers' engine stains like `dscm stain`: DSCM_BATCH_SIZE, the inference backend and
every option the job stated reach the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from service.config import Settings
from service.jobs.stainer import PipelineStainer
from service.pipeline import StainSpec

MODEL_MPP = {"xres": 1000 / 0.75, "yres": 1000 / 0.75}  # pixels per mm


def settings_for(models: Path, tmp_path: Path, **values: Any) -> Settings:
    return Settings(models_dir=models, storage_dir=tmp_path / "data", **values)


def test_settings_and_stated_options_reach_the_spec(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, tmp_path, batch_size=4, tile_px=512, threads=1, inference="cpu",
        inference_precision="fp32",
    )  # fmt: skip
    options = {
        "stages": ["despeckle", "median", "gareau"],
        "compression": "lossless",
        "jpeg_quality": 70,
        "output_format": "ome-tiff",
        "layers": ["gareau", "fcm"],
    }
    spec = PipelineStainer.spec(options, settings)
    assert (spec.batch_size, spec.tile_px, spec.threads) == (4, 512, 1)
    assert (spec.inference, spec.inference_precision) == ("cpu", "fp32")
    assert spec.stages == ("despeckle", "median", "gareau")
    assert (spec.compression, spec.jpeg_quality, spec.output_format) == ("lossless", 70, "ome-tiff")
    assert spec.extra_layers == ("gareau", "fcm")


def test_unstated_options_keep_the_pipeline_defaults(tmp_path: Path) -> None:
    spec = PipelineStainer.spec({"stages": None, "layers": None}, settings_for(tmp_path, tmp_path))
    default = StainSpec()
    assert spec.stages is None and spec.extra_layers == ()
    assert (spec.compression, spec.jpeg_quality, spec.output_format) == (
        default.compression, default.jpeg_quality, default.output_format,
    )  # fmt: skip
    assert spec.batch_size == 1 and spec.inference == "auto"


def test_a_worker_runs_dscm_batch_size_tiles_per_model_call(
    make_pair, shared_models: Path, tmp_path: Path
) -> None:
    settings = settings_for(shared_models, tmp_path, batch_size=3, tile_px=128, threads=1)
    stainer = PipelineStainer()
    options = {"compression": "lossless"}
    models = stainer.load_models(options, settings)
    seen: list[int] = []
    generator = models.models["generator"]
    run = generator.run

    def counting(batch: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(batch.shape[0])
        return run(batch, *args, **kwargs)

    generator.run = counting  # type: ignore[method-assign]
    pair = make_pair(300, 520, tissue_fraction=1.0, **MODEL_MPP)
    output = tmp_path / "out.tif"
    report = stainer.stain(pair.rcm, pair.fcm, output, options, settings, lambda *a: None, models)
    computed = report["tiles"]["computed"]
    assert report["tiles"]["batch_size"] == 3 and computed >= 7
    batches = -(-computed // 3)
    tile_calls = seen[-batches:]  # the statistics pass ran single crops before them
    assert sum(tile_calls) == computed and max(tile_calls) == 3
    assert report["compression"] == "lossless"
    assert tifffile.imread(output, key=0).shape[:2] == (300, 520)
