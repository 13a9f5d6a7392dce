"""One residual-generator run end to end: prepare, train, export with its card, evaluate, print
the measures (issue 22, part 5). ``training/gpu/train.sh`` runs it on a GPU; the tests run the
same entry point on the CPU for a few steps on tiny data.

    python -m training.residual_run --data ../shared/data --out runs/gpu --device cuda --bf16 \\
        --ngf 64 --n-blocks 9 --time-budget-s 420

The output folder holds ``prepared/`` (unless ``--prepared`` names one), ``run/`` (checkpoint,
snapshots, losses), ``models/`` (the exported generator with its card beside the despeckler and
colour card it was trained behind: a complete ``--models`` folder for ``dscm stain``) and
``measures.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import shutil
import time
from pathlib import Path
from typing import Any

import click

from training.cli import DEFAULT_DATA, _ints

MEASURES = ("fd_skin", "cb_db", "glass_rgb", "nuc_r", "psnr_db", "ssim", "ciede2000")


def export_run(run_dir: Path, models_src: Path, models_out: Path, default: bool) -> dict[str, Any]:
    """The run's best generator to ``models_out/generator.onnx`` + card, with the despeckler
    and colour card it was trained behind copied beside it."""
    from training.cards import generator_card_info
    from training.export import export_model
    from training.train_residual import load_residual_generator

    models_out.mkdir(parents=True, exist_ok=True)
    options = json.loads((run_dir / "options.json").read_text())
    for source in (options.get("despeckle_onnx", ""), options.get("colour_card", "")):
        if source:
            for path in (Path(source), Path(source).with_suffix(".json")):
                if path.is_file():
                    shutil.copy2(path, models_out / path.name)
    del models_src
    generator, info = load_residual_generator(run_dir, "best")
    card_info = generator_card_info(
        run_dir, info, f"residual-generator-ngf{generator.ngf}-b{generator.n_blocks}"
    )
    card_info.default = default
    return export_model(generator, models_out / "generator.onnx", card_info)


def evaluate_models(
    data_root: Path,
    prepared: Path,
    models_dir: Path,
    eval_images: int,
    texture: bool,
    critic_seconds: float,
    median: bool = True,
) -> dict[str, Any]:
    """Real crop and held-out skin measures of Gareau, the colour stage and colour + this
    generator (and SWD, C2ST with ``texture``)."""
    from training.data import load_split_with_cases
    from training.evaluate import load_methods
    from training.stain_eval import evaluate_real_crop, evaluate_skin, reference_fits

    methods = load_methods(models_dir)
    fits = reference_fits(data_root)
    skin = load_split_with_cases(prepared, ("heldout_skin",))
    if eval_images > 0:
        skin = skin[:: max(len(skin) // eval_images, 1)][:eval_images]
    results: dict[str, Any] = {
        "held_out_skin": evaluate_skin(
            [r for r, _ in skin], [c for _, c in skin], methods, fits, median
        )["median"],
        "held_out_patches": len(skin),
    }
    real = evaluate_real_crop(data_root, methods, fits, median)
    if real is not None:
        results["real_crop"] = real[0]
    if texture:
        from training.c2st import CriticOptions
        from training.texture_eval import evaluate_texture

        critic = CriticOptions(max_seconds=critic_seconds)
        results["texture"] = evaluate_texture(data_root, prepared, methods, critic, median)
    return results


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "(" + ", ".join(str(round(v)) for v in value) + ")"
    return "-" if value is None else str(value)


def measures_table(results: dict[str, Any]) -> str:
    """The measures per method, one line each, for the log."""
    lines = []
    for where in ("real_crop", "held_out_skin"):
        if where not in results:
            continue
        lines.append(f"{where}:")
        for method, row in results[where].items():
            keys = [k for k in MEASURES if k in row] + [k for k in ("glass_rgb_worst",) if k in row]
            lines.append(f"  {method:20s} " + " ".join(f"{k}={_fmt(row[k])}" for k in keys))
    texture = results.get("texture", {}).get("methods", {})
    if texture:
        lines.append("texture (held-out slide; real crop):")
        for method, row in texture.items():
            crop = row.get("real_crop", {})
            c2st = row.get("c2st", {})
            lines.append(
                f"  {method:20s} swd={_fmt(row['held_out']['swd'])} "
                f"swd_texture={_fmt(row['held_out']['swd_texture'])} "
                f"swd_crop={_fmt(crop.get('swd'))} c2st_auc={_fmt(c2st.get('auc'))} "
                f"c2st_crop={_fmt(c2st.get('auc_real_crop'))}"
            )
    return "\n".join(lines)


@click.command()
@click.option("--data", "data_root", default=DEFAULT_DATA, show_default=True)
@click.option("--out", "out_dir", default="runs/residual-run", show_default=True)
@click.option("--prepared", default="", help="a prepared folder (default: OUT/prepared, made)")
@click.option("--patch-px", default=512, show_default=True)
@click.option("--models", "models_src", default="models", show_default=True)
@click.option("--ngf", default=64, show_default=True)
@click.option("--n-blocks", default=9, show_default=True)
@click.option("--dilations", default="1,2,4,8", show_default=True)
@click.option("--ndf", default=64, show_default=True)
@click.option("--crop-px", default=256, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--steps", default=100_000, show_default=True)
@click.option("--time-budget-s", default=420.0, show_default=True, help="training time (0: none)")
@click.option("--checkpoint-every", default=200, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto")
@click.option("--bf16/--fp32", default=True, show_default=True, help="bf16 autocast")
@click.option("--threads", default=0, show_default=True)
@click.option("--eval-images", default=0, show_default=True, help="held-out patches (0: all)")
@click.option("--texture/--no-texture", default=True, show_default=True, help="SWD and C2ST")
@click.option("--critic-seconds", default=90.0, show_default=True)
@click.option("--default/--off-by-default", "default", default=False, show_default=True)
def main(
    data_root: str,
    out_dir: str,
    prepared: str,
    patch_px: int,
    models_src: str,
    dilations: str,
    eval_images: int,
    texture: bool,
    critic_seconds: float,
    default: bool,
    **train: Any,
) -> None:
    """Prepare, train, export and evaluate a residual generator; print its measures."""
    from training.data import prepare
    from training.train_residual import ResidualOptions, train_residual

    started = time.monotonic()
    out = Path(out_dir)
    prepared_dir = Path(prepared) if prepared else out / "prepared"
    models = Path(models_src)
    if not (prepared_dir / "manifest.json").is_file():
        prepare(Path(data_root), prepared_dir, seed=0, patch_px=patch_px, min_tissue=0.5)
    options = ResidualOptions(
        prepared_dir=str(prepared_dir),
        out_dir=str(out / "run"),
        despeckle_onnx=str(models / "despeckle.onnx"),
        colour_card=str(models / "colour.json"),
        dilations=tuple(_ints(dilations)),
        **train,
    )
    print(f"device {options.resolved_device()}, bf16 {options.bf16}", flush=True)
    train_residual(options)
    trained = time.monotonic()
    card = export_run(out / "run", models, out / "models", default)
    print(
        f"exported {out / 'models' / 'generator.onnx'}: {card['architecture']}, "
        f"{card['parameters']} parameters, halo {card['halo_px']} px, default {default}",
        flush=True,
    )
    median = bool(json.loads((out / "run" / "options.json").read_text())["median"])
    results = evaluate_models(
        Path(data_root), prepared_dir, out / "models", eval_images, texture, critic_seconds, median
    )
    results["card"] = {k: card[k] for k in ("name", "architecture", "parameters", "halo_px")}
    results["wall_s"] = {
        "prepare_and_train": round(trained - started, 1),
        "total": round(time.monotonic() - started, 1),
    }
    (out / "measures.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(measures_table(results), flush=True)
    print(f"wall time {results['wall_s']}; measures in {out / 'measures.json'}", flush=True)


if __name__ == "__main__":
    main()
