"""The 3x3 median after the despeckler (the paper's step): does it earn its place?

``python -m training.median_eval DATA_ROOT --prepared DIR [--models models]`` compares the
despeckler alone with the despeckler + 3x3 median:

1. synthetic speckle, the despeckling protocol of docs/models.md (held-out slide and skin
   patches, inverted Y, speckle Gauss(1, 0.2)): PSNR and SSIM against the clean image;
2. the real confocal crop's reflectance: the speckle left (local contrast: median std/mean in
   7x7 windows over tissue) and what the filter took away (the ratio image input / output:
   its std, and its Pearson r with the input, 0 when only signal-independent speckle went);
3. the stain on the real crop (FD_skin, cb_dB, glass, nuc_r, SWD) and on synthetic confocal
   of held-out skin (the same and PSNR, SSIM, CIEDE2000 against the true H&E), for Gareau and
   the colour stage (the default chain's last stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.core.filters import median3x3
from service.core.quality import box_blur
from training.data import TRAIN_SKIN_SLIDES, load_split_with_cases
from training.domains import normalise_mode
from training.evaluate import evaluate_despeckle, load_methods, run_despeckler
from training.speckle import clean_reflectance
from training.stain_eval import (
    StainMethods,
    evaluate_real_crop,
    evaluate_skin,
    reference_fits,
)
from training.synthetic import LOCAL_WINDOW_PX, TISSUE_LOCAL_MEAN, read_gray_unit
from training.texture_eval import (
    CROP_PX,
    TEXTURE_SEED,
    SwdReference,
    read_real_slides,
    stained_patches,
    stained_real_crop,
)

VARIANTS = {"despeckler alone": False, "despeckler + median 3x3": True}


def speckle_measures(raw: np.ndarray, filtered: np.ndarray) -> dict[str, float]:
    """Speckle left in ``filtered`` and what was taken from ``raw`` (both normalised RCM)."""
    mean = box_blur(filtered, LOCAL_WINDOW_PX)
    square = box_blur(filtered * filtered, LOCAL_WINDOW_PX)
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    tissue = mean > TISSUE_LOCAL_MEAN
    ratio = raw[tissue] / np.maximum(filtered[tissue], 1e-3)
    return {
        "local_contrast": round(float(np.median(std[tissue] / mean[tissue])), 4),
        "ratio_std": round(float(ratio.std()), 4),
        "ratio_r_input": round(float(np.corrcoef(ratio, raw[tissue])[0, 1]), 4),
    }


def compare(data_root: Path, prepared_dir: Path, models_dir: Path) -> dict[str, Any]:
    """Every measure of the module's doc, for both variants."""
    loaded = load_methods(models_dir)
    despeckler = loaded.despeckler
    if despeckler is None:
        raise SystemExit(f"no despeckler in {models_dir}")
    methods = StainMethods(despeckler, loaded.colour, None)  # the default chain's stages
    test = load_split_with_cases(prepared_dir, ("test",))
    skin = load_split_with_cases(prepared_dir, ("heldout_skin",))
    cleans = [clean_reflectance(rgb) for rgb, _ in test + skin]
    despeckle = evaluate_despeckle(cleans, methods.despeckler, with_bm3d=False)
    result: dict[str, Any] = {
        "synthetic_speckle": {
            name: despeckle[key]
            for name, key in (
                ("noisy", "noisy"),
                ("despeckler alone", "network"),
                ("despeckler + median 3x3", "network + median 3x3"),
            )
        },
        "synthetic_patches": len(cleans),
    }
    rcm = normalise_mode(read_gray_unit(data_root / "confocal" / "crop-512-rcm.jpg"))
    net = run_despeckler(despeckler, rcm)
    result["real_crop_rcm"] = {
        "input": speckle_measures(rcm, rcm),
        "despeckler alone": speckle_measures(rcm, net),
        "despeckler + median 3x3": speckle_measures(rcm, median3x3(net)),
    }
    fits = reference_fits(data_root)
    slides = read_real_slides(data_root)
    reference_images = {
        name: [im for _, im in crops] for name, crops in slides.items() if name in TRAIN_SKIN_SLIDES
    }
    reference = SwdReference(reference_images, CROP_PX, TEXTURE_SEED)
    held_out = [p for p in skin if p[1] == "morphea"]
    for variant, median in VARIANTS.items():
        real = evaluate_real_crop(data_root, methods, fits, median)
        crop_measures = real[0] if real else {}
        for name, images in stained_real_crop(data_root, methods, median).items():
            crop_measures[name] |= {"swd": reference.nearest(images)}
        skin_result = evaluate_skin(
            [rgb for rgb, _ in skin], [c for _, c in skin], methods, fits, median
        )
        skin_swd = {
            name: reference.nearest(images)
            for name, images in stained_patches(held_out, methods, median).items()
        }
        result[variant] = {
            "real_crop": crop_measures,
            "held_out_skin": skin_result["median"],
            "held_out_swd": skin_swd,
        }
    return result


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/models.md's section on the median."""
    lines = [
        "| synthetic speckle | PSNR (dB) | SSIM |",
        "|---|---|---|",
        *(
            f"| {name} | {m['psnr_db']:.2f} | {m['ssim']:.3f} |"
            for name, m in result["synthetic_speckle"].items()
        ),
        "",
        "| real crop RCM | local contrast | ratio std | ratio r(input) |",
        "|---|---|---|---|",
        *(
            f"| {name} | {m['local_contrast']:.3f} | {m['ratio_std']:.3f} | "
            f"{m['ratio_r_input']:.3f} |"
            for name, m in result["real_crop_rcm"].items()
        ),
        "",
        "| chain | method | real crop: FD_skin | cb_dB | glass | nuc_r | SWD colour / texture "
        "| held-out skin: FD_skin | nuc_r | PSNR | SSIM | CIEDE2000 | SWD colour / texture |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        for name, crop in result[variant]["real_crop"].items():
            skin = result[variant]["held_out_skin"][name]
            swd = result[variant]["held_out_swd"][name]
            glass = "(" + ", ".join(f"{v:.0f}" for v in crop["glass_rgb"]) + ")"
            lines.append(
                f"| {variant} | {name} | {crop['fd_skin']:.1f} | {crop['cb_db']:.1f} | {glass} | "
                f"{crop['nuc_r']:.3f} | {crop['swd']['swd']:.3f} / "
                f"{crop['swd']['swd_texture']:.3f} | {skin['fd_skin']:.1f} | "
                f"{skin['nuc_r']:.3f} | {skin['psnr_db']:.2f} | {skin['ssim']:.3f} | "
                f"{skin['ciede2000']:.2f} | {swd['swd']:.3f} / {swd['swd_texture']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = compare(args.data_root, args.prepared, args.models)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
