"""Both trainers run a few steps on tiny data, write their logs, and resume exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from training.common import load_checkpoint
from training.train_cyclegan import BEST_NAME, CycleGanOptions, load_generator, train_cyclegan
from training.train_despeckle import DespeckleOptions, load_despeckler_checkpoint, train_despeckle


def despeckle_options(prepared: Path, out: Path, steps: int) -> DespeckleOptions:
    return DespeckleOptions(
        prepared_dir=str(prepared), out_dir=str(out), width=4, depth=2, steps=steps,
        batch_size=2, crop_px=32, checkpoint_every=2, val_crop_px=32, threads=1,
    )  # fmt: skip


def logged_steps(csv_path: Path) -> list[int]:
    with csv_path.open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_despeckle_trains_and_resumes_identically(prepared_dir: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_despeckle(despeckle_options(prepared_dir, straight, 6))
    train_despeckle(despeckle_options(prepared_dir, resumed, 4))
    assert load_checkpoint(resumed)["step"] == 4  # type: ignore[index]
    train_despeckle(despeckle_options(prepared_dir, resumed, 6))
    for name, value in load_checkpoint(straight)["model"].items():  # type: ignore[index]
        torch.testing.assert_close(value, load_checkpoint(resumed)["model"][name])  # type: ignore[index]
    assert logged_steps(resumed / "losses.csv") == [1, 2, 3, 4, 5, 6]
    assert (resumed / "losses.png").is_file()
    assert json.loads((resumed / "options.json").read_text())["steps"] == 6
    assert load_despeckler_checkpoint(resumed).width == 4


def cyclegan_options(prepared: Path, out: Path, steps: list[int]) -> CycleGanOptions:
    return CycleGanOptions(
        prepared_dir=str(prepared), out_dir=str(out), ngf=4, n_blocks=1, ndf=4,
        stage_crops_px=[32, 48], stage_steps=steps, pool_size=3, checkpoint_every=2,
        threads=1, max_val_images=2,
    )  # fmt: skip


def test_cyclegan_trains_and_resumes(prepared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cyclegan"
    train_cyclegan(cyclegan_options(prepared_dir, out, [2, 2]))
    state = load_checkpoint(out)
    assert state is not None and state["step"] == 4
    assert state["sched_G"]["last_epoch"] == 4
    train_cyclegan(cyclegan_options(prepared_dir, out, [2, 4]))
    assert logged_steps(out / "losses.csv") == [1, 2, 3, 4, 5, 6]
    with (out / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1]["val_psnr_db"] and rows[-1]["val_ciede2000"]
    assert (out / BEST_NAME).is_file() and (out / "losses.png").is_file()
    generator, info = load_generator(out, "best")
    assert generator.ngf == 4 and "val_psnr_db" in info


def test_skin_cyclegan_trains_paired_with_the_colour_stage(
    prepared_dir: Path, fake_data_root: Path, tmp_path: Path
) -> None:
    from training.colour_fit import fit_colour_card, write_colour_card

    card = tmp_path / "colour.json"
    write_colour_card(fit_colour_card(fake_data_root, "he/skin-wsi/molluscum-contagiosum"), card)
    out = tmp_path / "skin"
    options = cyclegan_options(prepared_dir, out, [2, 1])
    options.domain, options.colour_card, options.lambda_paired = "skin", str(card), 10.0
    options.upsample = "resize"
    train_cyclegan(options)
    with (out / "losses.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["paired"]) > 0 for r in rows] == [True] * 3  # the paired term is trained
    generator, _ = load_generator(out, "last")
    assert generator.upsample == "resize"


def test_nuclear_infidelity_matches_the_measure_and_ignores_recolouring() -> None:
    import numpy as np
    import torch

    from service.core.quality import haematoxylin_od
    from training.train_cyclegan import haematoxylin, nuclear_infidelity

    image = torch.rand(1, 3, 32, 32) * 1.6 - 0.8
    unit = ((image[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float64)
    unclipped = np.maximum(haematoxylin(image)[0].numpy(), 0)  # the measure clips at 0
    assert np.allclose(unclipped, haematoxylin_od(unit), atol=1e-4)
    assert float(nuclear_infidelity(image, image)) < 1e-4
    darker = (image - 0.2).clamp(-1, 1)  # a global recolouring keeps the nuclei where they were
    assert float(nuclear_infidelity(darker, image)) < 0.1
    shuffled = image.flatten(2)[:, :, torch.randperm(32 * 32)].view_as(image)
    assert float(nuclear_infidelity(shuffled, image)) > 0.8
