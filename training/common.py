"""What both trainers share: seeds, resumable checkpoints with options beside them, a loss CSV
with a plot, and a progress line that also reads well in a nohup log."""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
OPTIONS_NAME = "options.json"
LOSS_CSV_NAME = "losses.csv"
LOSS_PLOT_NAME = "losses.png"


def configure_torch(seed: int, threads: int = 0) -> None:
    """Seeds, thread count and flush-to-zero: tiny gradients of freshly initialised networks
    are denormal floats, which made CPU backward passes up to 9x slower (measured)."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16); elsewhere torch emulates
    it and a bf16 autocast step is far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """A generator that depends only on (seed, step): a resumed run draws the same batches."""
    return np.random.default_rng([seed, step])


def save_options(out_dir: Path, options: Any) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(options) if is_dataclass(options) and not isinstance(options, type) else options
    text = json.dumps(data, indent=2, default=str) + "\n"
    (out_dir / OPTIONS_NAME).write_text(text)


def save_checkpoint(out_dir: Path, state: dict[str, Any], options: Any) -> Path:
    """Write ``checkpoint.pt`` atomically, with ``options.json`` beside it."""
    save_options(out_dir, options)
    path = out_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


class LossLog:
    """Append-only CSV of losses per step; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int = 0) -> None:
        self.path = path
        self.columns = ["step", *columns]
        kept: list[dict[str, str]] = []
        if resume_step > 0 and path.is_file():
            with path.open() as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, step: int, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            row = {"step": step, **{k: f"{v:.6g}" for k, v in values.items()}}
            writer.writerow(row)

    def plot(self, png_path: Path, smooth: int = 25) -> None:
        """One panel per column, raw values faint and a running mean on top."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.path.open() as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return
        names = [c for c in self.columns if c != "step"]
        fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.8 * len(names)), sharex=True)
        axes_list = np.atleast_1d(axes)
        for axis, name in zip(axes_list, names, strict=True):
            points = [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]
            if not points:
                continue
            steps, values = np.asarray(points).T
            axis.plot(steps, values, alpha=0.3, linewidth=0.8)
            if len(values) >= smooth:
                kernel = np.ones(smooth) / smooth
                axis.plot(steps[smooth - 1 :], np.convolve(values, kernel, "valid"), linewidth=1.2)
            axis.set_ylabel(name, fontsize=8)
        axes_list[-1].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(png_path, dpi=90)
        plt.close(fig)


class ProgressLine:
    """``step/total, it/s, ETA, last losses``: redrawn in place on a terminal, one line every
    ``interval_s`` otherwise (logs)."""

    def __init__(self, total: int, start: int = 0, interval_s: float = 30.0) -> None:
        self.total = total
        self.start_step = start
        self.started = time.monotonic()
        self.last_print = 0.0
        self.interval_s = interval_s
        self.tty = sys.stderr.isatty()

    def update(self, step: int, values: dict[str, float], force: bool = False) -> None:
        now = time.monotonic()
        if not (force or self.tty or now - self.last_print >= self.interval_s):
            return
        self.last_print = now
        done = step - self.start_step
        rate = done / max(now - self.started, 1e-9)
        eta_s = (self.total - step) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        losses = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        line = f"[{bar}] {step}/{self.total} {rate:.2f} it/s ETA {eta_s / 60:.1f} min {losses}"
        if self.tty:
            sys.stderr.write("\r" + line[:160])
            if force:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run_steps(
    log: LossLog,
    start: int,
    total_steps: int,
    checkpoint_every: int,
    train_step: Callable[[int], dict[str, float]],
    checkpoint: Callable[[int, dict[str, float]], dict[str, float]],
    started: float,
) -> None:
    """Steps ``start + 1`` to ``total_steps``, the loop both trainers share.

    ``train_step(step)`` trains one batch and returns its losses. Every ``checkpoint_every``
    steps and at the last, ``checkpoint(step, losses)`` saves the state and returns the
    validation numbers, which join the losses in the CSV; the plot beside the CSV is redrawn
    then. Ends with the wall time since ``started`` (``time.monotonic()``)."""
    progress = ProgressLine(total_steps, start)
    for step in range(start + 1, total_steps + 1):
        values = train_step(step)
        at_checkpoint = step % checkpoint_every == 0 or step == total_steps
        if at_checkpoint:
            values.update(checkpoint(step, values))
        log.append(step, values)
        if at_checkpoint:
            log.plot(log.path.with_name(LOSS_PLOT_NAME))
        progress.update(step, values, force=at_checkpoint)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)


def linear_decay(step: int, total: int, decay_from: int) -> float:
    """LR factor: 1 until ``decay_from``, then linearly to 0 at ``total``."""
    if step < decay_from:
        return 1.0
    return max(0.0, 1.0 - (step - decay_from) / max(total - decay_from, 1))
