"""CIELab conversions and the skin colour stage: a per-slide colour transfer (Reinhard et al.
2001, in CIELab) from Gareau's stain to the look of one real skin H&E lab.

Gareau's constants give a saturated violet that no dermatopathologist reads every day. The
stage measures the slide's own Lab mean and standard deviation over tissue (a sample of tiles,
the same pass that pools the generator's statistics), and maps them affinely onto a target
look fitted on real skin H&E (``models/colour.json``). Glass keeps Gareau's white: the transfer
is weighted per pixel by how much signal FCM + RCM carry there, so zero input stays white and
tiles skipped as background match the computed ones. numpy only: the engine, training and the
measures share these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.cards import read_card_json
from service.vocabulary.errors import ModelError
from service.vocabulary.report import ColourTransferSummary, LabSummary, plain

COLOUR_ROLE = "colour"
# FCM + RCM (normalised) below LOW is glass (no transfer), above LOW + RAMP full transfer.
WEIGHT_LOW = 0.10
WEIGHT_RAMP = 0.20
# A slide's std is never stretched or squeezed more than this (noise-only slides).
MAX_STD_RATIO = 3.0
MIN_TISSUE_WEIGHT = 50.0  # summed weight below which a slide has no tissue to measure

_D65_WHITE = np.asarray([0.95047, 1.0, 1.08883], np.float32)
_RGB_TO_XYZ = np.asarray(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    np.float32,
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
_EPSILON = np.float32(0.008856)
_KAPPA = np.float32(7.787)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1], channels LAST ``(..., 3)`` -> CIELab (D65), float32 ``(..., 3)``.

    The same formulas as scikit-image's ``rgb2lab`` (tested against it).
    """
    unit = np.clip(np.asarray(rgb, np.float32), 0.0, 1.0)
    linear = np.where(unit > 0.04045, ((unit + 0.055) / 1.055) ** 2.4, unit / 12.92)
    xyz = (linear @ _RGB_TO_XYZ.T) / _D65_WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), _KAPPA * xyz + np.float32(16.0 / 116.0))
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab.astype(np.float32, copy=False)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELab (D65) ``(..., 3)`` -> sRGB in [0, 1] (clipped), float32 ``(..., 3)``."""
    lab = np.asarray(lab, np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    f = np.stack([fx, fy, np.maximum(fz, 0.0)], axis=-1)
    cube = f**3
    xyz = np.where(cube > _EPSILON, cube, (f - np.float32(16.0 / 116.0)) / _KAPPA) * _D65_WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, None)
    rgb = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32, copy=False)


def tissue_weight(fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
    """Per-pixel weight in [0, 1] of the colour transfer: 0 on glass, 1 on tissue."""
    signal = fcm.astype(np.float32, copy=False) + rcm.astype(np.float32, copy=False)
    return np.clip((signal - np.float32(WEIGHT_LOW)) / np.float32(WEIGHT_RAMP), 0.0, 1.0)


@dataclass(frozen=True)
class LabStats:
    """Mean, standard deviation and covariance of L*, a*, b* over tissue."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cov: tuple[tuple[float, ...], ...] | None = None  # 3 x 3; None: diagonal from ``std``

    def covariance(self) -> np.ndarray:
        """The 3 x 3 Lab covariance: the card's own, or diagonal from the standard deviations."""
        if self.cov is not None:
            return np.asarray(self.cov, np.float64).reshape(3, 3)
        return np.diag(np.asarray(self.std, np.float64) ** 2)

    def summary(self) -> LabSummary:
        """The statistics rounded for a report (cov only when known)."""
        return LabSummary(
            mean=[round(v, 3) for v in self.mean],
            std=[round(v, 3) for v in self.std],
            cov=None if self.cov is None else [[round(v, 3) for v in row] for row in self.cov],
        )

    def to_dict(self) -> dict[str, Any]:
        """The statistics rounded for a card (cov only when the card has one)."""
        return dict(plain(self.summary()))


@dataclass
class LabAccumulator:
    """Weighted Lab moments pooled over many blocks (the slide's sample of tissue tiles)."""

    weight: float = 0.0
    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    products: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))

    def add(self, rgb_chw: np.ndarray, weight: np.ndarray) -> None:
        """Add ``(N, 3, H, W)`` or ``(3, H, W)`` RGB with a weight of the same spatial shape."""
        lab = rgb_to_lab(np.moveaxis(rgb_chw, -3, -1)).reshape(-1, 3).astype(np.float64)
        w = np.asarray(weight, np.float64).reshape(-1)
        self.weight += float(w.sum())
        self.total += w @ lab
        self.products += (lab * w[:, None]).T @ lab

    def stats(self) -> LabStats | None:
        """The pooled statistics, or None when there was (almost) no tissue."""
        if self.weight < MIN_TISSUE_WEIGHT:
            return None
        mean = self.total / self.weight
        cov = self.products / self.weight - np.outer(mean, mean)
        cov = (cov + cov.T) / 2 + np.eye(3) * 1e-6
        std = np.sqrt(np.maximum(np.diag(cov), 1e-6))
        return LabStats(
            (float(mean[0]), float(mean[1]), float(mean[2])),
            (float(std[0]), float(std[1]), float(std[2])),
            tuple(tuple(float(v) for v in row) for row in cov),
        )


@dataclass(frozen=True)
class ColourTarget:
    """The look to reach: Lab statistics of a real skin H&E lab's tissue (a colour card)."""

    name: str
    version: str
    lab: LabStats
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColourTarget:
        """A target from a colour card's JSON; ModelError for another role, missing fields or a
        covariance that is not positive definite."""
        try:
            if data["role"] != COLOUR_ROLE:
                raise ModelError(f"not a colour card: role {data['role']!r}")
            # shapes and positive stds: the schema (service.core.cards); definiteness: here
            mean = tuple(float(v) for v in data["lab_mean"])
            std = tuple(float(v) for v in data["lab_std"])
            cov = None
            if "lab_cov" in data:
                matrix = np.asarray(data["lab_cov"], np.float64)
                if np.linalg.eigvalsh((matrix + matrix.T) / 2).min() <= 0:
                    raise ModelError("colour card lab_cov must be a positive definite 3 x 3")
                cov = tuple(tuple(float(v) for v in row) for row in matrix)
            known = {"name", "version", "role", "lab_mean", "lab_std", "lab_cov"}
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                lab=LabStats((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), cov),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"colour card is incomplete or malformed: {exc!r}") from exc

    def to_summary(self) -> dict[str, Any]:
        """The card's name, role, version and Lab statistics, as a report lists a model."""
        return {
            "name": self.name,
            "role": COLOUR_ROLE,
            "version": self.version,
            **self.lab.to_dict(),
        }


def find_colour_card(models_dir: Path) -> Path | None:
    """The one JSON card with role ``colour`` in ``models_dir`` (it has no ONNX file)."""
    found = []
    for path in sorted(models_dir.glob("*.json")) if models_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read model card {path}: {exc}") from exc
        if isinstance(data, dict) and data.get("role") == COLOUR_ROLE:
            found.append(path)
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelError(f"{models_dir} holds {len(found)} colour cards ({names}); keep one")
    return found[0] if found else None


def load_colour_target(path: Path) -> ColourTarget:
    """The colour target of a colour card file; ModelError for a card that is not one."""
    return ColourTarget.from_dict(read_card_json(path))


@dataclass(frozen=True)
class ColourTransfer:
    """The per-slide affine map in Lab, ``lab @ matrix.T + offset``, weighted by tissue.

    ``matrix`` is diagonal: Reinhard's per-channel mean/std transfer. The full-covariance
    (Monge-Kantorovich) map was tried and rejected: it rotated Gareau's nuclear purple off the
    haematoxylin direction (nuc_r 0.978 -> 0.19 on the real crop, against 0.99 per channel).
    Each channel's stretch is bounded by MAX_STD_RATIO either way.
    """

    matrix: tuple[tuple[float, ...], ...]
    offset: tuple[float, float, float]

    @classmethod
    def fit(cls, source: LabStats | None, target: LabStats) -> ColourTransfer:
        """Map ``source``'s Lab mean/std onto ``target``'s; the identity without tissue."""
        if source is None:
            return cls(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0))
        ratio = np.clip(
            np.asarray(target.std) / np.asarray(source.std), 1 / MAX_STD_RATIO, MAX_STD_RATIO
        )
        offset = np.asarray(target.mean) - np.asarray(source.mean) * ratio
        matrix = np.diag(ratio)
        return cls(
            tuple(tuple(float(v) for v in row) for row in matrix),
            (float(offset[0]), float(offset[1]), float(offset[2])),
        )

    def apply(self, rgb_chw: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """``(..., 3, H, W)`` RGB in [0, 1] -> transferred RGB, same layout, float32."""
        hwc = np.moveaxis(np.asarray(rgb_chw, np.float32), -3, -1)
        lab = rgb_to_lab(hwc)
        moved = lab @ np.asarray(self.matrix, np.float32).T + np.asarray(self.offset, np.float32)
        w = np.asarray(weight, np.float32)[..., None]
        out = lab_to_rgb(lab + w * (moved - lab))
        return np.ascontiguousarray(np.moveaxis(out, -1, -3))

    def summary(self) -> ColourTransferSummary:
        """The fitted transfer, rounded, for the report."""
        return ColourTransferSummary(
            matrix=[[round(v, 5) for v in row] for row in self.matrix],
            offset=[round(v, 4) for v in self.offset],
        )
