"""Train the despeckler: MSE between despeckled and clean, Adam 5e-4 (the paper's recipe).

Resumable: ``out_dir/checkpoint.pt`` holds the network, optimiser and step; ``options.json``
sits beside it; batches depend only on (seed, step), so a resumed run continues identically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.core.filters import median3x3
from training.common import (
    CHECKPOINT_NAME,
    LOSS_CSV_NAME,
    OPTIONS_NAME,
    LossLog,
    configure_torch,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    step_rng,
)
from training.data import load_split
from training.networks import Despeckler, create_model
from training.speckle import add_speckle, clean_reflectance, speckle_batch
from training.synthetic import SPECKLE_STD

VAL_SEED_OFFSET = 10_000


@dataclass
class DespeckleOptions:
    prepared_dir: str
    out_dir: str
    width: int = 32
    depth: int = 7
    steps: int = 2000
    batch_size: int = 8
    crop_px: int = 128
    lr: float = 5e-4
    speckle_std: float = SPECKLE_STD
    seed: int = 0
    checkpoint_every: int = 200
    val_crop_px: int = 160
    threads: int = 0  # 0: torch's default


def psnr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((estimate.astype(np.float64) - reference) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def validation_set(
    cleans: list[np.ndarray], crop_px: int, seed: int, std: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed noisy/clean centre crops of the validation images."""
    rng = np.random.default_rng([seed, VAL_SEED_OFFSET])
    crops = []
    for clean in cleans:
        size = min(crop_px, *clean.shape)
        top, left = (clean.shape[0] - size) // 2, (clean.shape[1] - size) // 2
        crops.append(clean[top : top + size, left : left + size])
    size = min(c.shape[0] for c in crops)
    clean_stack = np.stack([c[:size, :size] for c in crops])[:, None]
    return add_speckle(clean_stack, rng, std), clean_stack


def evaluate_psnr(model: nn.Module, noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(noisy)).clamp(0, 1).numpy()
    model.train()
    return {
        "val_psnr_noisy": psnr_db(noisy, clean),
        "val_psnr_net": psnr_db(out, clean),
        "val_psnr_net_median": psnr_db(median3x3(out), clean),
    }


def train_despeckle(options: DespeckleOptions) -> Path:
    """Train (or resume) and return the checkpoint path."""
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_torch(options.seed, options.threads)
    prepared = Path(options.prepared_dir)
    train_clean = [clean_reflectance(rgb) for rgb in load_split(prepared, ("train_a", "train_b"))]
    val_clean = [clean_reflectance(rgb) for rgb in load_split(prepared, ("val",))]
    if not train_clean:
        raise ValueError(f"no training patches in {prepared}")
    model = create_model("despeckle", width=options.width, depth=options.depth)
    assert isinstance(model, Despeckler)
    optimiser = torch.optim.Adam(model.parameters(), lr=options.lr)
    start = 0
    state = load_checkpoint(out_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start = int(state["step"])
        print(f"resuming from step {start}", flush=True)
    columns = ["mse", "val_psnr_noisy", "val_psnr_net", "val_psnr_net_median"]
    log = LossLog(out_dir / LOSS_CSV_NAME, columns, resume_step=start)
    val_noisy, val_ref = validation_set(
        val_clean or train_clean[:4], options.val_crop_px, options.seed, options.speckle_std
    )
    loss_fn = nn.MSELoss()
    model.train()
    started = time.monotonic()

    def train_step(step: int) -> dict[str, float]:
        rng = step_rng(options.seed, step)
        noisy, clean = speckle_batch(
            train_clean, options.batch_size, options.crop_px, rng, options.speckle_std
        )
        loss = loss_fn(model(torch.from_numpy(noisy)), torch.from_numpy(clean))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"mse": float(loss.detach())}

    def checkpoint(step: int, losses: dict[str, float]) -> dict[str, float]:
        validation = evaluate_psnr(model, val_noisy, val_ref)
        saved = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step}
        save_checkpoint(out_dir, saved, options)
        return validation

    run_steps(log, start, options.steps, options.checkpoint_every, train_step, checkpoint, started)
    return out_dir / CHECKPOINT_NAME


def load_despeckler_checkpoint(checkpoint_dir: Path) -> Despeckler:
    """The trained despeckler of a checkpoint folder (its options say the size)."""
    options = json.loads((checkpoint_dir / OPTIONS_NAME).read_text())
    model = create_model("despeckle", width=options["width"], depth=options["depth"])
    assert isinstance(model, Despeckler)
    state = load_checkpoint(checkpoint_dir)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    model.load_state_dict(state["model"])
    return model.eval()
