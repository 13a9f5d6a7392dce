"""The two CycleGAN domains and the paired evaluation sets, built with the engine's own steps.

Domain A: Gareau stain of (synthetic) confocal, exactly as the engine makes it: normalise each
mode (``estimate_range``/``normalize``), despeckle the reflectance (the exported ONNX model,
through ``OnnxModel``), 3x3 median, ``gareau_stain``. Domain B: real H&E. Both in [0, 1],
channels first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.core.filters import median3x3
from service.core.models import OnnxModel
from service.core.normalize import estimate_range, normalize
from service.core.stain import gareau_stain
from training.synthetic import synthesize_confocal, to_unit_rgb


def normalise_mode(image: np.ndarray) -> np.ndarray:
    """One confocal mode to [0, 1] the way the engine does it (a patch is its own slide)."""
    return normalize(image, estimate_range(image))


def despeckle_reflectance(rcm: np.ndarray, despeckler: OnnxModel | None) -> np.ndarray:
    """The engine's reflectance path: network (if any), then the 3x3 median."""
    if despeckler is not None:
        out, _ = despeckler.run(rcm[None, None].astype(np.float32))
        rcm = out[0, 0]
    result: np.ndarray = median3x3(rcm)
    return result


def gareau_from_confocal(
    fcm_raw: np.ndarray, rcm_raw: np.ndarray, despeckler: OnnxModel | None
) -> np.ndarray:
    """Raw FCM/RCM ``(H, W)`` -> Gareau RGB ``(3, H, W)`` in [0, 1]."""
    fcm = normalise_mode(fcm_raw)
    rcm = despeckle_reflectance(normalise_mode(rcm_raw), despeckler)
    return gareau_stain(fcm, rcm)


def gareau_from_he(rgb: np.ndarray, seed: int, despeckler: OnnxModel | None) -> np.ndarray:
    """H&E -> synthetic confocal (seeded) -> Gareau RGB ``(3, H, W)`` in [0, 1]."""
    pair = synthesize_confocal(rgb, seed=seed)
    return gareau_from_confocal(pair.fcm, pair.rcm, despeckler)


def he_to_chw(rgb: np.ndarray) -> np.ndarray:
    """H&E ``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return np.ascontiguousarray(to_unit_rgb(rgb).transpose(2, 0, 1))


def load_despeckler(path: Path | None) -> OnnxModel | None:
    if path is None or not str(path):
        return None
    return OnnxModel(path)


def build_domain_a(
    he_images: list[np.ndarray], despeckler: OnnxModel | None, seed: int = 0
) -> list[np.ndarray]:
    """Gareau RGB of the synthetic confocal of each H&E image (seed + index per image)."""
    return [gareau_from_he(rgb, seed + index, despeckler) for index, rgb in enumerate(he_images)]
