"""Evaluation pieces: baselines help, metrics are sane, the results section is replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from train_fakes import he_like

from service.core.colour import ColourTarget, LabStats
from training.evaluate import evaluate_despeckle, lee_filter
from training.report import END, START, write_results
from training.speckle import add_speckle, clean_reflectance
from training.stain_eval import COLOUR, GAREAU, StainMethods, evaluate_skin


def test_lee_filter_beats_noise() -> None:
    cleans = [clean_reflectance(he_like(96, 96, seed)) for seed in range(2)]
    scores = evaluate_despeckle(cleans, despeckler=None, with_bm3d=False)
    assert scores["Lee 7x7"]["psnr_db"] > scores["noisy"]["psnr_db"]


def test_lee_filter_keeps_a_flat_field_flat() -> None:
    flat = np.full((64, 64), 0.5, np.float32)
    noisy = add_speckle(flat, np.random.default_rng(0))
    assert lee_filter(noisy).std() < 0.5 * noisy.std()


def test_staining_measures_gareau_and_the_colour_transfer() -> None:
    look = ColourTarget("look", "1", LabStats((70.0, 27.0, -8.0), (11.0, 9.0, 3.5)))
    images = [he_like(96, 96, seed) for seed in (1, 2)]
    fits = {"slide": (np.asarray([70.0, 27.0, -8.0]), np.diag([121.0, 81.0, 12.0]))}
    result = evaluate_skin(images, ["a", "a"], StainMethods(None, look, None), fits)
    assert set(result["median"]) == {GAREAU, COLOUR}
    for summary in result["median"].values():
        assert summary["images"] == 2
        assert 0 < summary["ciede2000"] < 100 and summary["fd_skin"] >= 0
    # the transfer aims at the look that the reference fit describes
    assert result["median"][COLOUR]["fd_skin"] < result["median"][GAREAU]["fd_skin"]


def test_results_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    doc = tmp_path / "models.md"
    doc.write_text("# Models\n\ncontract\n")
    for text in ("first", "second"):
        write_results(doc, tmp_path / "r.json", {}, f"{START}\n{text}\n{END}\n")
    content = doc.read_text()
    assert content.count(START) == 1 and "second" in content and "contract" in content


def test_texture_evaluation_scores_methods_and_real_slides(
    fake_data_root: Path, prepared_dir: Path
) -> None:
    from training.c2st import CriticOptions
    from training.report import texture_markdown
    from training.texture_eval import evaluate_texture

    look = ColourTarget("look", "1", LabStats((70.0, 27.0, -8.0), (11.0, 9.0, 3.5)))
    fast = CriticOptions(patch_px=24, train_patches=64, test_patches=64, steps=5, batch_size=16)
    result = evaluate_texture(fake_data_root, prepared_dir, StainMethods(None, look, None), fast)
    assert set(result["methods"]) == {GAREAU, COLOUR}
    assert set(result["real_slides"]) == {"keloid-scar", "molluscum-contagiosum", "morphea"}
    assert result["held_out_slides"] == ["morphea"]
    for row in result["methods"].values():
        assert row["held_out"]["nearest_slide"] in result["reference_slides"]
        assert row["held_out"]["swd"] > 0 and 0 <= row["c2st"]["auc"] <= 1
    assert result["real_slides"]["morphea"]["swd"]["nearest_slide"] != "morphea"
    table = "\n".join(texture_markdown(result))
    assert "real slide morphea" in table and "C2ST AUC" in table
