"""Classifier two-sample test (C2ST): can a small CNN critic tell real skin H&E from a stain?

The critic is trained on patches of training slides (real H&E against stained) and scored on
patches of held-out slides by ROC AUC: 0.5 means it cannot tell them apart, 1.0 that it always
can. Small patches, a four-layer network and a fixed number of steps (with a time box) keep it
to seconds or a minute on two CPU cores; everything is seeded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from service.core.quality import lab_of, reference_tissue

CANDIDATE_STRIDE_DIV = 4  # candidate patch corners every patch_px / 4


@dataclass(frozen=True)
class CriticOptions:
    """How the critic is trained and scored."""

    patch_px: int = 48  # 36 um at 0.75 um/px: a few nuclei with their surroundings
    train_patches: int = 2048  # per class
    test_patches: int = 1024  # per class
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    max_seconds: float = 90.0  # time box: training stops here even if steps remain
    threads: int = 2
    min_tissue: float = 0.5  # fraction of a patch that must be tissue (when the image has it)


class Critic(nn.Module):
    """Four 3x3 convolutions (three of stride 2; 8-16-32-32 channels), global average pooling,
    one logit: enough to see blur, grids and colour, cheap enough for two CPU cores."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for out in (2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``(N, 3, P, P)`` RGB in [0, 1] -> ``(N,)`` logits (high: stained)."""
        logits: torch.Tensor = self.net(rgb * 2.0 - 1.0)[:, 0]
        return logits


def _unit_hwc(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 or ``(3, H, W)``/``(H, W, 3)`` float in [0, 1] -> float32 HWC."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.moveaxis(array, 0, -1)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def _candidate_corners(
    unit: np.ndarray, patch_px: int, min_tissue: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (on a grid) of patches that are at least ``min_tissue`` tissue by the
    real-H&E tissue rule of FD_skin; every corner when the image has no such patch."""
    height, width = unit.shape[:2]
    stride = max(patch_px // CANDIDATE_STRIDE_DIV, 1)
    grid_y, grid_x = np.meshgrid(
        np.arange(0, height - patch_px + 1, stride),
        np.arange(0, width - patch_px + 1, stride),
        indexing="ij",
    )
    ys, xs = grid_y.ravel(), grid_x.ravel()
    tissue = reference_tissue(lab_of(unit)).astype(np.float64)
    integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    p = patch_px
    fraction = (
        integral[ys + p, xs + p] - integral[ys, xs + p] - integral[ys + p, xs] + integral[ys, xs]
    ) / (p * p)
    keep = fraction >= min_tissue
    return (ys[keep], xs[keep]) if keep.any() else (ys, xs)


class PatchSource:
    """Images with their tissue patch corners, found once; ``+`` joins two sources."""

    def __init__(self, images: Sequence[np.ndarray], patch_px: int, min_tissue: float = 0.5):
        self.patch_px = patch_px
        units = [_unit_hwc(image) for image in images]
        self.units = [u for u in units if min(u.shape[:2]) >= patch_px]
        self.corners = [_candidate_corners(u, patch_px, min_tissue) for u in self.units]

    def __add__(self, other: PatchSource) -> PatchSource:
        joined = PatchSource([], self.patch_px)
        joined.units, joined.corners = self.units + other.units, self.corners + other.corners
        return joined

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` random tissue patches ``(count, 3, P, P)`` float32 in [0, 1], drawn from
        the images in turn (each image gives about the same number)."""
        if not self.units:
            raise ValueError(f"no image is at least {self.patch_px} px on its shorter side")
        size = self.patch_px
        out = np.empty((count, 3, size, size), np.float32)
        order = rng.permutation(count) % len(self.units)
        for index, which in enumerate(order):
            ys, xs = self.corners[which]
            pick = int(rng.integers(len(ys)))
            y, x = int(ys[pick]), int(xs[pick])
            out[index] = np.moveaxis(self.units[which][y : y + size, x : x + size], -1, 0)
        return out


def sample_patches(
    images: Sequence[np.ndarray],
    count: int,
    patch_px: int,
    rng: np.random.Generator,
    min_tissue: float = 0.5,
) -> np.ndarray:
    """``count`` random tissue patches ``(count, 3, P, P)`` of ``images`` (see PatchSource)."""
    return PatchSource(images, patch_px, min_tissue).sample(count, rng)


def roc_auc(scores_real: np.ndarray, scores_fake: np.ndarray) -> float:
    """ROC AUC of telling fake (positive) from real: the probability that a fake patch scores
    above a real one, ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([scores_real, scores_fake]).astype(np.float64)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    n_real, n_fake = len(scores_real), len(scores_fake)
    u = ranks[n_real:].sum() - n_fake * (n_fake + 1) / 2.0
    return float(u / (n_real * n_fake))


def _scores(critic: Critic, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
    critic.eval()
    with torch.no_grad():
        parts = [
            critic(torch.from_numpy(patches[i : i + batch_size])).numpy()
            for i in range(0, len(patches), batch_size)
        ]
    return np.concatenate(parts)


def train_critic(
    real: np.ndarray, fake: np.ndarray, options: CriticOptions
) -> tuple[Critic, dict[str, Any]]:
    """Train the critic on patch arrays ``(N, 3, P, P)`` (random flips); stops after
    ``options.steps`` or ``options.max_seconds``, whichever comes first."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        torch.manual_seed(options.seed)
        rng = np.random.default_rng([options.seed, 1])
        critic = Critic()
        optimiser = torch.optim.Adam(critic.parameters(), lr=options.lr, betas=(0.5, 0.999))
        loss_fn = nn.BCEWithLogitsLoss()
        half = options.batch_size // 2
        labels = torch.cat([torch.zeros(half), torch.ones(half)])
        started = time.perf_counter()
        steps = 0
        loss = torch.zeros(())
        critic.train()
        while steps < options.steps and time.perf_counter() - started < options.max_seconds:
            batch = np.concatenate(
                [real[rng.integers(0, len(real), half)], fake[rng.integers(0, len(fake), half)]]
            )
            if rng.random() < 0.5:
                batch = batch[..., ::-1]
            if rng.random() < 0.5:
                batch = batch[..., ::-1, :]
            optimiser.zero_grad()
            loss = loss_fn(critic(torch.from_numpy(np.ascontiguousarray(batch))), labels)
            loss.backward()
            optimiser.step()
            steps += 1
        info = {
            "steps": steps,
            "seconds": round(time.perf_counter() - started, 1),
            "time_boxed": steps < options.steps,
            "last_loss": round(loss.item(), 4),
        }
        return critic, info
    finally:
        torch.set_num_threads(previous_threads)


def critic_auc(critic: Critic, real: np.ndarray, fake: np.ndarray) -> float:
    """ROC AUC of the trained critic on held-out patch arrays."""
    return roc_auc(_scores(critic, real), _scores(critic, fake))


def c2st(
    train_real: Sequence[np.ndarray] | PatchSource,
    train_fake: Sequence[np.ndarray] | PatchSource,
    test_real: Sequence[np.ndarray] | PatchSource,
    test_fake: Sequence[np.ndarray] | PatchSource,
    options: CriticOptions | None = None,
    extra_tests: Mapping[str, Sequence[np.ndarray] | PatchSource] | None = None,
) -> dict[str, Any]:
    """Train on patches of the training images, report the ROC AUC on the test images (and on
    each ``extra_tests`` set of fakes against the same ``test_real``). Images or PatchSources
    (made with the same ``patch_px``) are accepted."""
    options = options or CriticOptions()
    rng = np.random.default_rng(options.seed)

    def source(images: Sequence[np.ndarray] | PatchSource) -> PatchSource:
        if isinstance(images, PatchSource):
            return images
        return PatchSource(images, options.patch_px, options.min_tissue)

    real = source(train_real).sample(options.train_patches, rng)
    fake = source(train_fake).sample(options.train_patches, rng)
    critic, info = train_critic(real, fake, options)
    held_real = source(test_real).sample(options.test_patches, rng)
    held_fake = source(test_fake).sample(options.test_patches, rng)
    result: dict[str, Any] = {"auc": round(critic_auc(critic, held_real, held_fake), 4)}
    result["train_auc"] = round(
        critic_auc(critic, real[: len(held_real)], fake[: len(held_fake)]), 4
    )
    for name, images in (extra_tests or {}).items():
        extra = source(images).sample(options.test_patches, rng)
        result[f"auc_{name}"] = round(critic_auc(critic, held_real, extra), 4)
    return result | info
