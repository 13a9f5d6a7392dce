"""Model cards and the model wrapper that runs them on an inference backend.

Every model is ``<dir>/<name>.onnx`` beside ``<dir>/<name>.json`` (its card). The card says what
the engine needs to run the model correctly (role, channels, value range, halo, size multiple,
normalisation contract) and what a reader needs to trust it (version, sha256, training data,
metrics, licence). See docs/models.md for the contract.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.backend_probe import settle_backend
from service.core.backends import Backend, backend_from_env, open_runner
from service.core.cards import read_card_json
from service.core.colour import COLOUR_ROLE, find_colour_card
from service.core.stages import NETWORK_ROLES, STAGE_TABLE
from service.vocabulary.errors import ModelError
from service.vocabulary.report import ModelSummary

NORM_NONE = "none"
NORM_SHARED = "instance_shared"


@dataclass(frozen=True)
class ModelCard:
    """What a model file promises; loaded from its JSON card."""

    name: str
    role: str  # a network stage (service.core.stages.NETWORK_ROLES)
    architecture: str
    version: str
    sha256: str
    in_channels: int
    out_channels: int
    value_range: tuple[float, float]
    halo_px: int
    size_multiple_px: int = 1
    norm: str = NORM_NONE
    norm_stats_size: int = 0
    norm_stats_layers: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """A card that follows the schema (service.core.cards): what the schema cannot say,
        the ONNX role, a rising input range and norm layers that add up, is checked here."""
        try:
            role = data["role"]
            if role not in NETWORK_ROLES:
                raise ModelError(f"unknown model role {role!r}; expected one of {NETWORK_ROLES}")
            value_range = tuple(float(v) for v in data["input"]["range"])
            if value_range[0] >= value_range[1]:
                raise ModelError(f"bad input range {value_range}")
            norm = str(data.get("norm", NORM_NONE))
            layers = tuple(int(c) for c in data.get("norm_stats_layers", ()))
            known = {
                "name", "role", "architecture", "version", "sha256", "input", "output",
                "halo_px", "size_multiple_px", "norm", "norm_stats_size", "norm_stats_layers",
            }  # fmt: skip
            card = cls(
                name=str(data["name"]),
                role=role,
                architecture=str(data["architecture"]),
                version=str(data["version"]),
                sha256=str(data["sha256"]),
                in_channels=int(data["input"]["channels"]),
                out_channels=int(data["output"]["channels"]),
                value_range=(value_range[0], value_range[1]),
                halo_px=int(data["halo_px"]),
                size_multiple_px=int(data.get("size_multiple_px", 1)),
                norm=norm,
                norm_stats_size=int(data.get("norm_stats_size", 0)),
                norm_stats_layers=layers,
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card is incomplete or malformed: {exc!r}") from exc
        if card.norm == NORM_SHARED and 2 * sum(layers) != card.norm_stats_size:
            raise ModelError(
                f"{card.name}: norm_stats_layers {layers} do not add up to "
                f"norm_stats_size {card.norm_stats_size}"
            )
        return card

    def summary(self) -> ModelSummary:
        """The card as a report lists its model."""
        return ModelSummary(
            name=self.name,
            role=self.role,
            architecture=self.architecture,
            version=self.version,
            sha256=self.sha256,
            halo_px=self.halo_px,
            norm=self.norm,
        )


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks (model files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def read_card(card_path: Path) -> ModelCard:
    """The model card at ``card_path``; ModelError when it is unreadable or does not follow the
    schema."""
    return ModelCard.from_dict(read_card_json(card_path))


def discover_models(models_dir: Path) -> dict[str, Path]:
    """Map each role to the one ONNX file in ``models_dir`` whose card claims it."""
    found: dict[str, Path] = {}
    if not models_dir.is_dir():
        return found
    for card_path in sorted(models_dir.glob("*.json")):
        onnx_path = card_path.with_suffix(".onnx")
        if not onnx_path.is_file():
            continue
        card = read_card(card_path)
        if card.role in found:
            raise ModelError(
                f"{models_dir} holds two {card.role} models ({found[card.role].name}, "
                f"{onnx_path.name}); keep one per role or point --models elsewhere"
            )
        found[card.role] = onnx_path
    return found


def discover_stage_models(models_dir: Path) -> dict[str, Path]:
    """Every installed stage model: each ONNX role's file, and ``colour``'s card (no ONNX)."""
    found: dict[str, Path] = {str(role): path for role, path in discover_models(models_dir).items()}
    colour_card = find_colour_card(models_dir)
    if colour_card is not None:
        found[COLOUR_ROLE] = colour_card
    return found


def stages_off_by_default(found: dict[str, Path]) -> tuple[str, ...]:
    """Stages the installed cards keep out of the default chain (each stage's ``off_when``,
    service.core.stages): a model whose card says ``"default": false`` (shipped for comparison,
    it measured worse than the default chain), and the 3x3 median when the despeckler's card
    says ``"median_after": false`` (measured better alone, docs/models.md)."""
    cards = {role: read_card_json(path.with_suffix(".json")) for role, path in found.items()}
    off = []
    for stage in STAGE_TABLE:
        if stage.off_when is not None:
            role, flag = stage.off_when
            if role in cards and cards[role].get(flag) is False:
                off.append(stage.name)
    return tuple(sorted(off))


class OnnxModel:
    """One ONNX model with its card, checked against its sha256, ready to run batches on an
    inference backend (service.core.backends; default: the one ``DSCM_INFERENCE`` and
    ``DSCM_INFERENCE_PRECISION`` name, ``auto`` when unset)."""

    def __init__(
        self, onnx_path: Path, threads: int | None = None, backend: Backend | None = None
    ) -> None:
        self.path = onnx_path
        self.card = read_card(onnx_path.with_suffix(".json"))
        actual = file_sha256(onnx_path)
        if actual != self.card.sha256:
            raise ModelError(
                f"{onnx_path.name}: sha256 {actual[:12]}... does not match its card "
                f"({self.card.sha256[:12]}...); the file or the card was changed"
            )
        threads = threads or os.cpu_count() or 1
        # auto with a contender: the faster of the two for this model (timed once per machine)
        self.backend = settle_backend(backend or backend_from_env(), onnx_path, actual, threads)
        self.runner = open_runner(onnx_path, self.backend, threads)
        self.input_names = self.runner.input_names
        expected = 3 if self.card.norm == NORM_SHARED else 1
        if len(self.input_names) != expected:
            raise ModelError(
                f"{onnx_path.name}: card norm {self.card.norm!r} needs {expected} inputs, "
                f"the graph has {self.input_names}"
            )

    @property
    def provider(self) -> str:
        """What ran it: the runtime's provider or device, and the precision it computed in."""
        return self.runner.label

    @property
    def precision(self) -> str:
        """The precision it computes in: the backend's, or fp32 where OpenVINO fell back to it
        (a bf16 hint on a CPU without bf16 units)."""
        return self.runner.precision

    def to_model_range(self, unit: np.ndarray) -> np.ndarray:
        """Map [0, 1] values to the card's input range."""
        low, high = self.card.value_range
        if (low, high) == (0.0, 1.0):
            return unit.astype(np.float32, copy=False)
        return (unit * np.float32(high - low) + np.float32(low)).astype(np.float32, copy=False)

    def from_model_range(self, values: np.ndarray) -> np.ndarray:
        """Network outputs mapped from the card's value range to 0..1, clipped."""
        low, high = self.card.value_range
        unit = (values - np.float32(low)) * np.float32(1.0 / (high - low))
        return np.clip(unit, 0.0, 1.0, out=unit)

    def run(
        self, batch: np.ndarray, norm_stats: np.ndarray | None = None, norm_mix: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run ``(N, C, H, W)`` in [0, 1]; returns the output in [0, 1] and, for
        shared-statistics models, each item's own normalisation statistics."""
        feeds: dict[str, np.ndarray] = {self.input_names[0]: self.to_model_range(batch)}
        if self.card.norm == NORM_SHARED:
            size = self.card.norm_stats_size
            if norm_stats is None:
                stats = np.zeros((batch.shape[0], size), np.float32)
                norm_mix = 0.0
            else:
                stats = np.broadcast_to(norm_stats.astype(np.float32), (batch.shape[0], size))
            feeds[self.input_names[1]] = np.ascontiguousarray(stats)
            feeds[self.input_names[2]] = np.asarray([norm_mix], np.float32)
        try:
            outputs = self.runner.run(feeds)
        except Exception as exc:  # onnxruntime's and OpenVINO's errors are not typed
            raise ModelError(f"{self.card.name} failed on a {batch.shape} batch: {exc}") from exc
        own_stats = outputs[1] if self.card.norm == NORM_SHARED else None
        return self.from_model_range(outputs[0]), own_stats


def pool_norm_stats(tile_stats: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    """Pool per-tile (mean, var) of each normalisation layer into slide-wide statistics.

    Layout of one stats vector: for each layer with C channels, C means then C variances.
    The pooled variance is the variance of the union: E[var + mean^2] - E[mean]^2.
    """
    stats = np.asarray(tile_stats, np.float64).reshape(-1, tile_stats.shape[-1])
    pooled = np.empty(stats.shape[1], np.float64)
    offset = 0
    for channels in layers:
        means = stats[:, offset : offset + channels]
        variances = stats[:, offset + channels : offset + 2 * channels]
        mean = means.mean(axis=0)
        pooled[offset : offset + channels] = mean
        pooled[offset + channels : offset + 2 * channels] = (variances + means**2).mean(
            axis=0
        ) - mean**2
        offset += 2 * channels
    return pooled.astype(np.float32)
