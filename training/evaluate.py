"""Evaluation of the exported models (the ONNX files the engine runs, through ``OnnxModel``).

1. Despeckling, the paper's Table 1 protocol on held-out slides: inverted Y with speckle
   Gauss(1, 0.2); PSNR/SSIM of noisy, 3x3 median, Lee filter, BM3D on the log image (if the
   ``bm3d`` package is installed), the network, and the network + 3x3 median.
2. Staining (``training/stain_eval.py``): Gareau alone, the colour transfer and the full chain
   on the real confocal crop and on synthetic confocal of held-out skin slides and held-out
   TCGA slides, with the stain-quality measures (FD_skin, cb_dB, glass, nuc_r) and, where the
   true H&E is known, PSNR, SSIM and CIEDE2000; figures of each.
3. Texture (``training/texture_eval.py``): SWD and C2ST of every method and of each real skin
   slide against the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.core.colour import find_colour_card, load_colour_target
from service.core.filters import median3x3
from service.core.models import OnnxModel
from service.core.quality import box_blur
from training.data import load_split_with_cases
from training.domains import chain_view, normalise_mode
from training.metrics import gray_metrics
from training.speckle import add_speckle, clean_reflectance
from training.stain_eval import (
    EVAL_SEED,
    StainMethods,
    evaluate_real_crop,
    evaluate_skin,
    reference_fits,
    reference_spread,
)
from training.synthetic import SPECKLE_STD, read_gray_unit, synthesize_confocal


def lee_filter(noisy: np.ndarray, window_px: int = 7, noise_cv: float = SPECKLE_STD) -> np.ndarray:
    """Lee's filter for multiplicative noise with a known coefficient of variation."""
    mean = box_blur(noisy, window_px)
    var = np.maximum(box_blur(noisy * noisy, window_px) - mean * mean, 0.0)
    signal_var = np.maximum((var - (mean * noise_cv) ** 2) / (1.0 + noise_cv**2), 0.0)
    gain = signal_var / np.maximum(var, 1e-12)
    return (mean + gain * (noisy - mean)).astype(np.float32)


def bm3d_log(noisy: np.ndarray, noise_cv: float = SPECKLE_STD) -> np.ndarray | None:
    """BM3D on the log image (multiplicative -> additive noise), or None without ``bm3d``."""
    try:
        import bm3d
    except ImportError:
        return None
    log_image = np.log(np.maximum(noisy, 1e-3))
    # std of log(1 + n), n ~ N(0, cv^2), to first order
    estimate = bm3d.bm3d(log_image, sigma_psd=noise_cv)
    return np.clip(np.exp(estimate), 0.0, 1.0).astype(np.float32)


def run_despeckler(model: OnnxModel, noisy: np.ndarray) -> np.ndarray:
    out, _ = model.run(noisy[None, None].astype(np.float32))
    result: np.ndarray = out[0, 0]
    return result


def evaluate_despeckle(
    cleans: list[np.ndarray], despeckler: OnnxModel | None, with_bm3d: bool = True
) -> dict[str, dict[str, float]]:
    """Mean PSNR/SSIM per method over the images (each its own seeded noise)."""
    scores: dict[str, list[dict[str, float]]] = {}
    for index, clean in enumerate(cleans):
        noisy = add_speckle(clean, np.random.default_rng([EVAL_SEED, index]))
        methods: dict[str, np.ndarray | None] = {
            "noisy": noisy,
            "median 3x3": median3x3(noisy),
            "Lee 7x7": lee_filter(noisy),
            "BM3D (log)": bm3d_log(noisy) if with_bm3d else None,
        }
        if despeckler is not None:
            net = run_despeckler(despeckler, noisy)
            methods["network"] = net
            methods["network + median 3x3"] = median3x3(net)
        for name, estimate in methods.items():
            if estimate is not None:
                scores.setdefault(name, []).append(gray_metrics(estimate, clean))
    return {
        name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        for name, rows in scores.items()
    }


def save_panels(panels: dict[str, np.ndarray], png_path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for axis, (name, image) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        axis.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def compare_despecklers(
    prepared_dir: Path, models: dict[str, Path], bm3d_every: int = 3
) -> dict[str, Any]:
    """Despecklers side by side on the held-out patches of the despeckling protocol (the test
    slides and held-out skin): every method on all patches, then again with BM3D on every
    ``bm3d_every``-th patch (BM3D takes 10-20 s per 512 px patch here, so it runs once); the
    same noise for every model."""
    test = load_split_with_cases(prepared_dir, ("test",))
    skin = load_split_with_cases(prepared_dir, ("heldout_skin",))
    cleans = [clean_reflectance(rgb) for rgb, _ in test + skin]
    subset = cleans[::bm3d_every]
    result: dict[str, Any] = {"patches": len(cleans), "bm3d_patches": len(subset)}
    for index, (name, path) in enumerate(models.items()):
        model = OnnxModel(path)
        result[name] = {
            "all": evaluate_despeckle(cleans, model, with_bm3d=False),
            # BM3D does not depend on the model: run once, with the first
            "bm3d_subset": evaluate_despeckle(subset, model, with_bm3d=index == 0),
        }
    return result


def despeckler_table(compared: dict[str, Any]) -> str:
    """Markdown: each despeckler and the fixed filters, PSNR/SSIM on all patches and on the
    BM3D subset."""
    names = [k for k in compared if isinstance(compared[k], dict)]
    rows = [
        f"| method | PSNR (dB), {compared['patches']} patches | SSIM | "
        f"PSNR (dB), {compared['bm3d_patches']} patches | SSIM |",
        "|---|---|---|---|---|",
    ]
    first = compared[names[0]]
    baselines = ["noisy", "median 3x3", "Lee 7x7", "BM3D (log)"]
    for method in baselines:
        full = first["all"].get(method)
        sub = first["bm3d_subset"].get(method)
        cells = [f"{full['psnr_db']:.2f} | {full['ssim']:.3f}" if full else "- | -"]
        cells.append(f"{sub['psnr_db']:.2f} | {sub['ssim']:.3f}" if sub else "- | -")
        rows.append(f"| {method} | {' | '.join(cells)} |")
    for name in names:
        full, sub = compared[name]["all"]["network"], compared[name]["bm3d_subset"]["network"]
        rows.append(
            f"| {name} | {full['psnr_db']:.2f} | {full['ssim']:.3f} | "
            f"{sub['psnr_db']:.2f} | {sub['ssim']:.3f} |"
        )
    return "\n".join(rows)


def despeckle_example(
    clean: np.ndarray, despeckler: OnnxModel | None, crop_px: int = 160
) -> dict[str, np.ndarray]:
    clean = clean[:crop_px, :crop_px]
    noisy = add_speckle(clean, np.random.default_rng([EVAL_SEED, 99]))
    panels = {"clean (inverted Y)": clean, "speckled": noisy, "median 3x3": median3x3(noisy)}
    panels["Lee 7x7"] = lee_filter(noisy)
    if despeckler is not None:
        panels["network"] = run_despeckler(despeckler, noisy)
        panels["network + median"] = median3x3(panels["network"])
    return panels


def stain_panels(
    fcm: np.ndarray, rcm: np.ndarray, outputs: dict[str, np.ndarray], truth: np.ndarray | None
) -> dict[str, np.ndarray]:
    """FCM, RCM, each method's output and (for synthetic inputs) the true H&E, HWC in [0, 1]."""
    panels = {"FCM": fcm, "RCM": rcm}
    panels |= {name: image.transpose(1, 2, 0) for name, image in outputs.items()}
    if truth is not None:
        panels["true H&E"] = truth
    return panels


def skin_example(
    rgb: np.ndarray, methods: StainMethods, median: bool = True
) -> dict[str, np.ndarray]:
    """One held-out skin image: synthetic confocal through every method, beside its H&E."""
    pair = synthesize_confocal(rgb, seed=EVAL_SEED)
    view = chain_view(pair.fcm, pair.rcm, methods.despeckler, median)
    outputs = {name: images[0] for name, images in methods.outputs([view]).items()}
    truth = rgb.astype(np.float32) / 255.0
    return stain_panels(normalise_mode(pair.fcm), normalise_mode(pair.rcm), outputs, truth)


def load_methods(models_dir: Path) -> StainMethods:
    despeckle_path = models_dir / "despeckle.onnx"
    generator_path = models_dir / "generator.onnx"
    colour_card = find_colour_card(models_dir)
    return StainMethods(
        OnnxModel(despeckle_path) if despeckle_path.is_file() else None,
        load_colour_target(colour_card) if colour_card else None,
        OnnxModel(generator_path) if generator_path.is_file() else None,
    )


def median_in_default_chain(models_dir: Path) -> bool:
    """Whether the models folder's default chain runs the 3x3 median (the cards decide)."""
    from service.core.chain import resolve_stages
    from service.core.models import discover_stage_models, stages_off_by_default

    found = discover_stage_models(models_dir)
    return "median" in resolve_stages(None, found, stages_off_by_default(found))


def evaluate_all(
    data_root: Path, prepared_dir: Path, models_dir: Path, figures_dir: Path, texture: bool = True
) -> dict[str, Any]:
    """Every evaluation (with ``texture``, SWD and C2ST too); figures under ``figures_dir``;
    returns the numbers."""
    methods = load_methods(models_dir)
    median = median_in_default_chain(models_dir)
    fits = reference_fits(data_root)
    test = load_split_with_cases(prepared_dir, ("test",))
    skin = load_split_with_cases(prepared_dir, ("heldout_skin",))
    test_he, skin_he = [rgb for rgb, _ in test], [rgb for rgb, _ in skin]
    test_clean = [clean_reflectance(rgb) for rgb in test_he + skin_he]
    results: dict[str, Any] = {
        "despeckle": evaluate_despeckle(test_clean, methods.despeckler),
        "stain_skin": evaluate_skin(skin_he, [c for _, c in skin], methods, fits, median),
        "stain_test_slides": evaluate_skin(test_he, [c for _, c in test], methods, fits, median),
        "reference_spread": reference_spread(fits),
        "counts": {
            "test_patches": len(test_he),
            "skin_patches": len(skin_he),
            "skin_slides": sorted({c for _, c in skin}),
            "reference_slides": sorted(fits),
        },
        "median_after_despeckler": median,
    }
    if texture:
        from training.texture_eval import evaluate_texture  # torch: only when asked

        results["texture"] = evaluate_texture(data_root, prepared_dir, methods, median=median)
    real = evaluate_real_crop(data_root, methods, fits, median)
    if real is not None:
        results["stain_real_crop"], outputs = real
        fcm = normalise_mode(read_gray_unit(data_root / "confocal" / "crop-512-fcm.jpg"))
        rcm = normalise_mode(read_gray_unit(data_root / "confocal" / "crop-512-rcm.jpg"))
        save_panels(
            stain_panels(fcm, rcm, outputs, None),
            figures_dir / "real-crop.png",
            "real Vivascope crop (shared/data/confocal): never used in training",
        )
    save_panels(
        despeckle_example(test_clean[0], methods.despeckler),
        figures_dir / "despeckle-example.png",
        "held-out slide, speckle Gauss(1, 0.2)",
    )
    for case in sorted({c for _, c in skin}):  # the middle patch of each held-out skin slide
        members = [rgb for rgb, c in skin if c == case]
        save_panels(
            skin_example(members[len(members) // 2], methods, median),
            figures_dir / f"stain-example-skin-{case}.png",
            f"held-out skin ({case}): synthetic confocal -> stain, against the true H&E",
        )
    return results
