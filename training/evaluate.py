"""Evaluation of the exported models (the ONNX files the engine runs, through ``OnnxModel``).

1. Despeckling, the paper's Table 1 protocol on held-out slides: inverted Y with speckle
   Gauss(1, 0.2); PSNR/SSIM of noisy, 3x3 median, Lee filter, BM3D on the log image (if the
   ``bm3d`` package is installed), the network, and the network + 3x3 median.
2. Staining fidelity on held-out slides and the held-out skin image, where the true H&E is
   known: synthetic confocal -> the engine's chain up to Gareau, then the generator; PSNR, SSIM
   and CIEDE2000 against the true H&E for Gareau alone and Gareau + generator.
3. The real confocal crop through the chain, as a figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.core.filters import median3x3
from service.core.models import OnnxModel
from training.data import load_split
from training.domains import gareau_from_confocal, he_to_chw, normalise_mode
from training.metrics import gray_metrics, stain_metrics
from training.speckle import add_speckle, clean_reflectance
from training.synthetic import SPECKLE_STD, box_mean, read_gray_unit, synthesize_confocal

EVAL_SEED = 1234


def lee_filter(noisy: np.ndarray, window_px: int = 7, noise_cv: float = SPECKLE_STD) -> np.ndarray:
    """Lee's filter for multiplicative noise with a known coefficient of variation."""
    mean = box_mean(noisy, window_px)
    var = np.maximum(box_mean(noisy * noisy, window_px) - mean * mean, 0.0)
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


def run_generator(generator: OnnxModel, gareau_chw: np.ndarray) -> np.ndarray:
    """Whole image, own statistics (mix 0), cropped to the size multiple."""
    multiple = generator.card.size_multiple_px
    height, width = (s - s % multiple for s in gareau_chw.shape[1:])
    out, _ = generator.run(gareau_chw[None, :, :height, :width], norm_stats=None)
    result: np.ndarray = out[0]
    return result


def evaluate_staining(
    he_images: list[np.ndarray],
    despeckler: OnnxModel | None,
    generator: OnnxModel | None,
    seed_offset: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean PSNR/SSIM/CIEDE2000 against the true H&E: Gareau alone vs Gareau + generator."""
    scores: dict[str, list[dict[str, float]]] = {}
    for index, rgb in enumerate(he_images):
        truth = he_to_chw(rgb)
        pair = synthesize_confocal(rgb, seed=EVAL_SEED + seed_offset + index)
        gareau = gareau_from_confocal(pair.fcm, pair.rcm, despeckler)
        outputs = {"Gareau": gareau}
        if generator is not None:
            outputs["Gareau + generator"] = run_generator(generator, gareau)
        for name, image in outputs.items():
            height, width = image.shape[1:]
            reference = truth[:, :height, :width]
            scores.setdefault(name, []).append(stain_metrics(image[:, :height, :width], reference))
    return {
        name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        for name, rows in scores.items()
    }


def real_crop_panels(
    data_root: Path, despeckler: OnnxModel | None, generator: OnnxModel | None
) -> dict[str, np.ndarray] | None:
    """FCM, RCM, despeckled RCM, Gareau, generator output of the real crop (HWC in [0, 1])."""
    fcm_path = data_root / "confocal" / "crop-512-fcm.jpg"
    rcm_path = data_root / "confocal" / "crop-512-rcm.jpg"
    if not (fcm_path.is_file() and rcm_path.is_file()):
        return None
    fcm = normalise_mode(read_gray_unit(fcm_path))
    rcm = normalise_mode(read_gray_unit(rcm_path))
    despeckled = median3x3(run_despeckler(despeckler, rcm) if despeckler else rcm)
    gareau = gareau_from_confocal(read_gray_unit(fcm_path), read_gray_unit(rcm_path), despeckler)
    panels = {
        "FCM": fcm,
        "RCM": rcm,
        "RCM despeckled + median": despeckled,
        "Gareau": gareau.transpose(1, 2, 0),
    }
    if generator is not None:
        panels["Gareau + generator"] = run_generator(generator, gareau).transpose(1, 2, 0)
    return panels


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


def stain_example(
    rgb: np.ndarray, despeckler: OnnxModel | None, generator: OnnxModel | None
) -> dict[str, np.ndarray]:
    pair = synthesize_confocal(rgb, seed=EVAL_SEED)
    gareau = gareau_from_confocal(pair.fcm, pair.rcm, despeckler)
    panels = {
        "synthetic FCM": normalise_mode(pair.fcm),
        "synthetic RCM": normalise_mode(pair.rcm),
        "Gareau": gareau.transpose(1, 2, 0),
    }
    if generator is not None:
        panels["Gareau + generator"] = run_generator(generator, gareau).transpose(1, 2, 0)
    panels["true H&E"] = he_to_chw(rgb).transpose(1, 2, 0)
    return panels


def evaluate_all(
    data_root: Path, prepared_dir: Path, models_dir: Path, figures_dir: Path
) -> dict[str, Any]:
    """Every evaluation; figures under ``figures_dir``; returns the numbers."""
    despeckle_path = models_dir / "despeckle.onnx"
    generator_path = models_dir / "generator.onnx"
    despeckler = OnnxModel(despeckle_path) if despeckle_path.is_file() else None
    generator = OnnxModel(generator_path) if generator_path.is_file() else None
    test_he = load_split(prepared_dir, ("test",))
    skin_he = load_split(prepared_dir, ("heldout_skin",))
    test_clean = [clean_reflectance(rgb) for rgb in test_he + skin_he]
    results: dict[str, Any] = {
        "despeckle": evaluate_despeckle(test_clean, despeckler),
        "staining_test_slides": evaluate_staining(test_he, despeckler, generator),
        "staining_skin": evaluate_staining(skin_he, despeckler, generator, seed_offset=500),
        "counts": {"test_patches": len(test_he), "skin_patches": len(skin_he)},
    }
    save_panels(
        despeckle_example(test_clean[0], despeckler),
        figures_dir / "despeckle-example.png",
        "held-out slide, speckle Gauss(1, 0.2)",
    )
    if skin_he:
        save_panels(
            stain_example(skin_he[len(skin_he) // 2], despeckler, generator),
            figures_dir / "stain-example-skin.png",
            "held-out skin: synthetic confocal -> stain, against the true H&E",
        )
    if test_he:
        save_panels(
            stain_example(test_he[0], despeckler, generator),
            figures_dir / "stain-example-test.png",
            "held-out slide: synthetic confocal -> stain, against the true H&E",
        )
    panels = real_crop_panels(data_root, despeckler, generator)
    if panels is not None:
        save_panels(
            panels, figures_dir / "real-crop.png", "real Vivascope crop (shared/data/confocal)"
        )
    return results
