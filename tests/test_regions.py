"""One slide in regions: tiles stained by another process's chain into the same canvases equal
one worker's (service.engine.pipeline.stain_region; onnxruntime fp32 on the CPU, test models)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from onnx_factory import make_colour_card, make_despeckler, make_generator, make_model_folder

from service.engine.pipeline import StainSpec, load_models, stain_region, stain_slide
from service.slide import SlideInputs
from service.vocabulary.errors import ModelError
from service.vocabulary.options import JobOptions


class ElsewhereScheduler:
    """Odd regions go to a second chain (its own models, a thread: another worker's), even
    regions are stained here, as the planner does."""

    def __init__(self, inputs: SlideInputs, spec: StainSpec) -> None:
        self.inputs, self.spec = inputs, spec
        self.models = load_models(spec)  # a second set of sessions: nothing shared in memory
        self.elsewhere: list[int] = []
        self.errors: list[BaseException] = []

    def run_regions(
        self, count: int, stain_here: Callable[[int], None], report: Callable[[], None]
    ) -> None:
        assert self.spec.live_dir is not None

        def other_worker() -> None:
            try:
                for region in range(1, count, 2):
                    stain_region(
                        self.inputs, self.spec.live_dir, region, self.spec, None, self.models
                    )
                    self.elsewhere.append(region)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=other_worker)
        thread.start()
        for region in range(0, count, 2):
            stain_here(region)
        thread.join()
        report()
        if self.errors:
            raise self.errors[0]


@pytest.mark.parametrize("chain", ["shared-norm generator", "colour"])
def test_regions_stained_by_another_chain_equal_one_worker(
    make_pair, tmp_path: Path, chain: str
) -> None:
    if chain == "colour":
        models = tmp_path / "colour"
        make_colour_card(models)
    else:  # the generator's shared instance-norm statistics must travel to the other worker
        models = make_model_folder(tmp_path / "models", shared_norm=True)
    inputs = make_pair(900, 1300, tissue_fraction=0.7)
    options = JobOptions(compression="lossless")
    one = stain_slide(
        inputs, tmp_path / "one.tif", StainSpec(models_dir=models, tile_px=256, options=options)
    )
    live = tmp_path / "job.live"
    plain = StainSpec(models_dir=models, tile_px=256, options=options, live_dir=live)
    scheduler = ElsewhereScheduler(inputs, plain)
    spec = StainSpec(
        models_dir=models,
        tile_px=256,
        options=options,
        live_dir=live,
        regions=scheduler,
        region_tiles=3,
    )
    seen: list[int] = []
    report = stain_slide(
        inputs, tmp_path / "regions.tif", spec, lambda s, d, t: s == "tiles" and seen.append(d)
    )
    assert scheduler.elsewhere, "no region was stained by the other chain"
    assert report.output_sha256 == one.output_sha256
    assert seen == sorted(seen) and seen[-1] == report.tiles.total  # progress never goes back


def test_a_worker_with_other_models_refuses_a_region(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(512, 512, tissue_fraction=1.0)
    models = make_model_folder(tmp_path / "models", shared_norm=False)
    other = tmp_path / "other"
    make_despeckler(other, seed=7)  # another despeckler: its sha256 differs
    make_generator(other, shared_norm=False)
    live = tmp_path / "job.live"

    class OtherModels:
        def run_regions(self, count: int, stain_here, report) -> None:
            spec = StainSpec(models_dir=other, tile_px=128, live_dir=live)
            stain_region(inputs, live, 1, spec)

    spec = StainSpec(
        models_dir=models, tile_px=128, live_dir=live, regions=OtherModels(), region_tiles=4
    )
    with pytest.raises(ModelError, match="same models"):
        stain_slide(inputs, tmp_path / "o.tif", spec)
    assert not (tmp_path / "o.tif").exists()
