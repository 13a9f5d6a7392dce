"""ONNX export: the engine equals torch (on this process's backend and in bf16, each at its own
tolerance: support.inference), the card is complete and the engine loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.inference import assert_matches_at_precision, models_under_test

from service.core.cards import card_problems
from service.core.models import file_sha256
from training import export as export_module
from training.export import CardInfo, ExportMismatch, export_model
from training.networks import Despeckler, ResnetGenerator, init_weights

CARD_FIELDS = {
    "name", "version", "role", "architecture", "sha256", "input", "output", "halo_px",
    "size_multiple_px", "norm", "parameters", "training_data", "splits", "metrics", "licence",
    "created",
}  # fmt: skip


def trained_like_despeckler() -> Despeckler:
    torch.manual_seed(0)
    model = Despeckler(width=8, depth=3)
    init_weights(model, gain=0.2)  # not the identity start, so the comparison means something
    return model


def test_despeckler_export_round_trip(tmp_path: Path) -> None:
    model = trained_like_despeckler()
    card = export_model(model, tmp_path / "despeckle.onnx", CardInfo(name="tiny-despeckle"))
    assert set(card) >= CARD_FIELDS and card_problems(card) == []
    assert card["role"] == "despeckle" and card["halo_px"] == 4 and card["norm"] == "none"
    assert card["sha256"] == file_sha256(tmp_path / "despeckle.onnx")
    image = np.random.default_rng(0).random((1, 1, 37, 53), dtype=np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(image)).clamp(0, 1).numpy()
    for engine in models_under_test(tmp_path / "despeckle.onnx"):
        out, stats = engine.run(image)
        assert stats is None
        assert_matches_at_precision(out, expected, engine.precision)


def test_generator_export_shared_contract(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=4, n_blocks=2)
    init_weights(generator, gain=0.2)
    card = export_model(generator, tmp_path / "generator.onnx", CardInfo(name="tiny-gen"))
    assert card["norm"] == "instance_shared" and card["size_multiple_px"] == 4
    assert card_problems(card) == []  # the published model-card schema
    assert card["halo_px"] == 28  # radius 28 of ngf 4 x 2 blocks, already a multiple of 4
    assert card["norm_stats_size"] == 2 * sum(card["norm_stats_layers"])
    saved = json.loads((tmp_path / "generator.json").read_text())
    assert saved["sha256"] == card["sha256"]
    rgb = np.random.default_rng(1).random((2, 3, 64, 48), dtype=np.float32)
    with torch.no_grad():
        expected = (generator.eval()(torch.from_numpy(rgb * 2 - 1)).numpy() + 1) / 2
    for engine in models_under_test(tmp_path / "generator.onnx"):
        out, stats = engine.run(rgb, norm_stats=None)
        assert out.shape == rgb.shape and stats is not None
        assert stats.shape == (2, card["norm_stats_size"])
        assert_matches_at_precision(out, expected, engine.precision)


def test_mismatch_is_refused_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "check_against_torch", lambda *args, **kw: 0.5)
    with pytest.raises(ExportMismatch):
        export_model(trained_like_despeckler(), tmp_path / "d.onnx", CardInfo(name="x"))
    assert list(tmp_path.iterdir()) == []
