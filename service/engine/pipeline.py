"""stain_slide: THE use case. The CLI, the worker, the benchmarks and the tests all call it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from service.core.backends import Inference, Precision, choose_backend
from service.core.chain import StainChain, resolve_stages, round_up
from service.core.colour import ColourTarget, load_colour_target
from service.core.glass import estimate_glass_level
from service.core.grid import (
    RESAMPLE_TOLERANCE,
    Tile,
    check_work_pixels,
    tile_grid,
    tissue_first,
    tissue_tiles,
    work_size_px,
)
from service.core.models import (
    OnnxModel,
    discover_stage_models,
    file_sha256,
    stages_off_by_default,
)
from service.core.normalize import IntensityRange
from service.core.quality import faithfulness_qc
from service.core.sanity import ModeCheck
from service.core.stages import NETWORK_ROLES
from service.engine.tile_reader import TileReader
from service.slide import (
    PairInfo,
    PyramidWriter,
    SlideInputs,
    open_pair,
    read_overview,
)
from service.slide.canvas import DiskCanvas
from service.slide.inspect import inspect_pair
from service.slide.live import (
    LEDGER_NAME,
    LivePlan,
    RegionPlan,
    TileLedger,
    canvas_name,
    save_overview,
)
from service.vocabulary.case import NO_CASE, Case
from service.vocabulary.errors import InputError, ModelError
from service.vocabulary.options import (
    DEFAULT_OPTIONS,
    DEFAULT_UID_ROOT,
    JobOptions,
    PixelSizeSource,
    check_mpp_um,
    stated_mpp_um,
)
from service.vocabulary.progress import ProgressCallback
from service.vocabulary.report import (
    FaithfulnessCheck,
    LevelSize,
    PixelSizeSummary,
    StainReport,
    TileCounts,
)


@dataclass(frozen=True)
class PixelSize:
    """The slide's pixel size, where it came from, and the grid the networks run on."""

    mpp_um: float
    source: PixelSizeSource
    model_mpp_um: float | None  # what the chain's models were trained at
    work_width_px: int
    work_height_px: int

    @property
    def resampled(self) -> bool:
        """Whether the slide is resampled to the model's pixel size before staining."""
        return self.model_mpp_um is not None and self.work_mpp_um != self.mpp_um

    @property
    def work_mpp_um(self) -> float:
        """The pixel size the chain works at: the model's when the slide's differs by more than
        RESAMPLE_TOLERANCE, else the slide's own."""
        if self.model_mpp_um is None:
            return self.mpp_um
        ratio = self.mpp_um / self.model_mpp_um
        return self.model_mpp_um if abs(ratio - 1.0) > RESAMPLE_TOLERANCE else self.mpp_um

    def summary(self) -> PixelSizeSummary:
        """The pixel size, where it came from and the working size, for the report."""
        return PixelSizeSummary(
            mpp_um=round(self.mpp_um, 5),
            source=self.source,
            model_mpp_um=self.model_mpp_um,
            resampled=self.resampled,
            work_px=[self.work_width_px, self.work_height_px],
        )


def resolve_pixel_size(info: PairInfo, spec: StainSpec, model_mpp_um: float | None) -> PixelSize:
    """The caller's value, else the files' tags, else the operator's default; refused when
    nobody says (a wrong guess would mislead every measurement made on the slide)."""
    how = "state it with --mpp (the API's mpp_um field)"
    mpp, source = stated_mpp_um(spec.options.mpp_um, info.mpp_um, spec.default_mpp_um, how)
    width, height = work_size_px(info.width_px, info.height_px, mpp, model_mpp_um)
    check_work_pixels((info.width_px, info.height_px), (width, height), mpp, spec.max_pixels)
    return PixelSize(mpp, source, model_mpp_um, width, height)


@dataclass(frozen=True)
class StainSpec:
    """How to stain: the caller's options and case, and this machine's models, tiling and
    inference backend."""

    options: JobOptions = DEFAULT_OPTIONS
    case: Case = NO_CASE
    models_dir: Path = Path("models")
    tile_px: int = 1024
    batch_size: int = 1
    threads: int | None = None
    max_pixels: int = 400_000_000
    skip_background: bool = True
    stats_tiles: int = 8
    stats_crop_px: int = 384
    inference: Inference = "auto"  # service.core.backends: auto, cpu, openvino, cuda
    inference_precision: Precision = "auto"
    default_mpp_um: float | None = None  # the operator's fallback (DSCM_DEFAULT_MPP_UM)
    dicom_uid_root: str = DEFAULT_UID_ROOT  # the organisation's UID prefix (DSCM_DICOM_UID_ROOT)
    uid_seed: str | None = None  # the job id: a DICOM series' UIDs are the same every attempt
    live_dir: Path | None = None  # where the canvases and the tile ledger go while staining, for
    # the viewer and region workers (service.slide.live); None: private names beside the output
    regions: RegionScheduler | None = None  # with live_dir: stain in regions across workers
    region_tiles: int = 0  # tiles per region (DSCM_REGION_TILES); 0: one worker stains all

    def __post_init__(self) -> None:
        if self.tile_px < 64 or self.tile_px % 16:
            raise InputError(f"tile_px must be a multiple of 16 and >= 64, got {self.tile_px}")
        if not 1 <= self.batch_size <= 64:
            raise InputError(f"batch_size must be 1..64, got {self.batch_size}")
        if self.stats_tiles < 1:
            raise InputError("stats_tiles must be at least 1")
        if self.stats_crop_px < 64 or self.stats_crop_px % 16:
            raise InputError("stats_crop_px must be a multiple of 16 and >= 64")
        check_mpp_um("default_mpp_um", self.default_mpp_um)


@dataclass
class ModelSet:
    """ONNX sessions (and the colour card) loaded once per worker process, reused per slide."""

    models: dict[str, OnnxModel] = field(default_factory=dict)  # by role (NETWORK_ROLES)
    colour: ColourTarget | None = None
    default_off: tuple[str, ...] = ()

    @property
    def roles(self) -> list[str]:
        """The roles of the loaded models, colour included when its card is loaded."""
        return [*self.models, *(["colour"] if self.colour else [])]

    def chain(self, requested: Sequence[str] | None) -> StainChain:
        """The chain for the requested stages; InputError or ModelError for stages these models
        cannot run."""
        stages = resolve_stages(requested, self.roles, self.default_off)
        return StainChain(stages, self.models, self.colour)


def load_models(spec: StainSpec) -> ModelSet:
    """Load the models that ``spec`` can use from ``spec.models_dir``."""
    found = discover_stage_models(spec.models_dir)
    default_off = stages_off_by_default(found)
    wanted = resolve_stages(spec.options.stages, found, default_off)
    onnx: dict[str, OnnxModel] = {}
    roles = [r for r in NETWORK_ROLES if r in found and r in wanted]
    backend = choose_backend(spec.inference, spec.inference_precision) if roles else None
    for role in roles:
        onnx[role] = OnnxModel(found[role], spec.threads, backend)
    colour = load_colour_target(found["colour"]) if "colour" in wanted else None
    return ModelSet(onnx, colour, default_off)


def layer_output_path(output: Path, layer: str) -> Path:
    """Where an extra layer of ``output`` goes: ``out.tif`` -> ``out.gareau.tif``."""
    return output.with_name(f"{output.name.removesuffix(output.suffix)}.{layer}{output.suffix}")


def stain_slide(
    inputs: SlideInputs,
    output: Path,
    spec: StainSpec,
    progress: ProgressCallback | None = None,
    models: ModelSet | None = None,
) -> StainReport:
    """Stain one RCM/FCM pair into a pyramid at ``output`` (atomically): a TIFF or OME-TIFF
    file, or a DICOM series folder with its TIFF pyramid beside it (JobOptions.pyramid_path).

    ``progress(phase, done, total)`` is called between tiles; raising JobCancelled (or any
    error) from it stops the stain and leaves nothing at ``output``.
    """
    started = time.perf_counter()
    output = Path(output)
    if output.resolve() in (inputs.rcm.resolve(), inputs.fcm.resolve()):
        raise InputError("the output would overwrite an input")
    run = plan_slide(inputs, output, spec, progress or _ignore_progress, models, started)
    run.share_statistics()
    try:
        run.open_writers()
        run.stain_tiles()
        run.save_pyramids()
    except BaseException:
        run.discard_outputs()
        raise
    run.close_ledger()
    run.check_faithfulness()
    return run.report(started)


def _ignore_progress(phase: str, done: int, total: int) -> None:
    """The progress callback when the caller passes none."""


def plan_slide(
    inputs: SlideInputs,
    output: Path,
    spec: StainSpec,
    progress: ProgressCallback,
    models: ModelSet | None,
    started: float,
) -> SlideRun:
    """Phase 1, plan: open the pair, resolve its pixel size, measure its intensities on the
    thumbnails, check that FCM and RCM are what they claim (refused: swapped or identical),
    measure the glass level and lay the tile grid (tissue tiles to compute, glass to fill)."""
    progress("prepare", 0, 1)
    info, rcm, fcm = open_pair(inputs, spec.max_pixels)
    models = models if models is not None else load_models(spec)
    chain = models.chain(spec.options.stages)
    pixel = resolve_pixel_size(info, spec, chain.trained_mpp_um)
    work_rcm, work_fcm = rcm, fcm
    if pixel.resampled:
        work_rcm = rcm.resampled(pixel.work_width_px, pixel.work_height_px)
        work_fcm = fcm.resampled(pixel.work_width_px, pixel.work_height_px)
    timings = {"open": time.perf_counter() - started}

    mark = time.perf_counter()
    ranges, thumbs, mask, inputs_check = inspect_pair(fcm, rcm, spec.options.allow_swapped)
    chain.glass_level = estimate_glass_level(thumbs["fcm"], thumbs["rcm"])
    timings["thumbnail"] = time.perf_counter() - mark
    progress("prepare", 1, 1)
    tile_px, tiles, flags = lay_tile_grid(pixel, spec, mask, chain.halo_px)
    return SlideRun(
        output=output,
        spec=spec,
        progress=progress,
        info=info,
        pixel=pixel,
        chain=chain,
        ranges=ranges,
        thumbs=thumbs,
        tile_px=tile_px,
        tiles=tiles,
        tissue=flags,
        reader=TileReader(work_fcm, work_rcm, ranges, tile_px, chain.halo_px),
        timings=timings,
        inputs_check=inputs_check,
    )


def lay_tile_grid(
    pixel: PixelSize, spec: StainSpec, mask: np.ndarray, halo_px: int
) -> tuple[int, list[Tile], list[bool]]:
    """The tile size, the grid over the working image, and per tile whether it touches
    tissue (computed) or only glass (filled; every tile is tissue with skip_background off)."""
    work_shape = (pixel.work_height_px, pixel.work_width_px)
    tile_px = min(spec.tile_px, round_up(max(work_shape), 16))
    tiles = tile_grid(work_shape[1], work_shape[0], tile_px)
    if not spec.skip_background:
        return tile_px, tiles, [True] * len(tiles)
    return tile_px, tiles, tissue_tiles(tiles, mask, work_shape, halo_px)


@dataclass
class SlideRun:
    """One slide being stained: what the plan decided, then what each phase produced."""

    output: Path
    spec: StainSpec
    progress: ProgressCallback
    info: PairInfo
    pixel: PixelSize
    chain: StainChain
    ranges: dict[str, IntensityRange]
    thumbs: dict[str, np.ndarray]  # normalised thumbnails, for the faithfulness check
    tile_px: int
    tiles: list[Tile]
    tissue: list[bool]  # per tile: compute it (tissue) or fill it (glass)
    reader: TileReader
    timings: dict[str, float]
    inputs_check: ModeCheck
    background: dict[str, np.ndarray] = field(default_factory=dict)
    writers: dict[str, PyramidWriter] = field(default_factory=dict)
    ledger: TileLedger | None = None  # with a live folder: which tiles are in the canvases
    glass_filled: bool = False
    levels: list[LevelSize] = field(default_factory=list)
    qc: FaithfulnessCheck | None = None  # after check_faithfulness

    @property
    def todo(self) -> list[Tile]:
        """The tiles to compute, in grid order."""
        return [tile for tile, flag in zip(self.tiles, self.tissue, strict=True) if flag]

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        mark = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - mark

    def share_statistics(self) -> None:
        """Phase 2, statistics: the chain's slide-wide normalisation statistics from a spread
        sample of tissue crops (so tiles agree at their seams), then the colour of glass."""
        with self._timed("statistics"):
            crop_px = min(self.spec.stats_crop_px, self.tile_px)
            spread = spread_sample(self.todo or self.tiles, self.spec.stats_tiles)
            sample = [centre_crop(tile, crop_px) for tile in spread]
            if self.chain.needs_slide_stats:

                def sampled() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                    """The sampled tiles for the statistics, reporting progress as they are read."""
                    for i, tile in enumerate(sample):
                        self.progress("statistics", i, len(sample))
                        yield self.reader.read(tile, crop_px)
                    self.progress("statistics", len(sample), len(sample))

                self.chain.estimate_slide_stats(sampled())
            self.background = self.chain.background(self.spec.options.layers)

    def open_writers(self) -> None:
        """One pyramid writer for the stain and one per extra layer, at the input's size; with a
        live folder, their canvases go there, with the plan and an empty tile ledger."""
        info, pixel, output = self.info, self.pixel, self.output
        work_size = (pixel.work_width_px, pixel.work_height_px)
        live = self.spec.live_dir
        layers = self.spec.options.layers
        bands: dict[str, int] = {"stain": 3}
        bands.update({layer: 1 if layer in ("fcm", "rcm") else 3 for layer in layers})
        if live is not None:
            live.mkdir(parents=True, exist_ok=True)
            self.ledger = TileLedger(live / LEDGER_NAME, len(self.tiles), create=True)
        self.writers["stain"] = PyramidWriter(
            output,
            info.width_px,
            info.height_px,
            pixel.mpp_um,
            work_size_px=work_size,
            case=self.spec.case,
            uid_root=self.spec.dicom_uid_root,
            uid_seed=self.spec.uid_seed,
            canvas_path=live / canvas_name("stain") if live else None,
        )
        for layer in layers:
            self.writers[layer] = PyramidWriter(
                self.layer_path(layer),
                info.width_px,
                info.height_px,
                pixel.mpp_um,
                bands=bands[layer],
                work_size_px=work_size,
                canvas_path=live / canvas_name(layer) if live else None,
            )
        if live is not None:
            save_overview(live, self.thumbs["fcm"], self.thumbs["rcm"])
            LivePlan(
                width_px=info.width_px,
                height_px=info.height_px,
                work_width_px=pixel.work_width_px,
                work_height_px=pixel.work_height_px,
                tile_px=self.tile_px,
                tiles=len(self.tiles),
                mpp_um=pixel.mpp_um,
                bands=bands,
            ).save(live)

    @property
    def pyramid(self) -> Path:
        """The stain's TIFF pyramid (the output itself, or beside a DICOM series)."""
        return self.spec.options.pyramid_path(self.output)

    def layer_path(self, layer: str) -> Path:
        """An extra layer's pyramid, named after the stain's (``out.gareau.tiff``)."""
        return layer_output_path(self.pyramid, layer)

    def fill_background(self) -> int:
        """Phase 4a, glass: glass tiles are filled with the glass colour, not computed (and,
        with a live folder, flushed and marked in the ledger); once. Returns the tiles filled."""
        if self.glass_filled:
            return 0
        self.glass_filled = True
        glass = [t for t, flag in zip(self.tiles, self.tissue, strict=True) if not flag]
        for tile in glass:
            for name, writer in self.writers.items():
                colour = self.background[name]
                writer.fill(tile.l0_x, tile.l0_y, tile.width_px, tile.height_px, colour)
        if self.ledger is not None and glass:
            for writer in self.writers.values():
                writer.flush()
            self.ledger.mark([tile.index for tile in glass])
        return len(glass)

    def stain_tiles(self) -> None:
        """Phase 4, tiles: tissue tiles in batches through the chain, each layer written; the
        tissue's centre first and the glass after the first batch, for a viewer watching (the
        statistics sample grid order); with a region scheduler, in regions that other workers
        may stain at the same time."""
        todo, total = tissue_first(self.tiles, self.tissue), len(self.tiles)
        with self._timed("tiles"):
            regions = self.spec.regions
            size = self.spec.region_tiles
            if regions is not None and self.spec.live_dir is not None and 0 < size < len(todo):
                self.fill_background()
                self.stain_in_regions(
                    regions, [todo[i : i + size] for i in range(0, len(todo), size)]
                )
            else:
                done = 0
                self.progress("tiles", done, total)

                def counted(tiles: int) -> None:
                    """Report each batch as it lands; the glass goes in after the first."""
                    nonlocal done
                    done += tiles + self.fill_background()
                    self.progress("tiles", done, total)

                self.compute(todo, counted)
                if not self.glass_filled:  # no tissue at all
                    counted(0)
        self.timings["read"] = self.reader.busy_s

    def compute(self, tiles: list[Tile], landed: Callable[[int], None]) -> None:
        """Stain ``tiles`` into this run's canvases (marking the ledger), calling
        ``landed(count)`` after each batch."""
        sinks = {name: writer.write for name, writer in self.writers.items()}
        batching = (self.spec.options.layers, self.spec.batch_size)
        flushes = [writer.flush for writer in self.writers.values()]
        compute_tiles(self.chain, self.reader, sinks, flushes, self.ledger, tiles, batching, landed)

    def stain_in_regions(self, scheduler: RegionScheduler, regions: list[list[Tile]]) -> None:
        """Publish the region plan in the live folder, then let the scheduler have every region
        stained (here and by other workers); progress counts the ledger, so it never goes back."""
        assert self.spec.live_dir is not None and self.ledger is not None
        chain = self.chain
        RegionPlan(
            regions=[[tile.index for tile in region] for region in regions],
            stages=list(chain.stages),
            layers=list(self.spec.options.layers),
            models_sha256=chain_model_hashes(chain),
            halo_px=chain.halo_px,
            batch_size=self.spec.batch_size,
            ranges={mode: r.to_dict() for mode, r in self.ranges.items()},
            chain_state=chain.slide_state(),
        ).save(self.spec.live_dir)
        ledger, total = self.ledger, len(self.tiles)

        def report() -> None:
            """Progress from the ledger: tiles in the canvases, whoever wrote them."""
            self.progress("tiles", int(ledger.done().sum()), total)

        def stain_here(index: int) -> None:
            """Stain one region in this process."""
            self.compute(regions[index], lambda _: report())

        report()
        scheduler.run_regions(len(regions), stain_here, report)

    def save_pyramids(self) -> None:
        """Phase 5, finish: encode the pyramids and publish them, the stain itself last (its
        presence means the whole set is complete)."""
        options = self.spec.options
        with self._timed("pyramid"):
            self.progress("pyramid", 0, 1)
            for name, writer in self.writers.items():
                output_format = options.output_format if name == "stain" else options.layer_format
                writer.save(options.compression, options.jpeg_quality, output_format)
            for layer in options.layers:
                self.writers[layer].publish()
            self.levels = self.writers["stain"].publish()

    def close_ledger(self) -> None:
        """Close the live folder's ledger (the folder itself is the caller's to remove)."""
        if self.ledger is not None:
            self.ledger.close()

    def discard_outputs(self) -> None:
        """After a failure or a cancel: stop reading, and leave no output behind."""
        self.reader.stop()
        self.close_ledger()
        for writer in self.writers.values():
            writer.abort()
        for layer in self.spec.options.layers:
            self.layer_path(layer).unlink(missing_ok=True)

    def check_faithfulness(self) -> None:
        """Finish: the published stain's overview against Gareau's stain of the same input
        (a stain may recolour but must not invent or erase nuclei)."""
        with self._timed("qc"):
            fcm_unit, rcm_unit = self.thumbs["fcm"], self.thumbs["rcm"]
            overview = read_overview(self.pyramid, fcm_unit.shape[1], fcm_unit.shape[0])
            self.qc = faithfulness_qc(overview, fcm_unit, rcm_unit)
        self.progress("pyramid", 1, 1)

    def report(self, started: float) -> StainReport:
        """Finish: the report of what was done, with the chain's per-stage timings."""
        self.timings.update(self.chain.timer.seconds)
        self.timings["total"] = time.perf_counter() - started
        options, chain = self.spec.options, self.chain
        networks = chain.models_in_order
        computed = len(self.todo)
        series = self.writers["stain"].series
        assert self.qc is not None, "check_faithfulness runs before the report"
        return StainReport(
            input=self.info,
            output=str(self.pyramid),
            output_sha256=file_sha256(self.pyramid),
            output_bytes=self.pyramid.stat().st_size,
            output_format=options.output_format,
            compression=options.compression,
            jpeg_quality=options.jpeg_quality if options.compression == "jpeg" else None,
            mpp_um=round(self.pixel.mpp_um, 5),
            pixel_size=self.pixel.summary(),
            levels=list(self.levels),
            stages=list(chain.stages),
            models=[m.card.summary() for m in networks],
            providers=sorted({m.provider for m in networks}),
            backend_reason={m.card.role: m.backend.reason for m in networks},
            normalisation=dict(self.ranges),
            tiles=TileCounts(
                total=len(self.tiles),
                computed=computed,
                skipped=len(self.tiles) - computed,
                tile_px=self.tile_px,
                halo_px=chain.halo_px,
                batch_size=self.spec.batch_size,
            ),
            shared_norm_stats=chain.norm_stats is not None,
            colour=chain.colour_report(),
            timings_s={k: round(v, 4) for k, v in self.timings.items()},
            background_rgb=[int(v) for v in self.background["stain"]],
            qc=self.qc,
            inputs_check=self.inputs_check.summary(),
            glass_level=self.chain.glass_level.summary(),
            extra_outputs={layer: str(self.layer_path(layer)) for layer in options.layers},
            dicom=series.summary() if series is not None else None,
        )


class RegionScheduler(Protocol):
    """Has a slide's regions stained, each once to completion, by this process and any other
    worker that takes one (service.jobs.regions)."""

    def run_regions(
        self, count: int, stain_here: Callable[[int], None], report: Callable[[], None]
    ) -> None:
        """Return once regions ``0..count-1`` are all stained: call ``stain_here(i)`` for each
        region this process takes, and ``report()`` while waiting for the others (it raises to
        stop: cancel, time limit); raise a region's error if one failed."""


TileSink = Callable[[int, int, np.ndarray], None]  # write(l0_x, l0_y, pixels) into a canvas


def compute_tiles(
    chain: StainChain,
    reader: TileReader,
    sinks: Mapping[str, TileSink],
    flushes: Sequence[Callable[[], None]],
    ledger: TileLedger | None,
    tiles: list[Tile],
    batching: tuple[Sequence[str], int],
    landed: Callable[[int], None],
) -> None:
    """The tile loop every stain runs: ``tiles`` read ahead in batches, through the chain, each
    output (the stain and the extra ``layers``) written to its sink, the sinks flushed, then
    marked in the ledger; ``landed(count)`` after each batch. ``batching``: (layers, batch size)."""
    layers, batch_size = batching
    for batch in reader.batches(tiles, batch_size):
        fcm_block = np.stack([b[1] for b in batch])
        rcm_block = np.stack([b[2] for b in batch])
        stained, kept = chain.run_with_layers(fcm_block, rcm_block, layers)
        for i, (tile, _, _) in enumerate(batch):
            for name, block in {"stain": stained, **kept}.items():
                sinks[name](tile.l0_x, tile.l0_y, block[i, : tile.height_px, : tile.width_px])
        if ledger is not None:  # pixels durable first: readers on other hosts trust the ledger
            for flush in flushes:
                flush()
            ledger.mark([tile.index for tile, _, _ in batch])
        landed(len(batch))


def chain_model_hashes(chain: StainChain) -> list[str]:
    """The sha256 of each network the chain runs, in chain order."""
    return [m.card.sha256 for m in chain.models_in_order]


def stain_region(
    inputs: SlideInputs,
    live_dir: Path,
    region: int,
    spec: StainSpec,
    progress: ProgressCallback | None = None,
    models: ModelSet | None = None,
) -> int:
    """Stain one region of a slide another process planned (its live folder: plan, region plan,
    canvases, ledger) into the same canvases; returns the tiles stained. The tiles equal the
    planning process's own: same grid, ranges, slide-wide state and batch size.
    ``progress("tiles", done, total)`` is called after each batch; raising from it stops."""
    plan, regions = LivePlan.load(live_dir), RegionPlan.load(live_dir)
    if not 0 <= region < len(regions.regions):
        raise InputError(f"region {region} is not in the plan's {len(regions.regions)}")
    models = models if models is not None else load_models(spec)
    chain = models.chain(regions.stages)
    if chain_model_hashes(chain) != regions.models_sha256 or chain.halo_px != regions.halo_px:
        raise ModelError(
            "this worker's models differ from those of the worker that planned the slide; "
            "every worker of a deployment must run the same models"
        )
    chain.restore_slide_state(regions.chain_state)
    _, rcm, fcm = open_pair(inputs, spec.max_pixels)
    work = (plan.work_width_px, plan.work_height_px)
    if work != (plan.width_px, plan.height_px):
        rcm, fcm = rcm.resampled(*work), fcm.resampled(*work)
    ranges = {mode: IntensityRange(**r) for mode, r in regions.ranges.items()}
    reader = TileReader(fcm, rcm, ranges, plan.tile_px, chain.halo_px)
    grid = tile_grid(*work, plan.tile_px)
    tiles = [grid[i] for i in regions.regions[region]]
    canvases = {
        name: DiskCanvas(live_dir / canvas_name(name), *work, bands, create=False)
        for name, bands in plan.bands.items()
    }
    ledger = TileLedger(live_dir / LEDGER_NAME, plan.tiles)
    done = 0

    def landed(count: int) -> None:
        """Report each batch as it lands."""
        nonlocal done
        done += count
        (progress or _ignore_progress)("tiles", done, len(tiles))

    try:
        sinks = {name: canvas.write for name, canvas in canvases.items()}
        batching = (regions.layers, regions.batch_size)
        flushes = [canvas.flush for canvas in canvases.values()]
        compute_tiles(chain, reader, sinks, flushes, ledger, tiles, batching, landed)
    finally:
        reader.stop()
        ledger.close()
        for canvas in canvases.values():
            canvas.close()
    return done


def centre_crop(tile: Tile, side_px: int) -> Tile:
    """A square of ``side_px`` centred on the tile (the tile's box may be smaller: edges)."""
    return Tile(
        tile.index,
        tile.l0_x + (tile.width_px - side_px) // 2,
        tile.l0_y + (tile.height_px - side_px) // 2,
        side_px,
        side_px,
    )


def spread_sample(tiles: list[Tile], count: int) -> list[Tile]:
    """Up to ``count`` tiles spread evenly over the list (deterministic)."""
    if len(tiles) <= count:
        return list(tiles)
    positions = np.linspace(0, len(tiles) - 1, count).round().astype(int)
    return [tiles[i] for i in sorted(set(positions.tolist()))]
