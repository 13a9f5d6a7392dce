"""Evaluation pieces: baselines help, metrics are sane, the results section is replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from train_fakes import he_like

from training.evaluate import evaluate_despeckle, evaluate_staining, lee_filter
from training.report import END, START, write_results
from training.speckle import add_speckle, clean_reflectance


def test_lee_filter_beats_noise() -> None:
    cleans = [clean_reflectance(he_like(96, 96, seed)) for seed in range(2)]
    scores = evaluate_despeckle(cleans, despeckler=None, with_bm3d=False)
    assert scores["Lee 7x7"]["psnr_db"] > scores["noisy"]["psnr_db"]


def test_lee_filter_keeps_a_flat_field_flat() -> None:
    flat = np.full((64, 64), 0.5, np.float32)
    noisy = add_speckle(flat, np.random.default_rng(0))
    assert lee_filter(noisy).std() < 0.5 * noisy.std()


def test_staining_metrics_without_models() -> None:
    scores = evaluate_staining([he_like(64, 64, 1)], despeckler=None, generator=None)
    assert set(scores) == {"Gareau"}
    assert 0 < scores["Gareau"]["ciede2000"] < 100


def test_results_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    doc = tmp_path / "models.md"
    doc.write_text("# Models\n\ncontract\n")
    for text in ("first", "second"):
        write_results(doc, tmp_path / "r.json", {}, f"{START}\n{text}\n{END}\n")
    content = doc.read_text()
    assert content.count(START) == 1 and "second" in content and "contract" in content
