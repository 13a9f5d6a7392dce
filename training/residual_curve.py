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

FINAL_IMAGES = 32  # evenly spaced held-out skin patches (of 129): CPU time
COLUMNS = (
    ("crop_fd_skin", "real crop FD_skin"),
    ("crop_cb_db", "real crop cb_dB"),
    ("crop_nuc_r", "real crop nuc_r"),
    ("crop_swd", "real crop SWD"),
    ("crop_glass_min", "real crop glass, darkest channel"),
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
    median = context["median"]
    real = evaluate_real_crop(context["data_root"], methods, context["fits"], median)
    if real is not None:
        for key in ("fd_skin", "cb_db", "nuc_r"):
            row[f"crop_{key}"] = real[0][name][key]
        row["crop_glass_rgb"] = real[0][name]["glass_rgb"]
        crop = stained_real_crop(context["data_root"], methods, median)[name]
        row["crop_swd"] = context["swd"].nearest(crop, context["reference"])["swd"]
    images, cases = context["skin"]
    skin = evaluate_skin(images, cases, methods, context["fits"], median)["median"][name]
    for key in ("fd_skin", "cb_db", "nuc_r", "psnr_db", "ssim", "ciede2000"):
        row[f"skin_{key}"] = skin.get(key)
    row["skin_glass_white"] = skin.get("glass_white")
    patches = stained_patches(context["held_out"], methods, median)[name]
    row["skin_swd"] = context["swd"].nearest(patches, context["reference"])["swd"]
    return row


def build_context(
    data_root: Path, prepared: Path, models: Path, skin_images: int, median: bool = True
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
        "median": median,
    }


def texture_rows(
    data_root: Path,
    prepared: Path,
    methods: Any,
    names: tuple[str, ...],
    seconds: float = 90.0,
    median: bool = True,
) -> dict[str, Any]:
    """SWD (held-out slide and real crop, nearest training slide) and C2ST (critic trained on
    the training slides, AUC on the held-out slide; and on the real crop's stain) of the named
    methods, as ``texture_eval.evaluate_texture`` measures them, without the real-slide floors
    (those do not depend on the generator: see ``dscm-train evaluate``)."""
    from training.c2st import CriticOptions, c2st
    from training.data import TRAIN_SKIN_SLIDES, load_split_with_cases
    from training.texture_eval import (
        CROP_PX,
        TEXTURE_SEED,
        SwdReference,
        read_real_slides,
        stained_patches,
        stained_real_crop,
    )

    slides = read_real_slides(data_root)
    real = {name: [im for _, im in crops] for name, crops in slides.items()}
    reference = {name: ims for name, ims in real.items() if name in TRAIN_SKIN_SLIDES}
    held_names = sorted(set(real) - set(reference))
    train = [p for p in load_split_with_cases(prepared, ("train_skin",)) if p[1] in reference]
    test = [p for p in load_split_with_cases(prepared, ("heldout_skin",)) if p[1] in held_names]
    stained_train = stained_patches(train, methods, median)
    stained_test = stained_patches(test, methods, median)
    crops = stained_real_crop(data_root, methods, median)
    every = [*stained_test[names[0]], *(im for ims in real.values() for im in ims)]
    swd = SwdReference(real, min(CROP_PX, *(min(im.shape[:2]) for im in every)), TEXTURE_SEED)
    reference_real = [im for ims in reference.values() for im in ims]
    held_real = [im for name in held_names for im in real[name]]
    rows: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {"held_out": swd.nearest(stained_test[name], reference)}
        extra = {"real_crop": crops[name]} if name in crops else None
        if extra:
            row["real_crop"] = swd.nearest(crops[name], reference)
        options = CriticOptions(max_seconds=seconds)
        row["c2st"] = c2st(
            reference_real, stained_train[name], held_real, stained_test[name], options, extra
        )
        rows[name] = row
    return rows


def plot_curve(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        {**r, "crop_glass_min": min(r["crop_glass_rgb"]) if r.get("crop_glass_rgb") else None}
        for r in rows
    ]
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


def run_median(run: Path) -> bool:
    """Whether the run's input had the 3x3 median (runs before the option: it had)."""
    median = json.loads((run / "options.json").read_text()).get("median")
    return True if median is None else bool(median)


def measure_final(run: Path, which: str, data_root: Path, prepared: Path, models: Path) -> None:
    """The chosen checkpoint exported to RUN/final-models (off by default) and measured in
    full; RUN/final.json."""
    import shutil

    from training.cards import generator_card_info
    from training.evaluate import load_methods
    from training.export import export_model
    from training.residual_run import evaluate_models, measures_table
    from training.stain_eval import CHAIN, COLOUR
    from training.train_residual import load_residual_generator

    folder = run / "final-models"
    folder.mkdir(exist_ok=True)
    for name in ("despeckle.onnx", "despeckle.json", "colour.json"):
        shutil.copy2(models / name, folder / name)
    generator, info = load_residual_generator(run, which)
    card_info = generator_card_info(run, info, f"residual-generator-ngf{generator.ngf}")
    card_info.default = False
    export_model(generator, folder / "generator.onnx", card_info)
    median = run_median(run)
    results = evaluate_models(data_root, prepared, folder, FINAL_IMAGES, False, 90.0, median)
    methods = load_methods(folder)
    results["texture"] = {
        "methods": texture_rows(data_root, prepared, methods, (COLOUR, CHAIN), 90.0, median)
    }
    results["checkpoint"] = {k: v for k, v in info.items() if k != "options"}
    (run / "final.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(measures_table(results), flush=True)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_root", default="../shared/data", show_default=True)
@click.option("--prepared", default="runs/prep", show_default=True)
@click.option("--models", default="models", show_default=True)
@click.option("--every", default=1, show_default=True, help="every n-th snapshot (and the last)")
@click.option("--skin-images", default=16, show_default=True)
@click.option("--json", "json_path", default="", help="default: RUN_DIR/curve.json")
@click.option("--png", default="", help="the figure (default: RUN_DIR/curve.png)")
@click.option(
    "--final",
    default="",
    help="also measure this checkpoint (best, last or a snapshot) on 32 held-out "
    "skin patches and the real crop, SWD and C2ST beside the colour stage's (RUN_DIR/final.json)",
)
def main(
    run_dir: str,
    data_root: str,
    prepared: str,
    models: str,
    every: int,
    skin_images: int,
    json_path: str,
    png: str,
    final: str,
) -> None:
    """Measure the snapshots of a residual run; write the rows and the figure."""
    from training.cards import generator_card_info
    from training.export import export_model
    from training.train_residual import load_residual_generator, snapshot_names

    run = Path(run_dir)
    if final:
        measure_final(run, final, Path(data_root), Path(prepared), Path(models))
    context = build_context(
        Path(data_root), Path(prepared), Path(models), skin_images, run_median(run)
    )
    names = snapshot_names(run)
    picked = [n for i, n in enumerate(names) if (i + 1) % every == 0 or n == names[-1]]
    out_json = Path(json_path) if json_path else run / "curve.json"
    done = {r["step"]: r for r in json.loads(out_json.read_text())} if out_json.is_file() else {}
    rows = [done.get(0) or {"step": 0, "elapsed_s": 0.0, **measure_generator(None, context)}]
    print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in picked:
            step = int(name.removeprefix("step-").removesuffix(".pt"))
            if step in done:  # measured by an earlier call
                rows.append(done[step])
                continue
            generator, info = load_residual_generator(run, name)
            onnx = Path(tmp) / "generator.onnx"
            export_model(generator, onnx, generator_card_info(run, info, "curve"))
            row = {"step": info["step"], "elapsed_s": float(info["elapsed_s"])}
            row |= {k: info[k] for k in info if k.startswith("val_")}
            row |= measure_generator(onnx, context)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
            out_json.write_text(json.dumps(rows, indent=1) + "\n")
    out_json.write_text(json.dumps(rows, indent=1) + "\n")
    plot_curve(rows, Path(png) if png else run / "curve.png")


if __name__ == "__main__":
    main()
