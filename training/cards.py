"""Provenance for model cards: what data a checkpoint was trained on, split how, licensed how."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from training.common import LOSS_CSV_NAME, OPTIONS_NAME, load_checkpoint
from training.data import load_manifest, split_summary
from training.export import CardInfo

DATA_LICENCE = (
    "weights trained on MoNuSeg 2018 (CC BY-NC-SA 4.0) and TCGA glioma tiles "
    "(pengyzhang/cell_seg_matlab, no licence stated): research use; skin image (public domain) "
    "held out"
)


def _options(checkpoint_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((checkpoint_dir / OPTIONS_NAME).read_text())
    return data


def _last_values(checkpoint_dir: Path, columns: list[str]) -> dict[str, float]:
    """The last logged value of each column (validation numbers are logged at checkpoints)."""
    found: dict[str, float] = {}
    path = checkpoint_dir / LOSS_CSV_NAME
    if not path.is_file():
        return found
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for column in columns:
                if row.get(column):
                    found[column] = float(row[column])
    return found


def _checkpoint(checkpoint_dir: Path) -> dict[str, Any]:
    state = load_checkpoint(checkpoint_dir)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    return state


def _checkpoint_step(checkpoint_dir: Path) -> int:
    return int(_checkpoint(checkpoint_dir)["step"])


def _elapsed_s(checkpoint_dir: Path) -> float:
    """Training wall time summed over resumed runs (0 where a checkpoint predates it)."""
    return float(_checkpoint(checkpoint_dir).get("elapsed_s", 0.0))


def _data_section(options: dict[str, Any], used_splits: list[str]) -> tuple[dict[str, Any], ...]:
    manifest = load_manifest(Path(options["prepared_dir"]))
    training_data = {
        "sources": manifest["licences"],
        "prepared_fingerprint": manifest["fingerprint"],
        "mpp_um": manifest["um_per_px"],  # the prepared patches' (the manifest's own name)
        "used_splits": used_splits,
        "split_rule": manifest["split_rule"],
    }
    splits = {"counts": split_summary(manifest), "cases": manifest["splits"]}
    return training_data, splits


def _card_info(
    name: str, training_data: dict[str, Any], splits: dict[str, Any], validation: dict[str, float]
) -> CardInfo:
    """What every card of ours says: its data, splits and validation numbers, under the data's
    licence."""
    return CardInfo(
        name=name,
        training_data=training_data,
        splits=splits,
        metrics={"validation": validation},
        licence=DATA_LICENCE,
    )


def despeckle_card_info(checkpoint_dir: Path, name: str = "despeckle") -> CardInfo:
    options = _options(checkpoint_dir)
    training_data, splits = _data_section(options, ["train_a", "train_b"])
    training_data.update(
        {
            "recipe": "inverted Y of YUV, normalised like a slide; speckle Gauss(1, "
            f"{options['speckle_std']}); random flips, {options['crop_px']} px crops",
            "steps": _checkpoint_step(checkpoint_dir),
            "steps_planned": options["steps"],
            "batch_size": options["batch_size"],
            "optimiser": f"Adam lr {options['lr']}, MSE",
        }
    )
    metrics = _last_values(
        checkpoint_dir, ["val_psnr_noisy", "val_psnr_net", "val_psnr_net_median"]
    )
    return _card_info(name, training_data, splits, metrics)


def generator_card_info(
    checkpoint_dir: Path, generator_info: dict[str, Any], name: str = "generator"
) -> CardInfo:
    options = _options(checkpoint_dir)
    if options.get("design") == "residual":
        return residual_card_info(checkpoint_dir, generator_info, name)
    colour_card = options.get("colour_card", "")
    colour = f", then the colour stage ({colour_card})" if colour_card else ""
    if options.get("domain", "tcga") == "skin":
        used = ["train_skin (domains A and B, paired)", "val_skin (checkpoint selection)"]
        domain_a = (
            "Gareau stain of synthetic confocal (training/synthetic.py) of train_skin, through "
            f"the exported despeckler and 3x3 median{colour}"
        )
        domain_b = "real skin H&E of train_skin, moved to the colour card's look (glass kept)"
    else:
        used = ["train_a (domain A)", "train_b (domain B)"]
        domain_a = (
            "Gareau stain of synthetic confocal (training/synthetic.py) of train_a, "
            f"through the exported despeckler and 3x3 median{colour}"
        )
        domain_b = "real H&E of train_b (cases disjoint from train_a)"
    training_data, splits = _data_section(options, used)
    paired = float(options.get("lambda_paired", 0.0))
    faithful = float(options.get("lambda_faithful", 0.0))
    training_data.update(
        {
            "domain_a": domain_a,
            "domain_b": domain_b,
            "despeckler": options.get("despeckle_onnx", ""),
            "colour_card": colour_card,
            "recipe": "CycleGAN: LSGAN, cycle L1 lambda 10, identity 0.5 lambda, pool 50, "
            "Adam 2e-4 beta1 0.5, linear decay in the second stage"
            + (f"; paired L1 lambda {paired:g} (synthetic pairs)" if paired else "")
            + (f"; nuclear faithfulness lambda {faithful:g}" if faithful else ""),
            "upsampling": options.get("upsample", "transpose"),
            "precision": "bf16 autocast" if options.get("bf16") else "fp32",
            "stage_crops_px": options["stage_crops_px"],
            "stage_steps": options["stage_steps"],
            "batch_size": options["batch_size"],
            "discriminator_ndf": options["ndf"],
            "wall_time_min": round(_elapsed_s(checkpoint_dir) / 60, 1),
            "checkpoint": {k: v for k, v in generator_info.items() if k != "options"},
        }
    )
    validation = {k: v for k, v in generator_info.items() if k.startswith("val_")}
    return _card_info(name, training_data, splits, validation)


def residual_card_info(
    checkpoint_dir: Path, generator_info: dict[str, Any], name: str = "generator"
) -> CardInfo:
    """Provenance of a residual generator run (``training/train_residual.py``)."""
    options = _options(checkpoint_dir)
    used = ["train_skin (input and paired target; adversarial real H&E)", "val_skin (selection)"]
    training_data, splits = _data_section(options, used)
    training_data.update(
        {
            "input": "the colour stage's output for synthetic confocal (training/synthetic.py) "
            "of train_skin: the exported despeckler, "
            + ("3x3 median, " if options.get("median", True) else "")
            + "Gareau, the colour stage "
            f"({options.get('colour_card', '')}), statistics pooled per slide",
            "target": "the true H&E of the same crop, moved to the colour card's look",
            "despeckler": options.get("despeckle_onnx", ""),
            "colour_card": options.get("colour_card", ""),
            "recipe": "residual correction, identity at the start: paired L1 lambda "
            f"{options['lambda_paired']:g}, LSGAN against real skin H&E of train_skin lambda "
            f"{options['lambda_adv']:g} (PatchGAN ndf {options['ndf']}), nuclear faithfulness "
            f"lambda {options['lambda_faithful']:g}; Adam {options['lr']:g} beta1 "
            f"{options['beta1']:g}, linear decay over the second half",
            "glass_gate": "the correction x a tissue weight of the input: 0 where the colour "
            "stage left glass (training/networks.py glass_gate)"
            if options.get("glass_gate")
            else "none",
            "precision": "bf16 autocast" if options.get("bf16") else "fp32",
            "device": options.get("device", "cpu"),
            "crop_px": options["crop_px"],
            "batch_size": options["batch_size"],
            "time_budget_s": options.get("time_budget_s", 0),
            "wall_time_min": round(_elapsed_s(checkpoint_dir) / 60, 1),
            "checkpoint": {k: v for k, v in generator_info.items() if k != "options"},
        }
    )
    validation = {k: v for k, v in generator_info.items() if k.startswith("val_")}
    return _card_info(name, training_data, splits, validation)
