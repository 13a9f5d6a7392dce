"""``dscm-train prepare | despeckle | cyclegan | export | import-reference | evaluate |
texture``."""

from __future__ import annotations

import os

# Other processes share these CPUs: spinning OpenMP workers then wait on descheduled peers,
# which made training steps 2x slower here (measured). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_DATA = "../shared/data"
DEFAULT_PREPARED = "build/prepared"
_Command = TypeVar("_Command", bound=Callable[..., Any])


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _choice(flag: str, choices: list[str], help_text: str) -> Callable[[_Command], _Command]:
    """An option that takes one of ``choices``; the first is the default."""
    return click.option(
        flag, type=click.Choice(choices), default=choices[0], show_default=True, help=help_text
    )


@click.group()
def main() -> None:
    """Train, export and evaluate the despeckler and the stain generator."""


@main.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option("--out", "out_dir", default=DEFAULT_PREPARED, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--patch-px", default=512, show_default=True)
@click.option("--min-tissue", default=0.5, show_default=True)
def prepare(data_root: str, out_dir: str, seed: int, patch_px: int, min_tissue: float) -> None:
    """Tissue patches of the H&E under DATA_ROOT/he, split by case, with a manifest."""
    from training.data import prepare as run_prepare
    from training.data import split_summary

    manifest = run_prepare(Path(data_root), Path(out_dir), seed, patch_px, min_tissue)
    for split, counts in split_summary(manifest).items():
        click.echo(f"{split:13s} {counts['cases']:3d} cases {counts['patches']:4d} patches")


@main.command()
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option("--out", "out_dir", default="build/despeckle", show_default=True)
@click.option("--width", default=32, show_default=True, help="64 = the paper's size")
@click.option("--depth", default=7, show_default=True)
@click.option("--steps", default=1200, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--crop-px", default=128, show_default=True, help="the paper: 256")
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=100, show_default=True)
@click.option("--threads", default=0, help="torch threads (0: all cores)")
def despeckle(**kwargs: object) -> None:
    """Train (or resume) the despeckler."""
    from training.train_despeckle import DespeckleOptions, train_despeckle

    prepared = str(kwargs.pop("prepared"))
    train_despeckle(DespeckleOptions(prepared_dir=prepared, **kwargs))  # type: ignore[arg-type]


@main.command()
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option("--out", "out_dir", default="build/cyclegan", show_default=True)
@click.option("--despeckle-onnx", default="models/despeckle.onnx", show_default=True)
@click.option("--ngf", default=16, show_default=True, help="64 = the paper's size")
@click.option("--n-blocks", default=9, show_default=True)
@click.option("--ndf", default=64, show_default=True)
@click.option("--stage-crops", default="256,512", show_default=True)
@click.option("--stage-steps", default="1000,1000", show_default=True)
@click.option("--batch-size", default=1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=250, show_default=True)
@click.option("--threads", default=0)
@_choice(
    "--upsample", ["resize", "transpose"], "transpose = the reference layout (checkerboard-prone)"
)
@_choice(
    "--domain",
    ["skin", "tcga"],
    "skin: train_skin slides, paired; tcga: the paper's unpaired recipe on TCGA tiles",
)
@click.option(
    "--colour-card",
    default="models/colour.json",
    show_default=True,
    help="the colour stage before the generator ('' for Gareau alone)",
)
@click.option("--lambda-paired", default=10.0, show_default=True, help="skin domain only")
@click.option(
    "--lambda-faithful",
    default=10.0,
    show_default=True,
    help="weight of 1 - r(haematoxylin of output, of input): nuclei kept",
)
@click.option(
    "--bf16/--fp32",
    default=None,
    help="CPU bf16 autocast; default: on where the CPU has AMX or AVX512-BF16 (emulated bf16 "
    "on other CPUs was 13x slower than fp32, measured)",
)
@click.option("--channels-last/--channels-first", default=False, show_default=True)
def cyclegan(stage_crops: str, stage_steps: str, **kwargs: object) -> None:
    """Train (or resume) the CycleGAN; domain A is built with the exported despeckler."""
    from training.common import cpu_has_bf16
    from training.train_cyclegan import CycleGanOptions, train_cyclegan

    prepared = str(kwargs.pop("prepared"))
    if kwargs.get("bf16") is None:
        kwargs["bf16"] = cpu_has_bf16()
    options = CycleGanOptions(
        prepared_dir=prepared,
        stage_crops_px=_ints(stage_crops),
        stage_steps=_ints(stage_steps),
        **kwargs,  # type: ignore[arg-type]
    )
    train_cyclegan(options)


@main.command()
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option("--out", "out_dir", default="runs/residual", show_default=True)
@click.option("--despeckle-onnx", default="models/despeckle.onnx", show_default=True)
@click.option("--colour-card", default="models/colour.json", show_default=True)
@click.option("--ngf", default=16, show_default=True, help="64 = the paper's width")
@click.option("--n-blocks", default=9, show_default=True)
@click.option("--dilations", default="1,2,4,8", show_default=True, help="cycled over the blocks")
@click.option("--ndf", default=32, show_default=True)
@click.option("--crop-px", default=128, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--steps", default=3000, show_default=True)
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--lambda-paired", default=10.0, show_default=True)
@click.option("--lambda-adv", default=1.0, show_default=True)
@click.option("--lambda-faithful", default=10.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=100, show_default=True)
@click.option("--threads", default=0, help="torch threads (0: all cores)")
@click.option("--time-budget-s", default=0.0, help="stop after this much training time (0: none)")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto")
@click.option("--bf16/--fp32", default=False, show_default=True, help="bf16 autocast")
@click.option(
    "--glass-gate/--no-glass-gate",
    default=True,
    show_default=True,
    help="the correction x a tissue weight of the input: the colour stage's glass is kept",
)
def residual(dilations: str, **kwargs: object) -> None:
    """Train (or resume) the residual generator on top of the colour stage (skin, paired +
    adversarial + nuclear terms)."""
    from training.train_residual import ResidualOptions, train_residual

    prepared = str(kwargs.pop("prepared"))
    options = ResidualOptions(
        prepared_dir=prepared,
        dilations=tuple(_ints(dilations)),
        **kwargs,  # type: ignore[arg-type]
    )
    train_residual(options)


@main.command("residual-select")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prepared", default=None, help="the prepared folder (default: the run's own)")
def residual_select(run_dir: str, prepared: str | None) -> None:
    """Choose a residual run's best snapshot by the shipping rule on its validation slides: no
    worse than the colour stage on PSNR, SSIM and CIEDE2000, then the lowest SWD."""
    from training.train_residual import select_best

    select_best(Path(run_dir), Path(prepared) if prepared else None)


@main.command("fit-colour")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option(
    "--slide",
    default="he/skin-wsi/molluscum-contagiosum",
    show_default=True,
    help="folder of one real skin H&E slide's crops, relative to DATA_ROOT",
)
@click.option("--out", "card_path", default="models/colour.json", show_default=True)
def fit_colour(data_root: str, slide: str, card_path: str) -> None:
    """Fit the colour stage's target look (models/colour.json) on one real skin H&E slide."""
    from training.colour_fit import fit_colour_card, write_colour_card

    card = fit_colour_card(Path(data_root), slide)
    write_colour_card(card, Path(card_path))
    click.echo(f"wrote {card_path}: Lab mean {card['lab_mean']}, std {card['lab_std']}")


@main.command()
@click.argument("role", type=click.Choice(["despeckle", "generator"]))
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "onnx_path", default=None, help="default: models/<role>.onnx")
@click.option("--name", default=None, help="card name (default: role and size)")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--notes", default="", help="free text for the card (e.g. training caveats)")
@click.option(
    "--off-by-default",
    is_flag=True,
    help='card says "default": false: installed, but it runs only when --stages names it',
)
@click.option(
    "--median-after/--no-median-after",
    default=False,
    show_default=True,
    help="despeckle: keep the 3x3 median after it in the default chain (measured worse with "
    "the shipped despeckler, docs/models.md)",
)
def export(
    role: str,
    checkpoint_dir: str,
    onnx_path: str | None,
    name: str | None,
    which: str,
    notes: str,
    off_by_default: bool,
    median_after: bool,
) -> None:
    """Export a checkpoint to ONNX (checked against torch) + its model card."""
    from training.cards import despeckle_card_info, generator_card_info
    from training.export import export_model

    folder = Path(checkpoint_dir)
    out = Path(onnx_path or f"models/{role}.onnx")
    if role == "despeckle":
        from training.train_despeckle import load_despeckler_checkpoint

        model = load_despeckler_checkpoint(folder)
        info = despeckle_card_info(folder, name or f"despeckle-w{model.width}-d{model.depth}")
    else:
        from training.train_cyclegan import load_generator

        generator, details = load_generator(folder, which)
        model = generator  # type: ignore[assignment]
        info = generator_card_info(
            folder, details, name or f"generator-ngf{generator.ngf}-b{generator.n_blocks}"
        )
    info.notes = notes
    info.default = not off_by_default
    info.median_after = median_after or role != "despeckle"
    card = export_model(model, out, info)
    click.echo(f"wrote {out} ({card['parameters']} parameters, halo {card['halo_px']} px)")


@main.command("import-reference")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "onnx_path", default="models/generator.onnx", show_default=True)
@click.option("--name", default="")
@click.option("--licence", default="as the checkpoint's", show_default=True)
def import_reference_command(checkpoint: str, onnx_path: str, name: str, licence: str) -> None:
    """Convert a reference CycleGAN ``*_net_G_A.pth`` into ONNX + card."""
    from training.import_reference import import_reference

    card = import_reference(Path(checkpoint), Path(onnx_path), name, licence)
    click.echo(f"wrote {onnx_path} ({card['architecture']}, {card['parameters']} parameters)")


@main.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option("--models", "models_dir", default="models", show_default=True)
@click.option("--json", "json_path", default=None, help="also write the numbers here")
@click.option(
    "--median/--no-median",
    default=None,
    help="the 3x3 median after the despeckler in every method's chain (default: as the "
    "models' cards decide the default chain)",
)
def texture(
    data_root: str, prepared: str, models_dir: str, json_path: str | None, median: bool | None
) -> None:
    """SWD and C2ST alone (the texture part of evaluate): prints the table."""
    from training.evaluate import load_methods, median_in_default_chain
    from training.report import texture_markdown
    from training.texture_eval import evaluate_texture

    methods = load_methods(Path(models_dir))
    if median is None:
        median = median_in_default_chain(Path(models_dir))
    result = evaluate_texture(Path(data_root), Path(prepared), methods, median=median)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    click.echo("\n".join(texture_markdown(result)))


@main.command("compare-despecklers")
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="NAME=PATH of an exported despeckler (.onnx with its card); repeat",
)
@click.option("--bm3d-every", default=3, show_default=True, help="BM3D on every n-th patch")
@click.option("--json", "json_path", default=None, help="also write the numbers here")
def compare_despecklers_command(
    prepared: str, models: tuple[str, ...], bm3d_every: int, json_path: str | None
) -> None:
    """Despecklers side by side with the fixed filters and BM3D (the despeckling protocol)."""
    from training.evaluate import compare_despecklers, despeckler_table

    named = dict(item.split("=", 1) for item in models)
    compared = compare_despecklers(
        Path(prepared), {k: Path(v) for k, v in named.items()}, bm3d_every
    )
    if json_path:
        Path(json_path).write_text(json.dumps(compared, indent=1))
    click.echo(despeckler_table(compared))


@main.command()
@click.argument("data_root", type=click.Path(exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option("--prepared", default=DEFAULT_PREPARED, show_default=True)
@click.option("--models", "models_dir", default="models", show_default=True)
@click.option("--figures", "figures_dir", default="docs/figures", show_default=True)
@click.option("--doc", "doc_path", default="docs/models.md", show_default=True)
@click.option("--json", "json_path", default="docs/figures/results.json", show_default=True)
@click.option("--preface", default="", help="text placed above the tables")
@click.option("--update-cards/--no-update-cards", default=True, show_default=True)
@click.option(
    "--texture/--no-texture",
    default=True,
    show_default=True,
    help="SWD and C2ST (trains one small critic per method and per real slide: minutes)",
)
def evaluate(
    data_root: str,
    prepared: str,
    models_dir: str,
    figures_dir: str,
    doc_path: str,
    json_path: str,
    preface: str,
    update_cards: bool,
    texture: bool,
) -> None:
    """Despeckling, staining and texture evaluations; results into docs/models.md and the
    cards."""
    from training.evaluate import evaluate_all
    from training.export import update_card
    from training.report import results_markdown, write_results

    results = evaluate_all(
        Path(data_root), Path(prepared), Path(models_dir), Path(figures_dir), texture
    )
    command = "dscm-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_results(
        Path(doc_path), Path(json_path), results, results_markdown(results, command, preface)
    )
    if update_cards:
        models = Path(models_dir)
        if (models / "despeckle.json").is_file():
            update_card(models / "despeckle.json", metrics={"held_out": results["despeckle"]})
        stain = {
            "held_out_skin_median": results["stain_skin"]["median"],
            "held_out_tcga_median": results["stain_test_slides"]["median"],
            "real_crop": results.get("stain_real_crop"),
        }
        for card in ("generator.json", "colour.json"):
            if (models / card).is_file():
                update_card(models / card, metrics=stain)
    click.echo(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
