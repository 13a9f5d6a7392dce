"""The two CycleGAN domains and the paired evaluation sets, built with the engine's own steps.

Domain A: Gareau stain of (synthetic) confocal, exactly as the engine makes it: normalise each
mode (``estimate_range``/``normalize``), despeckle the reflectance (the exported ONNX model,
through ``OnnxModel``), 3x3 median, ``gareau_stain``, and with a colour card the colour stage
(statistics pooled over each slide's images, as the engine pools them over a slide's tiles).
Domain B: real H&E. Both in [0, 1], channels first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.colour import ColourTarget, ColourTransfer, LabAccumulator, tissue_weight
from service.core.filters import median3x3
from service.core.models import OnnxModel
from service.core.normalize import estimate_range, normalize
from service.core.stain import gareau_stain
from training.synthetic import synthesize_confocal, to_unit_rgb


def normalise_mode(image: np.ndarray) -> np.ndarray:
    """One confocal mode to [0, 1] the way the engine does it (a patch is its own slide)."""
    return normalize(image, estimate_range(image))


def despeckle_reflectance(
    rcm: np.ndarray, despeckler: OnnxModel | None, median: bool = True
) -> np.ndarray:
    """The engine's reflectance path: network (if any), then the 3x3 median (if ``median``)."""
    if despeckler is not None:
        out, _ = despeckler.run(rcm[None, None].astype(np.float32))
        rcm = out[0, 0]
    result: np.ndarray = median3x3(rcm) if median else rcm
    return result


def gareau_from_confocal(
    fcm_raw: np.ndarray, rcm_raw: np.ndarray, despeckler: OnnxModel | None
) -> np.ndarray:
    """Raw FCM/RCM ``(H, W)`` -> Gareau RGB ``(3, H, W)`` in [0, 1]."""
    fcm = normalise_mode(fcm_raw)
    rcm = despeckle_reflectance(normalise_mode(rcm_raw), despeckler)
    return gareau_stain(fcm, rcm)


@dataclass(frozen=True)
class ChainView:
    """One image through the engine's steps up to Gareau, with what the colour stage needs."""

    gareau: np.ndarray  # (3, H, W) in [0, 1]
    weight: np.ndarray  # (H, W): the colour stage's tissue weight
    fcm: np.ndarray  # normalised
    rcm: np.ndarray  # normalised, despeckled + median


def chain_view(
    fcm_raw: np.ndarray, rcm_raw: np.ndarray, despeckler: OnnxModel | None, median: bool = True
) -> ChainView:
    """Raw FCM/RCM through normalisation, the despeckler and (with ``median``) the 3x3 median
    to Gareau, with the colour stage's weight."""
    fcm = normalise_mode(fcm_raw)
    rcm = despeckle_reflectance(normalise_mode(rcm_raw), despeckler, median)
    return ChainView(gareau_stain(fcm, rcm), tissue_weight(fcm, rcm), fcm, rcm)


def colour_views(views: Sequence[ChainView], target: ColourTarget) -> list[np.ndarray]:
    """The colour stage on the images of ONE slide: pooled statistics, one transfer."""
    accumulator = LabAccumulator()
    for view in views:
        accumulator.add(view.gareau, view.weight)
    transfer = ColourTransfer.fit(accumulator.stats(), target.lab)
    return [transfer.apply(view.gareau, view.weight) for view in views]


def gareau_from_he(rgb: np.ndarray, seed: int, despeckler: OnnxModel | None) -> np.ndarray:
    """H&E -> synthetic confocal (seeded) -> Gareau RGB ``(3, H, W)`` in [0, 1]."""
    pair = synthesize_confocal(rgb, seed=seed)
    return gareau_from_confocal(pair.fcm, pair.rcm, despeckler)


def he_to_chw(rgb: np.ndarray) -> np.ndarray:
    """H&E ``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return np.ascontiguousarray(to_unit_rgb(rgb).transpose(2, 0, 1))


def load_despeckler_onnx(path: Path | None) -> OnnxModel | None:
    """The exported despeckler at ``path``, through the engine's loader; None (no despeckling)
    without a path."""
    if path is None or not str(path):
        return None
    return OnnxModel(path)


def build_domain_a(
    he_images: list[np.ndarray],
    despeckler: OnnxModel | None,
    seed: int = 0,
    colour: ColourTarget | None = None,
    cases: Sequence[str] | None = None,
    median: bool = True,
) -> list[np.ndarray]:
    """Gareau RGB of the synthetic confocal of each H&E image (seed + index per image), through
    the colour stage when ``colour`` is given (statistics pooled per case: one slide each)."""
    if colour is None:
        return [gareau_from_he(rgb, seed + i, despeckler) for i, rgb in enumerate(he_images)]
    views = []
    for index, rgb in enumerate(he_images):
        pair = synthesize_confocal(rgb, seed=seed + index)
        views.append(chain_view(pair.fcm, pair.rcm, despeckler, median))
    case_of = list(cases) if cases is not None else ["slide"] * len(views)
    out: list[np.ndarray] = [np.empty(0)] * len(views)
    for case in sorted(set(case_of)):
        members = [i for i, c in enumerate(case_of) if c == case]
        for i, image in zip(
            members, colour_views([views[i] for i in members], colour), strict=True
        ):
            out[i] = image
    return out
