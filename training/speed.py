"""Model-only throughput of a models folder: despeckle -> median + Gareau -> generator.

    python -m training.speed [MODELS_DIR] [TILE_PX ...]

Runs the exported files through the engine's ``OnnxModel`` (2 threads by default) on random
tiles, the generator with shared statistics (``mix = 1``) as the engine runs it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from service.core.filters import median3x3
from service.core.models import OnnxModel
from service.core.stain import gareau_stain


def chain_speed(
    models_dir: Path, tile_px: int, repeats: int = 3, threads: int = 2
) -> dict[str, float]:
    """Megapixels per second of each stage and of the chain, at one tile size."""
    despeckler = OnnxModel(models_dir / "despeckle.onnx", threads=threads)
    generator = OnnxModel(models_dir / "generator.onnx", threads=threads)
    rng = np.random.default_rng(0)
    rcm = rng.random((1, 1, tile_px, tile_px), dtype=np.float32)
    fcm = rng.random((1, tile_px, tile_px), dtype=np.float32)
    _, stats = generator.run(gareau_stain(fcm, rcm[:, 0]), norm_stats=None)
    despeckler.run(rcm)  # warm-up
    seconds = {"despeckle": 0.0, "median_gareau": 0.0, "generator": 0.0}
    for _ in range(repeats):
        start = time.perf_counter()
        out, _ = despeckler.run(rcm)
        seconds["despeckle"] += time.perf_counter() - start
        start = time.perf_counter()
        rgb = gareau_stain(fcm, median3x3(out[:, 0]))
        seconds["median_gareau"] += time.perf_counter() - start
        start = time.perf_counter()
        generator.run(rgb, norm_stats=stats, norm_mix=1.0)
        seconds["generator"] += time.perf_counter() - start
    megapixels = tile_px * tile_px * repeats / 1e6
    result = {f"{k}_mp_per_s": megapixels / v for k, v in seconds.items()}
    result["chain_mp_per_s"] = megapixels / sum(seconds.values())
    return result


def main() -> None:
    models_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models")
    tiles = [int(a) for a in sys.argv[2:]] or [512, 1024]
    for tile_px in tiles:
        speeds = chain_speed(models_dir, tile_px)
        print(f"tile {tile_px} px: " + ", ".join(f"{k} {v:.2f}" for k, v in speeds.items()))


if __name__ == "__main__":
    main()
