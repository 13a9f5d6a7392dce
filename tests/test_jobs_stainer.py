"""The workers' stainer stains like `dscm stain`: DSCM_BATCH_SIZE, the inference backend and
every option the job stated reach the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from service.jobs.runner import StainRequest
from service.jobs.stainer import PipelineStainer
from service.runtime.config import Settings
from service.runtime.spec import stain_spec
from service.vocabulary.case import Case
from service.vocabulary.errors import InputError
from service.vocabulary.options import JobOptions

MODEL_MPP = {"xres": 1000 / 0.75, "yres": 1000 / 0.75}  # pixels per mm


def settings_for(models: Path, tmp_path: Path, **values: Any) -> Settings:
    return Settings(models_dir=models, storage_dir=tmp_path / "data", **values)


def test_settings_and_stated_options_reach_the_spec(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, tmp_path, batch_size=4, tile_px=512, threads=1, inference="cpu",
        inference_precision="fp32", default_mpp_um=0.5,
    )  # fmt: skip
    stored = {
        "stages": ["despeckle", "median", "gareau"],
        "compression": "lossless",
        "jpeg_quality": 70,
        "output_format": "ome-tiff",
        "layers": ["gareau", "fcm"],
        "mpp_um": None,
    }
    options = JobOptions.from_json(stored)
    spec = stain_spec(settings, options, Case("left ear", "S24-1"))
    assert (spec.batch_size, spec.tile_px, spec.threads) == (4, 512, 1)
    assert (spec.inference, spec.inference_precision) == ("cpu", "fp32")
    assert spec.default_mpp_um == 0.5 and spec.models_dir == tmp_path
    assert spec.options.stages == ("despeckle", "median", "gareau")
    assert (options.compression, options.jpeg_quality, options.output_format) == (
        "lossless", 70, "ome-tiff",
    )  # fmt: skip
    assert options.layers == ("gareau", "fcm") and options.result_suffix == ".ome.tiff"
    assert spec.case.description() == "dscm digitally stained slide\nlabel: left ear\n" + (
        "external_id: S24-1"
    )
    assert JobOptions.from_json(options.to_json()) == options  # the stored form round-trips


def test_unstated_options_keep_the_defaults(tmp_path: Path) -> None:
    options = JobOptions.from_json({"stages": None, "layers": None, "jpeg_quality": None})
    assert options == JobOptions()
    spec = stain_spec(settings_for(tmp_path, tmp_path), options)
    assert spec.options.stages is None and spec.options.layers == ()
    assert spec.batch_size == 1 and spec.inference == "auto"
    overridden = stain_spec(
        settings_for(tmp_path, tmp_path, tile_px=512), options, tile_px=256, threads=None
    )
    assert overridden.tile_px == 256 and overridden.threads is None  # None: keep the setting


def test_options_refuse_what_no_stain_can_do() -> None:
    with pytest.raises(InputError, match="unknown stage"):
        JobOptions(stages=("despeckle", "blur"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown layer"):
        JobOptions(layers=("stain",))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="jpeg_quality"):
        JobOptions(jpeg_quality=0)
    with pytest.raises(InputError, match="mpp_um"):
        JobOptions(mpp_um=500.0)


def test_a_worker_runs_dscm_batch_size_tiles_per_model_call(
    make_pair, shared_models: Path, tmp_path: Path
) -> None:
    settings = settings_for(shared_models, tmp_path, batch_size=3, tile_px=128, threads=1)
    stainer = PipelineStainer()
    options = JobOptions(compression="lossless")
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
    request = StainRequest(pair.rcm, pair.fcm, output, options, Case())
    report = stainer.stain(request, settings, lambda *a: None, models)
    computed = report.tiles.computed
    assert report.tiles.batch_size == 3 and computed >= 7
    batches = -(-computed // 3)
    tile_calls = seen[-batches:]  # the statistics pass ran single crops before them
    assert sum(tile_calls) == computed and max(tile_calls) == 3
    assert report.compression == "lossless"
    assert tifffile.imread(output, key=0).shape[:2] == (300, 520)
