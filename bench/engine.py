"""Engine benchmark: end-to-end speed, model-only speed, the published whole-slide scheme, RSS.

    .venv/bin/python bench/engine.py [--models models] [--sizes 4096 8192] [--tile-px 1024]

Each measurement runs in a fresh child process (so peak RSS is that run's own). Prints a table
and writes JSON (``--json-out``). Without trained models in ``--models``, builds paper-size
networks with random weights (needs the [train] extra) so the figures still mean something.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synthetic import write_pair  # noqa: E402
from service.core.chain import StainChain  # noqa: E402
from service.core.models import discover_models  # noqa: E402
from service.core.normalize import estimate_range, normalize  # noqa: E402
from service.pipeline import StainSpec, load_models, stain_slide  # noqa: E402
from service.slide import PyramidWriter, SlideInputs, open_pair  # noqa: E402

TISSUE_FRACTION = 0.6
BASELINE_WINDOW_PX, BASELINE_KEEP_PX, BASELINE_STEP_PX = 2048, 1025, 512
MODEL_ONLY_SAMPLE_TILES = 6


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_stain(args: argparse.Namespace) -> dict[str, Any]:
    spec = StainSpec(models_dir=Path(args.models), tile_px=args.tile_px, threads=args.threads)
    inputs = SlideInputs(Path(args.rcm), Path(args.fcm))
    started = time.perf_counter()
    report = stain_slide(inputs, Path(args.out), spec).to_dict()
    return {
        "wall_s": time.perf_counter() - started,
        "report": report,
        "max_rss_bytes": max_rss_bytes(),
    }


def child_model_only(args: argparse.Namespace) -> dict[str, Any]:
    """Networks only, on tiles of tile_px without halo, no I/O; timed on a sample of tiles."""
    spec = StainSpec(models_dir=Path(args.models), tile_px=args.tile_px, threads=args.threads)
    models = load_models(spec)
    rng = np.random.default_rng(0)
    side = args.tile_px
    fcm = rng.random((1, side, side), dtype=np.float32)
    rcm = rng.random((1, side, side), dtype=np.float32)
    chain = models.chain(None)
    despeckle, generator = chain.despeckle, chain.generator
    stats = None
    if chain.needs_shared_stats and generator is not None:
        _, stats = generator.run(np.zeros((1, 3, side, side), np.float32))
    times = []
    for _ in range(MODEL_ONLY_SAMPLE_TILES + 1):
        started = time.perf_counter()
        if despeckle is not None:
            despeckle.run(rcm[:, None])
        if generator is not None:
            generator.run(np.stack([fcm, rcm, fcm], axis=1), norm_stats=stats)
        times.append(time.perf_counter() - started)
    per_tile_s = float(np.median(times[1:]))  # the first run warms up onnxruntime
    return {"per_tile_s": per_tile_s, "tile_px": side, "max_rss_bytes": max_rss_bytes()}


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The published whole-slide scheme (gio8tisu/stained-CM-through-DL, see PAPER.md):
    2048 px windows, centre 1025 px kept, step 512, window-weighted sum; per-window instance
    norm; the right and bottom remainders are dropped. Same models, same reader and writer."""
    spec = StainSpec(models_dir=Path(args.models), threads=args.threads)
    models = load_models(spec)
    chain: StainChain = models.chain(None)
    started = time.perf_counter()
    info, rcm, fcm = open_pair(SlideInputs(Path(args.rcm), Path(args.fcm)), spec.max_pixels)
    ranges = {
        "fcm": estimate_range(fcm.thumbnail(2048)),
        "rcm": estimate_range(rcm.thumbnail(2048)),
    }
    width, height = info.width_px, info.height_px
    total = np.zeros((height, width, 3), np.float32)
    weights = np.zeros((height, width), np.float32)
    window = np.outer(
        np.hanning(BASELINE_KEEP_PX + 2)[1:-1], np.hanning(BASELINE_KEEP_PX + 2)[1:-1]
    )
    window = window.astype(np.float32)
    offset = (BASELINE_WINDOW_PX - BASELINE_KEEP_PX) // 2
    positions = [
        (x, y)
        for y in range(0, height - BASELINE_WINDOW_PX + 1, BASELINE_STEP_PX)
        for x in range(0, width - BASELINE_WINDOW_PX + 1, BASELINE_STEP_PX)
    ]
    limit = args.baseline_windows or len(positions)
    for x, y in positions[:limit]:
        f = normalize(fcm.read_padded(x, y, BASELINE_WINDOW_PX, BASELINE_WINDOW_PX), ranges["fcm"])
        r = normalize(rcm.read_padded(x, y, BASELINE_WINDOW_PX, BASELINE_WINDOW_PX), ranges["rcm"])
        out = chain.run(f[None], r[None])[0].astype(np.float32)
        inner = offset - chain.halo_px
        keep = out[inner : inner + BASELINE_KEEP_PX, inner : inner + BASELINE_KEEP_PX]
        ys, xs = y + offset, x + offset
        total[ys : ys + BASELINE_KEEP_PX, xs : xs + BASELINE_KEEP_PX] += keep * window[..., None]
        weights[ys : ys + BASELINE_KEEP_PX, xs : xs + BASELINE_KEEP_PX] += window
    computed_s = time.perf_counter() - started
    scale = len(positions) / limit
    stained = (total / np.maximum(weights, 1e-6)[..., None]).clip(0, 255).astype(np.uint8)
    writer = PyramidWriter(Path(args.out), width, height, info.mpp_um)
    writer.write(0, 0, stained)
    writer.finish("jpeg", 90, "tiff")
    wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s + computed_s * (scale - 1),
        "windows_total": len(positions),
        "windows_timed": limit,
        "extrapolated": scale > 1,
        "max_rss_bytes": max_rss_bytes(),
    }


def run_child(kind: str, **options: Any) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", kind]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def random_paper_models(folder: Path) -> Path:
    """Paper-size despeckler (64 x 7) and generator (64 x 9 blocks), random weights."""
    from training.export import CardInfo, export_model  # needs the [train] extra
    from training.networks import create_model

    for network, name, kwargs in (
        ("despeckle", "despeckle", {"width": 64, "depth": 7}),
        ("resnet_generator", "generator", {"ngf": 64, "n_blocks": 9}),
    ):
        model = create_model(network, **kwargs).eval()
        export_model(model, folder / f"{name}.onnx", CardInfo(name=f"random-{name}", version="0"))
    return folder


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["stain", "model-only", "baseline"])
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(4096, 4096), (8192, 8192)],
        help="slide sizes: N (square) or WxH, e.g. 15000x10000",
    )  # fmt: skip
    parser.add_argument("--tissue-fraction", type=float, default=TISSUE_FRACTION)
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--baseline-windows", type=int, help="time only the first N windows")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json-out", default=str(REPO / "bench" / "engine-results.json"))
    parser.add_argument("--rcm"), parser.add_argument("--fcm"), parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        handler = {"stain": child_stain, "model-only": child_model_only, "baseline": child_baseline}
        print(json.dumps(handler[args.child](args)))
        return

    scratch = tempfile.TemporaryDirectory(prefix="dscm-bench-")
    work = Path(scratch.name)
    models = Path(args.models)
    if len(discover_models(models)) < 2:
        print(f"{models} lacks trained models: building paper-size random ones", flush=True)
        models = random_paper_models(work / "models")
    common = {"models": models, "tile_px": args.tile_px, "threads": args.threads}
    rows = []
    for width, height in args.sizes:
        size = f"{width}x{height}"
        inputs = write_pair(
            work / f"in-{size}", width, height, tissue_fraction=args.tissue_fraction
        )
        out = work / f"out-{size}.tif"
        ours = run_child("stain", rcm=inputs.rcm, fcm=inputs.fcm, out=out, **common)
        report = ours["report"]
        computed = report["tiles"]["computed"]
        model_only = run_child("model-only", **common)
        model_only_s = model_only["per_tile_s"] * computed
        megapixels = width * height / 1e6
        row = {
            "size_px": size,
            "tissue_fraction": args.tissue_fraction,
            "megapixels": megapixels,
            "tiles_computed": computed,
            "tiles_total": report["tiles"]["total"],
            "end_to_end_s": ours["wall_s"],
            "end_to_end_mp_per_s": megapixels / ours["wall_s"],
            "model_only_s": model_only_s,
            "ratio_end_to_end_over_model_only": ours["wall_s"] / model_only_s,
            "peak_rss_mb": ours["max_rss_bytes"] / 2**20,
            "timings_s": report["timings_s"],
        }
        if (width, height) == min(args.sizes) and not args.no_baseline:
            base = run_child(
                "baseline", rcm=inputs.rcm, fcm=inputs.fcm, out=work / "baseline.tif",
                models=models, threads=args.threads, baseline_windows=args.baseline_windows,
            )  # fmt: skip
            row["baseline"] = base
            row["speedup_vs_baseline"] = base["wall_s"] / ours["wall_s"]
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    if len(rows) > 1:
        growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
        print(f"peak RSS growth {rows[0]['size_px']} -> {rows[-1]['size_px']}: {growth:+.1%}")
    result = {
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
        "models": report["models"] if rows else [],
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("size", "MP/s", "e2e s", "model s", "ratio", "RSS MB", "speed-up")
    print("\n" + f"{header[0]:>11} " + " ".join(f"{h:>8}" for h in header[1:]))
    for r in rows:
        speed = f"{r['speedup_vs_baseline']:.1f}x" if "speedup_vs_baseline" in r else "-"
        print(
            f"{r['size_px']:>11} {r['end_to_end_mp_per_s']:>8.3f} {r['end_to_end_s']:>8.1f} "
            f"{r['model_only_s']:>8.1f} {r['ratio_end_to_end_over_model_only']:>8.2f} "
            f"{r['peak_rss_mb']:>8.0f} {speed:>8}"
        )


if __name__ == "__main__":
    main()
