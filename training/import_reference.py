"""Import a generator trained with the reference CycleGAN code (``*_net_G_A.pth``).

The reference saves ``ResnetGenerator.state_dict()`` (through DataParallel: a ``module.``
prefix) and older PyTorch versions stored instance-norm ``running_mean``/``running_var``
buffers; both are removed, the sizes (ngf, n_blocks) are read from the weights, and the result
is exported like our own generators (ONNX + card).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from training.export import CardInfo, export_model
from training.networks import ResnetGenerator

_BLOCK_KEY = re.compile(r"^model\.(\d+)\.conv_block\.")
_DROPPED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def clean_state_dict(raw: dict[str, Any]) -> OrderedDict[str, torch.Tensor]:
    """Strip ``module.``, drop normalisation buffers and metadata."""
    cleaned: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in raw.items():
        name = key.removeprefix("module.")
        if name.endswith(_DROPPED_SUFFIXES) or not isinstance(value, torch.Tensor):
            continue
        cleaned[name] = value
    return cleaned


def infer_size(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(ngf, n_blocks) of a reference generator state_dict."""
    if "model.1.weight" not in state:
        raise ValueError("not a ResnetGenerator state_dict: no model.1.weight")
    ngf = int(state["model.1.weight"].shape[0])
    blocks = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))}
    if not blocks:
        raise ValueError("not a ResnetGenerator state_dict: no residual blocks")
    return ngf, len(blocks)


def load_reference_generator(path: Path) -> ResnetGenerator:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    state = clean_state_dict(raw)
    ngf, n_blocks = infer_size(state)
    generator = ResnetGenerator(ngf=ngf, n_blocks=n_blocks)
    generator.load_state_dict(state, strict=True)
    return generator.eval()


def import_reference(
    checkpoint: Path, onnx_path: Path, name: str = "", licence: str = "as the checkpoint's"
) -> dict[str, Any]:
    """Convert a reference ``*_net_G_A.pth`` into ``onnx_path`` + its card."""
    generator = load_reference_generator(checkpoint)
    info = CardInfo(
        name=name or checkpoint.stem,
        training_data={"imported_from": checkpoint.name, "code": "junyanz/pytorch-CycleGAN"},
        licence=licence,
        notes="imported reference-CycleGAN generator; metrics not measured here",
    )
    return export_model(generator, onnx_path, info)
