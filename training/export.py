"""ONNX export with a check against torch, and the model card beside it (docs/models.md).

The ONNX file is written to a temporary name, run in onnxruntime on a random input and compared
with torch; only a model that matches (max abs difference <= 1e-4) is renamed into place, its
card written and then loaded back through ``service.core.models.OnnxModel``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.core.chain import round_up
from service.core.models import OnnxModel, file_sha256
from training.networks import (
    Despeckler,
    SharedNormGenerator,
    SharedStatsExport,
    count_parameters,
    receptive_radius_px,
)

OPSET = 17
TOLERANCE = 1e-4
GENERATOR_SIZE_MULTIPLE_PX = 4


class ExportMismatch(RuntimeError):
    """onnxruntime and torch disagree on the exported model."""


@dataclass
class CardInfo:
    """Provenance that the network itself does not know."""

    name: str
    version: str = "1.0.0"
    training_data: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    notes: str = ""
    default: bool = True  # False: installed but out of the default chain (one --stages away)
    # despeckle only: False keeps the 3x3 median out of the default chain after this model
    median_after: bool = True


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _export_despeckler(model: Despeckler, path: Path) -> None:
    dummy = torch.rand(1, 1, 64, 64)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["image"],
        output_names=["output"],
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}},
    )


def _export_generator(model: SharedNormGenerator, path: Path) -> None:
    wrapper = SharedStatsExport(model).eval()
    dummy = (torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, model.norm_stats_size), torch.ones(1))
    torch.onnx.export(
        wrapper,
        dummy,
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["image", "norm_stats", "norm_mix"],
        output_names=["output", "tile_stats"],
        dynamic_axes={
            "image": {0: "N", 2: "H", 3: "W"},
            "norm_stats": {0: "N"},
            "output": {0: "N", 2: "H", 3: "W"},
            "tile_stats": {0: "N"},
        },
    )


def check_against_torch(model: nn.Module, onnx_path: Path, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and torch on a random input (two sizes, N=2)."""
    generator = torch.Generator().manual_seed(seed)
    session = _session(onnx_path)
    worst = 0.0
    for height, width in ((96, 128), (132, 100)):
        with torch.no_grad():
            if isinstance(model, SharedNormGenerator):
                image = torch.rand(2, 3, height, width, generator=generator) * 2 - 1
                _, own = model.forward_shared(
                    image, torch.zeros(2, model.norm_stats_size), torch.zeros(1)
                )
                for mix in (0.0, 1.0, 0.5):
                    mix_t = torch.full((1,), mix)
                    expected = model.forward_shared(image, own.flip(0), mix_t)
                    got = session.run(
                        None,
                        {
                            "image": image.numpy(),
                            "norm_stats": own.flip(0).numpy(),
                            "norm_mix": mix_t.numpy(),
                        },
                    )
                    for want, have in zip(expected, got, strict=True):
                        worst = max(worst, float(np.abs(want.numpy() - have).max()))
            else:
                image = torch.rand(2, 1, height, width, generator=generator)
                expected_one = model(image).numpy()
                got_one = session.run(None, {"image": image.numpy()})[0]
                worst = max(worst, float(np.abs(expected_one - got_one).max()))
    return worst


def halo_of(model: nn.Module) -> int:
    if isinstance(model, SharedNormGenerator):
        return round_up(receptive_radius_px(model, 3, 257), model.size_multiple_px)
    return receptive_radius_px(model, 1, 65)


def build_card(model: nn.Module, onnx_path: Path, info: CardInfo) -> dict[str, Any]:
    """Every field of docs/models.md for an exported despeckler or generator."""
    if isinstance(model, SharedNormGenerator):
        role, channels, value_range = "generator", 3, [-1.0, 1.0]
        extra: dict[str, Any] = {
            "size_multiple_px": model.size_multiple_px,
            "norm": "instance_shared",
            "norm_stats_size": model.norm_stats_size,
            "norm_stats_layers": list(model.norm_stats_layers),
        }
        architecture = model.architecture
    elif isinstance(model, Despeckler):
        role, channels, value_range = "despeckle", 1, [0.0, 1.0]
        extra = {"size_multiple_px": 1, "norm": "none"}
        architecture = model.architecture
    else:
        raise TypeError(f"cannot export a {type(model).__name__}")
    card: dict[str, Any] = {
        "name": info.name,
        "version": info.version,
        "role": role,
        "architecture": architecture,
        "sha256": file_sha256(onnx_path),
        "input": {"name": "image", "channels": channels, "range": value_range},
        "output": {"name": "output", "channels": channels, "range": value_range},
        "halo_px": halo_of(model),
        **extra,
        "parameters": count_parameters(model),
        "opset": OPSET,
        "training_data": info.training_data,
        "splits": info.splits,
        "metrics": info.metrics,
        "licence": info.licence,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    if info.notes:
        card["notes"] = info.notes
    if not info.default:
        card["default"] = False
    if not info.median_after:
        card["median_after"] = False
    return card


def export_model(model: nn.Module, onnx_path: Path, info: CardInfo) -> dict[str, Any]:
    """Export ``model`` to ``onnx_path`` + card; raises ExportMismatch before writing anything
    if onnxruntime disagrees with torch."""
    model = model.eval().float()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = onnx_path.with_name(f".{onnx_path.stem}.tmp.onnx")
    try:
        if isinstance(model, SharedNormGenerator):
            _export_generator(model, tmp_path)
        elif isinstance(model, Despeckler):
            _export_despeckler(model, tmp_path)
        else:
            raise TypeError(f"cannot export a {type(model).__name__}")
        mismatch = check_against_torch(model, tmp_path)
        if not mismatch <= TOLERANCE:
            raise ExportMismatch(
                f"onnxruntime differs from torch by {mismatch:.3g} (> {TOLERANCE}); not saved"
            )
        os.replace(tmp_path, onnx_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    card = build_card(model, onnx_path, info)
    card["metrics"] = {**card["metrics"], "export_max_abs_diff": mismatch}
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    OnnxModel(onnx_path, threads=1)  # the engine's loader must accept what we ship
    return card


def update_card(card_path: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields (e.g. measured metrics) into an existing card; sha256 stays the file's."""
    card: dict[str, Any] = json.loads(card_path.read_text())
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card
