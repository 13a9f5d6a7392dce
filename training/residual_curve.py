"""The residual generator's measures against training time (issue 22, part 4): each snapshot
of a run (``snapshots/step-*.pt``) is exported to ONNX and measured as the engine runs it, on
the real confocal crop (FD_skin, cb_dB, glass, nuc_r, SWD against the reference slides) and on
evenly spaced held-out skin patches (the same, and PSNR, SSIM, CIEDE2000, SWD of the held-out
slide's patches). Step 0 is the identity: the colour stage. C2ST trains a critic per method
(minutes), so it is left to the full ``dscm-train evaluate`` of the chosen checkpoint.

    python -m training.residual_curve runs/residual-cpu --data ../shared/data \\
        --prepared runs/prep --every 2 --png docs/figures/residual-curve.png
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np

COLUMNS = (
    ("crop_fd_skin", "real crop FD_skin"),
    ("crop_cb_db", "real crop cb_dB"),
    ("crop_nuc_r", "real crop nuc_r"),
    ("crop_swd", "real crop SWD"),
    ("skin_swd", "held-out SWD"),
    ("skin_psnr_db", "held-out PSNR (dB)"),
    ("skin_ssim", "held-out SSIM"),
    ("skin_ciede2000", "held-out CIEDE2000"),
    ("skin_cb_db", "held-out cb_dB"),
)


def measure_generator(
    generator_onnx: Path | None,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The measures of colour + this generator (the colour stage alone without one)."""
    from service.core.models import OnnxModel
    from training.stain_eval import CHAIN, COLOUR, StainMethods, evaluate_real_crop, evaluate_skin
    from training.texture_eval import stained_patches, stained_real_crop

    methods = StainMethods(
        context["despeckler"],
        context["colour"],
        OnnxModel(generator_onnx) if generator_onnx else None,
    )
    name = CHAIN if generator_onnx else COLOUR
    row: dict[str, Any] = {}
    real = evaluate_real_crop(context["data_root"], methods, context["fits"])
    if real is not None:
        for key in ("fd_skin", "cb_db", "nuc_r"):
            row[f"crop_{key}"] = real[0][name][key]
        row["crop_glass_rgb"] = real[0][name]["glass_rgb"]
        crop = stained_real_crop(context["data_root"], methods)[name]
        row["crop_swd"] = context["swd"].nearest(crop, context["reference"])["swd"]
    images, cases = context["skin"]
    skin = evaluate_skin(images, cases, methods, context["fits"])["median"][name]
    for key in ("fd_skin", "cb_db", "nuc_r", "psnr_db", "ssim", "ciede2000"):
        row[f"skin_{key}"] = skin.get(key)
    row["skin_glass_white"] = skin.get("glass_white")
    patches = stained_patches(context["held_out"], methods)[name]
    row["skin_swd"] = context["swd"].nearest(patches, context["reference"])["swd"]
    return row


def build_context(
    data_root: Path, prepared: Path, models: Path, skin_images: int
) -> dict[str, Any]:
    """What every snapshot is measured against, loaded once."""
    from service.core.colour import load_colour_target
    from service.core.models import OnnxModel
    from training.data import TRAIN_SKIN_SLIDES, load_split_with_cases
    from training.stain_eval import reference_fits
    from training.texture_eval import CROP_PX, TEXTURE_SEED, SwdReference, read_real_slides

    skin = load_split_with_cases(prepared, ("heldout_skin",))
    skin = skin[:: max(len(skin) // skin_images, 1)][:skin_images]
    slides = read_real_slides(data_root)
    real = {name: [im for _, im in crops] for name, crops in slides.items()}
    held_out = [p for p in load_split_with_cases(prepared, ("heldout_skin",))]
    held_out = [p for p in held_out if p[1] in set(real) - set(TRAIN_SKIN_SLIDES)]
    return {
        "data_root": data_root,
        "despeckler": OnnxModel(models / "despeckle.onnx"),
        "colour": load_colour_target(models / "colour.json"),
        "fits": reference_fits(data_root),
        "skin": ([r for r, _ in skin], [c for _, c in skin]),
        "held_out": held_out,
        "swd": SwdReference(real, CROP_PX, TEXTURE_SEED),
        "reference": TRAIN_SKIN_SLIDES,
    }


def plot_curve(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["elapsed_s"] / 60 for r in rows]
    shown = [(key, label) for key, label in COLUMNS if any(r.get(key) is not None for r in rows)]
    cols = 3
    fig, axes = plt.subplots(
        (len(shown) + cols - 1) // cols, cols, figsize=(9, 2.1 * ((len(shown) + 2) // 3))
    )
    for axis, (key, label) in zip(np.atleast_1d(axes).ravel(), shown, strict=False):
        values = [np.nan if r.get(key) is None else float(r[key]) for r in rows]
        axis.plot(minutes, values, marker="o", markersize=3)
        axis.axhline(values[0], color="grey", linewidth=0.8, linestyle="--")  # the colour stage
        axis.set_title(label, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in np.atleast_1d(axes).ravel()[len(shown) :]:
        axis.axis("off")
    fig.supxlabel("training time (min); dashed: the colour stage alone (step 0)", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=72)
    plt.close(fig)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_root", default="../shared/data", show_default=True)
@click.option("--prepared", default="runs/prep", show_default=True)
@click.option("--models", default="models", show_default=True)
@click.option("--every", default=1, show_default=True, help="every n-th snapshot (and the last)")
@click.option("--skin-images", default=16, show_default=True)
@click.option("--json", "json_path", default="", help="default: RUN_DIR/curve.json")
@click.option("--png", default="", help="the figure (default: RUN_DIR/curve.png)")
def main(
    run_dir: str,
    data_root: str,
    prepared: str,
    models: str,
    every: int,
    skin_images: int,
    json_path: str,
    png: str,
) -> None:
    """Measure the snapshots of a residual run; write the rows and the figure."""
    from training.cards import generator_card_info
    from training.export import export_model
    from training.train_residual import load_residual_generator, snapshot_names

    run = Path(run_dir)
    context = build_context(Path(data_root), Path(prepared), Path(models), skin_images)
    names = snapshot_names(run)
    picked = [n for i, n in enumerate(names) if (i + 1) % every == 0 or n == names[-1]]
    rows = [{"step": 0, "elapsed_s": 0.0, **measure_generator(None, context)}]
    print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in picked:
            generator, info = load_residual_generator(run, name)
            onnx = Path(tmp) / "generator.onnx"
            export_model(generator, onnx, generator_card_info(run, info, "curve"))
            row = {"step": info["step"], "elapsed_s": float(info["elapsed_s"])}
            row |= {k: info[k] for k in info if k.startswith("val_")}
            row |= measure_generator(onnx, context)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    out_json = Path(json_path) if json_path else run / "curve.json"
    out_json.write_text(json.dumps(rows, indent=1) + "\n")
    plot_curve(rows, Path(png) if png else run / "curve.png")


if __name__ == "__main__":
    main()
