"""The per-tile stain chain: despeckle -> 3x3 median -> Gareau -> colour -> generator.

Works on batches of tiles that carry a halo of context on every side; each stage crops the
context it has used up, so the result equals a whole-image pass (see docs/models.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.colour import ColourTarget, ColourTransfer, LabAccumulator, tissue_weight
from service.core.filters import median3x3_valid
from service.core.glass import NO_GLASS_LEVEL, GlassLevel, below_glass_to_zero
from service.core.models import NORM_SHARED, OnnxModel, pool_norm_stats
from service.core.stages import MODEL_STAGES, REQUIRED_STAGE, STAGE_BY_NAME, STAGE_TABLE
from service.core.stain import gareau_stain
from service.core.stain_lut import StainLut
from service.vocabulary.errors import InputError, ModelError
from service.vocabulary.options import STAGES, check_names
from service.vocabulary.report import ColourSummary


def resolve_stages(
    requested: Iterable[str] | None,
    available_roles: Iterable[str],
    default_off: Iterable[str] = (),
) -> tuple[str, ...]:
    """Validate requested stages (canonical order). None means every stage that can run,
    except those the installed cards keep out of the default (``default_off``: a model whose
    card says ``"default": false``, or ``median`` when the despeckler's card says
    ``"median_after": false``)."""
    available = set(available_roles)
    if requested is None:
        off = set(default_off)
        return tuple(
            s.name
            for s in STAGE_TABLE
            if s.name == REQUIRED_STAGE
            or ((s.model is None or s.name in available) and s.name not in off)
        )
    wanted = [s.strip() for s in requested if s.strip()]
    check_names("stage", sorted(set(wanted)), STAGES)
    if REQUIRED_STAGE not in wanted:
        raise InputError("the gareau stage is required: it turns FCM and RCM into colour")
    for role in MODEL_STAGES:
        if role in wanted and role not in available:
            raise ModelError(f"stage {role!r} was requested but no {role} model is installed")
    return tuple(s.name for s in STAGE_TABLE if s.name in wanted)


# A card's pixel size: its name, then the name cards written before issue 18 use (still read).
CARD_MPP_FIELDS = ("mpp_um", "um_per_px")


def card_mpp_um(card: Mapping[str, Any]) -> float | None:
    """The pixel size a stage card says its model was trained at: a network's
    ``training_data.mpp_um``, the colour target's ``mpp_um`` (or, in an older card,
    ``um_per_px`` in the same place); None when it does not say."""
    for section in (card, card.get("training_data", {})):
        for name in CARD_MPP_FIELDS:
            if section.get(name):
                return float(section[name])
    return None


def common_mpp_um(cards: Iterable[Mapping[str, Any]]) -> float | None:
    """The one pixel size a chain's stage cards agree on (within 10 %), None when none says."""
    values = [v for v in (card_mpp_um(card) for card in cards) if v is not None]
    if not values:
        return None
    if max(values) > min(values) * 1.1:
        raise ModelError(f"the chain's models were trained at different pixel sizes {values}")
    return values[0]


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


@dataclass
class StageTimer:
    """Seconds spent in each stage, summed over tiles."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started_s: float) -> None:
        """Add the seconds since ``started_s`` (perf_counter) to the stage's total."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started_s


class StainChain:
    """The selected stages with their models; knows the context (halo) each needs."""

    def __init__(
        self,
        stages: Sequence[str],
        networks: Mapping[str, OnnxModel] | None = None,
        colour: ColourTarget | None = None,
    ) -> None:
        """``networks``: the loaded ONNX models by role (service.core.stages); those of stages
        not in ``stages`` are left out."""
        self.stages = tuple(stages)
        self.networks = {
            role: model for role, model in (networks or {}).items() if role in self.stages
        }
        self.despeckle = self.networks.get("despeckle")
        self.generator = self.networks.get("generator")
        self.colour = colour if "colour" in self.stages else None
        # the slide's colour transfer: identity until estimate_slide_stats measured the slide
        self.colour_transfer = ColourTransfer.fit(None, colour.lab) if colour else None
        self.slide_lab: LabAccumulator | None = None
        self._lut: StainLut | None = None
        self.despeckle_halo_px = self.despeckle.card.halo_px if self.despeckle else 0
        self.median_halo_px = STAGE_BY_NAME["median"].halo_px if "median" in self.stages else 0
        self.size_multiple_px = self.generator.card.size_multiple_px if self.generator else 1
        self.generator_halo_px = (
            round_up(self.generator.card.halo_px, self.size_multiple_px) if self.generator else 0
        )
        self.norm_stats: np.ndarray | None = None
        # the slide's glass level (service.core.glass): below it, Gareau sees no signal
        self.glass_level: GlassLevel = NO_GLASS_LEVEL
        self.timer = StageTimer()

    @property
    def trained_mpp_um(self) -> float | None:
        """The pixel size the chain's models were trained at (their cards say; None when the
        chain has no model whose card states one: Gareau alone is resolution-free)."""
        cards = [model.card.extra for model in self.models_in_order]
        if self.colour is not None:
            cards.append(self.colour.extra)
        return common_mpp_um(cards)

    @property
    def models_in_order(self) -> list[OnnxModel]:
        """The networks this chain runs, in chain order (what the report lists and the region
        plan's hashes pin)."""
        return [self.networks[s] for s in self.stages if s in self.networks]

    @property
    def halo_px(self) -> int:
        """Context read around each output tile, per side."""
        return self.despeckle_halo_px + self.median_halo_px + self.generator_halo_px

    @property
    def needs_shared_stats(self) -> bool:
        """Whether the generator normalises with slide-wide statistics, which must be gathered
        first."""
        return self.generator is not None and self.generator.card.norm == NORM_SHARED

    @property
    def needs_slide_stats(self) -> bool:
        """Whether a stage needs statistics of the whole slide before the first tile."""
        return self.needs_shared_stats or self.colour is not None

    def despeckled(self, fcm: np.ndarray, rcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stages before Gareau on ``(N, S + 2 halo, S + 2 halo)`` blocks in [0, 1]: the
        despeckler and the median on RCM; both modes cropped to ``S + 2 g``, g being the
        generator's halo."""
        if self.despeckle is not None:
            started = time.perf_counter()
            out, _ = self.despeckle.run(rcm[:, None])
            rcm = crop(out[:, 0], self.despeckle_halo_px)
            self.timer.add("despeckle", started)
        else:
            rcm = crop(rcm, self.despeckle_halo_px)
        if self.median_halo_px:
            started = time.perf_counter()
            rcm = median3x3_valid(rcm)  # = crop(median3x3(rcm), 1): the median's halo
            self.timer.add("median", started)
        return crop(fcm, self.despeckle_halo_px + self.median_halo_px), rcm

    def gareau_input(self, fcm: np.ndarray, rcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stages up to Gareau on ``(N, S + 2 halo, S + 2 halo)`` blocks in [0, 1].

        Returns ``(N, 3, S + 2 g, S + 2 g)`` Gareau RGB, g being the generator's halo, and the
        colour stage's tissue weight ``(N, S + 2 g, S + 2 g)``.
        """
        return self.gareau_of(*self.despeckled(fcm, rcm))

    def gareau_of(self, fcm: np.ndarray, rcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gareau's RGB and the tissue weight of despeckled blocks (the glass ramp first)."""
        fcm = below_glass_to_zero(fcm, self.glass_level.fcm)
        rcm = below_glass_to_zero(rcm, self.glass_level.rcm)
        started = time.perf_counter()
        rgb = gareau_stain(fcm, rcm)
        self.timer.add("gareau", started)
        return rgb, tissue_weight(fcm, rcm)

    @property
    def stain_lut(self) -> StainLut | None:
        """Gareau + the colour stage as one table (service.core.stain_lut), for this slide's
        glass level and colour transfer; rebuilt when either changes. None without a colour
        stage (Gareau alone is a few passes already)."""
        if self.colour_transfer is None:
            return None
        if self._lut is None or not self._lut.fits(self.glass_level, self.colour_transfer):
            started = time.perf_counter()
            self._lut = StainLut.build(self.glass_level, self.colour_transfer)
            self.timer.add("colour_table", started)
        return self._lut

    def generator_input(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """Stages up to the colour stage: what the generator (or the output) gets,
        ``(N, 3, S + 2 g, S + 2 g)`` float32."""
        fcm, rcm = self.despeckled(fcm, rcm)
        return self.colour_rgb(fcm, rcm)

    def colour_rgb(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """Gareau + colour of despeckled blocks as float32 RGB (through the slide's table), or
        Gareau alone without a colour card."""
        lut = self.stain_lut
        if lut is None:
            return self.gareau_of(fcm, rcm)[0]
        started = time.perf_counter()
        out = lut.float_chw(fcm, rcm)
        self.timer.add("colour", started)
        return out

    def run(self, fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
        """Stain a batch; returns ``(N, S, S, 3)`` uint8 (halo removed)."""
        return self.run_with_layers(fcm, rcm, ())[0]

    def run_with_layers(
        self, fcm: np.ndarray, rcm: np.ndarray, layers: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Stain a batch and keep the requested intermediate ``layers`` (EXTRA_LAYERS).

        Returns the stain ``(N, S, S, 3)`` uint8 and each layer as ``(N, S, S, C)`` uint8.
        """
        kept: dict[str, np.ndarray] = {}
        for mode, block in (("fcm", fcm), ("rcm", rcm)):
            if mode in layers:
                kept[mode] = to_uint8_hwc(crop(block, self.halo_px)[:, None])
        fcm, rcm = self.despeckled(fcm, rcm)
        if "gareau" in layers:
            gareau, _ = self.gareau_of(fcm, rcm)
            kept["gareau"] = to_uint8_hwc(crop(gareau, self.generator_halo_px))
        lut = self.stain_lut
        if self.generator is None and lut is not None:
            # Gareau + colour straight to uint8 pixels: one lookup, no float image
            started = time.perf_counter()
            out = lut.uint8_hwc(fcm, rcm)
            self.timer.add("colour", started)
            return out, kept
        rgb = self.colour_rgb(fcm, rcm)
        if self.generator is not None:
            started = time.perf_counter()
            rgb, _ = self.generator.run(rgb, norm_stats=self.norm_stats, norm_mix=1.0)
            self.timer.add("generator", started)
        return to_uint8_hwc(crop(rgb, self.generator_halo_px)), kept

    def estimate_slide_stats(self, blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Slide-wide statistics from sample tissue blocks, before the first tile: the colour
        stage's Lab mean/std (weighted by tissue), then the generator's own instance-norm
        statistics of the colour stage's output (mix = 0), pooled."""
        samples = list(blocks)
        if self.colour is not None:
            self.slide_lab = LabAccumulator()
            for fcm, rcm in samples:
                rgb, weight = self.gareau_input(fcm[None], rcm[None])
                started = time.perf_counter()
                self.slide_lab.add(rgb, weight)
                self.timer.add("statistics", started)
            self.colour_transfer = ColourTransfer.fit(self.slide_lab.stats(), self.colour.lab)
        if not self.needs_shared_stats or self.generator is None:
            return
        collected = []
        for fcm, rcm in samples:
            rgb = self.generator_input(fcm[None], rcm[None])
            started = time.perf_counter()
            _, stats = self.generator.run(rgb, norm_stats=None)
            self.timer.add("statistics", started)
            if stats is not None:
                collected.append(stats)
        if collected:
            self.norm_stats = pool_norm_stats(
                np.concatenate(collected), self.generator.card.norm_stats_layers
            )

    def slide_state(self) -> dict[str, object]:
        """What estimate_slide_stats and the glass level measured, as JSON values, for workers
        that stain other regions of the same slide (restore_slide_state)."""
        transfer = None
        if self.colour_transfer is not None:  # exact values (the report's are rounded)
            matrix = [list(row) for row in self.colour_transfer.matrix]
            transfer = {"matrix": matrix, "offset": list(self.colour_transfer.offset)}
        norm = None if self.norm_stats is None else self.norm_stats.astype(np.float32).tolist()
        return {
            "glass_level": [self.glass_level.fcm, self.glass_level.rcm],
            "colour_transfer": transfer,
            "norm_stats": norm,
        }

    def restore_slide_state(self, state: Mapping[str, Any]) -> None:
        """Take the slide-wide state another process measured (slide_state); the tiles this
        chain stains then equal that process's."""
        fcm, rcm = state["glass_level"]
        self.glass_level = GlassLevel(float(fcm), float(rcm))
        transfer = state.get("colour_transfer")
        if transfer is not None and self.colour is not None:
            matrix = tuple(tuple(float(v) for v in row) for row in transfer["matrix"])
            offset = tuple(float(v) for v in transfer["offset"])
            self.colour_transfer = ColourTransfer(matrix, (offset[0], offset[1], offset[2]))
        if state.get("norm_stats") is not None:
            self.norm_stats = np.asarray(state["norm_stats"], np.float32)  # nested lists: shape

    def colour_report(self) -> ColourSummary | None:
        """What the colour stage did to this slide: target, measured slide look, the map."""
        if self.colour is None or self.colour_transfer is None:
            return None
        measured = self.slide_lab.stats() if self.slide_lab is not None else None
        return ColourSummary(
            target=self.colour.name,
            slide_lab=measured.summary() if measured else None,
            transfer=self.colour_transfer.summary(),
        )

    def background(self, layers: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The value this chain gives where both modes are zero (no tissue): the stain's
        colour under "stain", and each requested layer's."""
        side_px = round_up(2 * self.halo_px + 16, max(self.size_multiple_px, 4))
        zeros = np.zeros((1, side_px, side_px), np.float32)
        saved = dict(self.timer.seconds)
        out, kept = self.run_with_layers(zeros, zeros, layers)
        self.timer.seconds = saved
        centre = out.shape[1] // 2
        return {
            name: np.asarray(block[0, centre, centre], np.uint8)
            for name, block in {"stain": out, **kept}.items()
        }


def crop(array: np.ndarray, margin_px: int) -> np.ndarray:
    """Remove ``margin_px`` from each side of the last two axes."""
    if margin_px == 0:
        return array
    return array[..., margin_px:-margin_px, margin_px:-margin_px]


def to_uint8_hwc(rgb: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` floats in [0, 1] to ``(N, H, W, C)`` uint8, rounded."""
    scaled = np.clip(rgb, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)
    return np.ascontiguousarray(scaled.astype(np.uint8).transpose(0, 2, 3, 1))
