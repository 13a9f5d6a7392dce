"""The stain-quality evaluation: every method on the real confocal crop and on held-out skin.

Methods, each a prefix of the engine's chain (despeckle -> median -> Gareau -> colour ->
generator), run per slide exactly as the engine runs them (statistics pooled over the slide):

- ``Gareau``: Gareau's linear stain alone;
- ``colour transfer``: Gareau + the colour stage (Reinhard in CIELab onto one real skin lab's
  look, ``models/colour.json``): the issue's baseline, shipped as a stage of its own;
- ``colour + generator``: the full chain with the generator.

Measures (``service.core.quality``, the definitions of docs/models.md): FD_skin to the nearest
real skin H&E slide, cb_dB, glass RGB, nuc_r; on synthetic confocal of held-out skin slides,
where the true H&E is known, also PSNR, SSIM and CIEDE2000 (against the true H&E as it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.colour import ColourTarget
from service.core.models import OnnxModel
from service.core.quality import (
    checkerboard_db,
    fd_lab,
    gaussian_fit,
    glass_rgb,
    lab_of,
    nuclear_r,
    output_tissue,
    reference_tissue,
)
from training.domains import ChainView, chain_view, colour_views, normalise_mode
from training.metrics import stain_metrics
from training.synthetic import read_rgb, synthesize_confocal

GAREAU = "Gareau"
COLOUR = "colour transfer"
CHAIN = "colour + generator"
WHITE_LEVEL = 235.0
REFERENCE_STRIDE = 5  # every 5th tissue pixel of the reference slides is plenty for a 3-D fit
EVAL_SEED = 4321

Fit = tuple[np.ndarray, np.ndarray]


def reference_fits(data_root: Path) -> dict[str, Fit]:
    """Gaussian Lab fits of the real skin H&E reference set: each ``he/skin`` image is a slide,
    each ``he/skin-wsi`` folder is a slide (its ``*-core-*`` crops pooled)."""
    slides: dict[str, list[Path]] = {}
    for path in sorted((data_root / "he" / "skin").glob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            slides[path.stem] = [path]
    for folder in sorted((data_root / "he" / "skin-wsi").glob("*/")):
        crops = sorted(folder.glob("*-core-*.jpg"))
        if crops:
            slides[folder.name] = crops
    fits = {}
    for name, paths in slides.items():
        pixels = []
        for path in paths:
            lab = lab_of(read_rgb(path))
            pixels.append(lab[reference_tissue(lab)][::REFERENCE_STRIDE])
        fits[name] = gaussian_fit(np.concatenate(pixels))
    return fits


def reference_spread(fits: dict[str, Fit]) -> dict[str, dict[str, Any]]:
    """Each reference slide's FD to its nearest OTHER slide: how far real skin H&E slides are
    from each other, the scale FD_skin is read on."""
    spread = {}
    for name, fit in fits.items():
        others = {other: fd_lab(fit, f) for other, f in fits.items() if other != name}
        nearest = min(others, key=lambda other: others[other])
        spread[name] = {"nearest_slide": nearest, "fd": round(others[nearest], 2)}
    return spread


def real_measures(
    rgb_chw: np.ndarray, fcm: np.ndarray, rcm: np.ndarray, fits: dict[str, Fit]
) -> dict[str, Any]:
    """FD_skin (nearest slide), cb_dB, glass RGB and nuc_r of one output ``(3, H, W)`` in [0, 1]
    given its normalised FCM and RCM."""
    height, width = rgb_chw.shape[1:]
    fcm, rcm = fcm[:height, :width], rcm[:height, :width]
    hwc = np.moveaxis(rgb_chw, 0, -1)
    tissue = output_tissue(fcm, rcm)
    distances = {name: fd_lab(gaussian_fit(lab_of(hwc)[tissue]), fit) for name, fit in fits.items()}
    nearest = min(distances, key=lambda name: distances[name])
    glass = glass_rgb(hwc * 255.0, fcm, rcm)
    return {
        "fd_skin": round(distances[nearest], 2),
        "nearest_slide": nearest,
        "cb_db": round(checkerboard_db(hwc * 255.0), 2),
        "glass_rgb": list(glass) if glass is not None else None,
        "glass_white": None if glass is None else bool(min(glass) >= WHITE_LEVEL),
        "nuc_r": round(nuclear_r(hwc, fcm, tissue), 4),
    }


@dataclass
class StainMethods:
    """The engine's steps with the shipped models, run on a slide's images."""

    despeckler: OnnxModel | None
    colour: ColourTarget | None
    generator: OnnxModel | None

    def outputs(self, views: Sequence[ChainView]) -> dict[str, list[np.ndarray]]:
        """Each method's output for each image of ONE slide (statistics pooled over them)."""
        result: dict[str, list[np.ndarray]] = {GAREAU: [v.gareau for v in views]}
        if self.colour is None:
            return result
        result[COLOUR] = colour_views(views, self.colour)
        if self.generator is not None:
            result[CHAIN] = [run_generator(self.generator, image) for image in result[COLOUR]]
        return result


def run_generator(generator: OnnxModel, rgb_chw: np.ndarray) -> np.ndarray:
    """Whole image, own statistics (mix 0), cropped to the size multiple."""
    multiple = generator.card.size_multiple_px
    height, width = (s - s % multiple for s in rgb_chw.shape[1:])
    out, _ = generator.run(rgb_chw[None, :, :height, :width], norm_stats=None)
    result: np.ndarray = out[0]
    return result


def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric measures; glass as the worst (darkest) channel seen, and how many
    images had white glass."""
    summary: dict[str, Any] = {"images": len(rows)}
    for key in ("fd_skin", "cb_db", "nuc_r", "psnr_db", "ssim", "ciede2000"):
        values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        if values:
            summary[key] = round(float(np.median(values)), 4)
    summary["cb_db_worst"] = round(max(r["cb_db"] for r in rows), 2)
    glasses = [r["glass_rgb"] for r in rows if r.get("glass_rgb") is not None]
    if glasses:
        worst = min(glasses, key=min)
        summary["glass_rgb_worst"] = worst
        summary["glass_white"] = f"{sum(min(g) >= WHITE_LEVEL for g in glasses)}/{len(glasses)}"
    return summary


def evaluate_real_crop(
    data_root: Path, methods: StainMethods, fits: dict[str, Fit], median: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Measures of each method on the real Vivascope crop, and the images for a figure
    (``median``: the 3x3 median after the despeckler, as in the default chain)."""
    fcm_path = data_root / "confocal" / "crop-512-fcm.jpg"
    rcm_path = data_root / "confocal" / "crop-512-rcm.jpg"
    if not (fcm_path.is_file() and rcm_path.is_file()):
        return None
    from training.synthetic import read_gray_unit

    fcm_raw, rcm_raw = read_gray_unit(fcm_path), read_gray_unit(rcm_path)
    view = chain_view(fcm_raw, rcm_raw, methods.despeckler, median)
    fcm, rcm = normalise_mode(fcm_raw), normalise_mode(rcm_raw)
    outputs = {name: images[0] for name, images in methods.outputs([view]).items()}
    measures = {name: real_measures(image, fcm, rcm, fits) for name, image in outputs.items()}
    return measures, outputs


def evaluate_skin(
    images: list[np.ndarray],
    cases: list[str],
    methods: StainMethods,
    fits: dict[str, Fit],
    median: bool = True,
) -> dict[str, Any]:
    """Synthetic confocal of held-out skin (true H&E known), per slide as the engine would stain
    it (``median``: with the 3x3 median after the despeckler): per image measures, and medians
    per method."""
    per_image: dict[str, list[dict[str, Any]]] = {}
    for case in sorted(set(cases)):
        members = [i for i, c in enumerate(cases) if c == case]
        pairs = [synthesize_confocal(images[i], seed=EVAL_SEED + i) for i in members]
        views = [chain_view(p.fcm, p.rcm, methods.despeckler, median) for p in pairs]
        for name, outputs in methods.outputs(views).items():
            for i, pair, out in zip(members, pairs, outputs, strict=True):
                height, width = out.shape[1:]
                truth = np.moveaxis(images[i][:height, :width].astype(np.float32) / 255.0, -1, 0)
                row = {"image": i, "slide": case}
                row |= real_measures(out, normalise_mode(pair.fcm), normalise_mode(pair.rcm), fits)
                row |= {k: round(v, 4) for k, v in stain_metrics(out, truth).items()}
                per_image.setdefault(name, []).append(row)
    return {
        "median": {name: median_of(rows) for name, rows in per_image.items()},
        "per_slide": {
            name: {
                case: median_of([r for r in rows if r["slide"] == case])
                for case in sorted(set(cases))
            }
            for name, rows in per_image.items()
        },
        "per_image": per_image,
    }
