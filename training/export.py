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

from service.core.models import OnnxModel, file_sha256
from training.networks import StageNetwork, count_parameters

OPSET = 17
TOLERANCE = 1e-4


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


def stage_network(model: nn.Module) -> StageNetwork:
    """``model`` as a network a stage runs; TypeError for one that is not (a discriminator)."""
    if not isinstance(model, StageNetwork):
        raise TypeError(f"cannot export a {type(model).__name__}")
    return model


def _export_onnx(model: StageNetwork, path: Path) -> None:
    """Trace the network's ONNX interface (its ``onnx_inputs`` and ``onnx_outputs``)."""
    axes = {**model.onnx_inputs, **model.onnx_outputs}
    torch.onnx.export(
        model.onnx_module(),
        model.onnx_example(),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=list(model.onnx_inputs),
        output_names=list(model.onnx_outputs),
        dynamic_axes={name: dims for name, dims in axes.items() if dims},
    )


def check_against_torch(model: nn.Module, onnx_path: Path, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and torch on random inputs (two sizes, N=2), on
    every output the network's ``export_checks`` compare."""
    network = stage_network(model)
    generator = torch.Generator().manual_seed(seed)
    session = _session(onnx_path)
    worst = 0.0
    for height, width in ((96, 128), (132, 100)):
        with torch.no_grad():
            for feeds, expected in network.export_checks(generator, height, width):
                got = session.run(None, {name: value.numpy() for name, value in feeds.items()})
                for want, have in zip(expected, got, strict=True):
                    worst = max(worst, float(np.abs(want.numpy() - have).max()))
    return worst


def build_card(model: nn.Module, onnx_path: Path, info: CardInfo) -> dict[str, Any]:
    """Every field of docs/models.md for an exported network: its interface from the network
    itself (StageNetwork), its provenance from ``info``."""
    network = stage_network(model)
    low, high = network.value_range
    tensor = {"channels": network.channels, "range": [low, high]}
    card: dict[str, Any] = {
        "name": info.name,
        "version": info.version,
        "role": network.role,
        "architecture": network.architecture,
        "sha256": file_sha256(onnx_path),
        "input": {"name": "image", **tensor},
        "output": {"name": "output", **tensor},
        "halo_px": network.card_halo_px(),
        **network.card_fields(),
        "parameters": count_parameters(network),
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
        _export_onnx(stage_network(model), tmp_path)
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
