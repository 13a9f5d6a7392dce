"""Seconds per CycleGAN training step, fp32 against CPU bf16 autocast, in the same run.

    python bench/train_step.py --crop-px 128 --steps 4

Prints the median step time of each precision and whether this CPU computes bf16 natively
(AMX / AVX512-BF16 in /proc/cpuinfo); elsewhere torch emulates bf16 and it is much slower.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from training.common import configure_torch, cpu_has_bf16
from training.train_cyclegan import CycleGan, CycleGanOptions


def step_seconds(bf16: bool, crop_px: int, steps: int, upsample: str) -> float:
    options = CycleGanOptions(
        prepared_dir="", out_dir="", upsample=upsample, bf16=bf16, lambda_paired=10.0,
        lambda_faithful=10.0,
    )  # fmt: skip
    model = CycleGan(options)
    real_a = torch.rand(1, 3, crop_px, crop_px) * 2 - 1
    real_b = torch.rand(1, 3, crop_px, crop_px) * 2 - 1
    times = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        model.optimize_parameters(real_a, real_b, random.Random(0), real_b)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop-px", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--upsample", default="resize", choices=["resize", "transpose"])
    args = parser.parse_args()
    configure_torch(0)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"native bf16 (AMX/AVX512-BF16): {cpu_has_bf16()}; torch {torch.__version__}, "
          f"{capability}, {torch.get_num_threads()} threads")  # fmt: skip
    fp32 = step_seconds(False, args.crop_px, args.steps, args.upsample)
    bf16 = step_seconds(True, args.crop_px, args.steps, args.upsample)
    print(f"ngf16 x 9 CycleGAN step at {args.crop_px} px: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s "
          f"(bf16/fp32 = {bf16 / fp32:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
