"""Per-stage time of the stain chain on tiles of the bundled scan (the chain's StageTimer).

    nice -n 5 .venv/bin/python bench/chain_stages.py [--tile-px 1024] [--tiles 4] [--stages ...]

Loads the shipped models, measures the slide statistics on the sample scan as a stain does,
then runs ``--tiles`` tiles (tile + the chain's halo, taken from the scan, mirrored where the
scan is smaller) through ``StainChain.run_with_layers`` and prints the seconds per tile of each
stage, and of the rest (the time in the chain that no stage timer saw: crops, uint8 output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.core.glass import estimate_glass_level  # noqa: E402
from service.core.normalize import estimate_range, normalize  # noqa: E402
from service.engine.pipeline import StainSpec, load_models  # noqa: E402
from service.slide import open_pair, resolve_scan_dir  # noqa: E402
from service.vocabulary.options import JobOptions  # noqa: E402

SAMPLE_SCAN = REPO / "samples" / "skin-scan"


def scan_unit() -> tuple[np.ndarray, np.ndarray]:
    """The sample scan's FCM and RCM normalised to [0, 1], whole."""
    info, rcm, fcm = open_pair(resolve_scan_dir(SAMPLE_SCAN), 400_000_000)
    out = []
    for mode in (fcm, rcm):
        pixels = mode.read_padded(0, 0, info.width_px, info.height_px)
        out.append(normalize(pixels, estimate_range(mode.thumbnail(1024))))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--stages", help="comma-separated; default: the models' default chain")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    stages = tuple(args.stages.split(",")) if args.stages else None
    spec = StainSpec(options=JobOptions(stages=stages), threads=args.threads)
    models = load_models(spec)
    chain = models.chain(stages)
    fcm, rcm = scan_unit()
    side = args.tile_px + 2 * chain.halo_px
    reps = (-(-side // fcm.shape[0]), -(-side // fcm.shape[1]))
    fcm_big = np.pad(
        fcm, [(0, fcm.shape[0] * (reps[0] - 1)), (0, fcm.shape[1] * (reps[1] - 1))], "symmetric"
    )
    rcm_big = np.pad(
        rcm, [(0, rcm.shape[0] * (reps[0] - 1)), (0, rcm.shape[1] * (reps[1] - 1))], "symmetric"
    )
    chain.glass_level = estimate_glass_level(fcm[::4, ::4], rcm[::4, ::4])
    crop_px = 384 + 2 * chain.halo_px
    chain.estimate_slide_stats(
        (fcm[y : y + crop_px, x : x + crop_px], rcm[y : y + crop_px, x : x + crop_px])
        for y in (0, 500, 1000)
        for x in (200, 800, 1400)
    )
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(args.tiles + 1):
        y = int(rng.integers(0, fcm_big.shape[0] - side + 1))
        x = int(rng.integers(0, fcm_big.shape[1] - side + 1))
        blocks.append((fcm_big[y : y + side, x : x + side], rcm_big[y : y + side, x : x + side]))
    batch = args.batch_size
    chain.run(np.stack([b[0] for b in blocks[:batch]]), np.stack([b[1] for b in blocks[:batch]]))
    chain.timer.seconds.clear()
    started = time.perf_counter()
    count = 0
    for i in range(1, args.tiles + 1 - batch + 1, batch):
        part = blocks[i : i + batch]
        chain.run(np.stack([b[0] for b in part]), np.stack([b[1] for b in part]))
        count += len(part)
    total_s = time.perf_counter() - started
    per_tile = {k: round(v / count, 4) for k, v in sorted(chain.timer.seconds.items())}
    per_tile["rest"] = round(total_s / count - sum(chain.timer.seconds.values()) / count, 4)
    per_tile["total"] = round(total_s / count, 4)
    print(
        json.dumps(
            {"tile_px": args.tile_px, "halo_px": chain.halo_px, "batch_size": batch,
             "tiles": count, "stages": list(chain.stages), "seconds_per_tile": per_tile}
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
