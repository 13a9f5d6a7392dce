"""Engine benchmark: end-to-end speed, model-only speed, the published whole-slide scheme, RSS,
for each inference backend in the same run.

    .venv/bin/python bench/stain.py [--models models] [--sizes 4096 8192] [--tile-px 1024]
        [--backends cpu openvino cuda:fp16 ...] [--baseline-windows N]

Each measurement runs in a fresh child process (so peak RSS is that run's own). Prints a table
and writes JSON (``--json-out``). Without trained models in ``--models``, builds paper-size
networks with random weights (needs the [train] extra) so the figures still mean something.
Backends: ``NAME[:PRECISION]`` as DSCM_INFERENCE[/DSCM_INFERENCE_PRECISION] take them; the
default is every backend this machine has. The published scheme (the baseline) runs with the
default (``auto``) backend, and the speed-up is that backend's.
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
from service.core.backends import Backend, Machine, choose_backend  # noqa: E402
from service.core.chain import StainChain  # noqa: E402
from service.core.models import OnnxModel, discover_models, discover_stage_models  # noqa: E402
from service.core.normalize import estimate_range, normalize  # noqa: E402
from service.engine.pipeline import StainSpec, load_models, stain_slide  # noqa: E402
from service.slide import PyramidWriter, SlideInputs, open_pair  # noqa: E402
from service.vocabulary.options import JobOptions  # noqa: E402

TISSUE_FRACTION = 0.6
BASELINE_WINDOW_PX, BASELINE_KEEP_PX, BASELINE_STEP_PX = 2048, 1025, 512
MODEL_ONLY_SAMPLE_TILES = 6
DEFAULT_STAGES = "despeckle,median,gareau,generator"  # the two networks, as in the paper


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_spec(args: argparse.Namespace, **overrides: Any) -> StainSpec:
    name, _, precision = (args.backend or "auto").partition(":")
    values: dict[str, Any] = {
        "options": JobOptions(stages=tuple(args.stages.split(","))),
        "models_dir": Path(args.models),
        "tile_px": args.tile_px,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "inference": name,
        "inference_precision": precision or "auto",
    }
    return StainSpec(**(values | overrides))


def child_stain(args: argparse.Namespace) -> dict[str, Any]:
    spec = child_spec(args)
    inputs = SlideInputs(Path(args.rcm), Path(args.fcm))
    started = time.perf_counter()
    report = stain_slide(inputs, Path(args.out), spec).to_dict()
    return {
        "wall_s": time.perf_counter() - started,
        "report": report,
        "max_rss_bytes": max_rss_bytes(),
    }


def child_model_only(args: argparse.Namespace) -> dict[str, Any]:
    """Networks only, on tiles of tile_px without halo, no I/O; timed on a sample of tiles.
    Also each network's output against onnxruntime fp32 on the same tile (PSNR)."""
    spec = child_spec(args)
    models = load_models(spec)
    rng = np.random.default_rng(0)
    side = args.tile_px
    fcm = rng.random((1, side, side), dtype=np.float32)
    rcm = rng.random((1, side, side), dtype=np.float32)
    chain = models.chain(spec.options.stages)
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
    per_tile_s = float(np.median(times[1:]))  # the first run warms up the runtime
    psnr_db = {}
    # Mid-grey textured inputs: uniform noise over [0, 1] saturates the generator's tanh.
    texture = 0.4 + 0.3 * rng.random((1, 3, side, side), dtype=np.float32)
    for model, block in ((despeckle, texture[:, :1]), (generator, texture)):
        if model is None:
            continue
        reference = OnnxModel(model.path, args.threads, Backend("cpu", "fp32"))
        # the block's own statistics: a blank tile's would saturate every output pixel
        _, own = reference.run(block, norm_stats=None)
        want, _ = reference.run(block, norm_stats=own)
        got, _ = model.run(block, norm_stats=own)
        mse = float(np.mean((got.astype(np.float64) - want) ** 2))
        psnr_db[model.card.role] = float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
    return {
        "per_tile_s": per_tile_s,
        "tile_px": side,
        "providers": sorted({m.provider for m in (despeckle, generator) if m is not None}),
        "psnr_vs_onnxruntime_fp32_db": psnr_db,
        "max_rss_bytes": max_rss_bytes(),
    }


def child_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The published whole-slide scheme (gio8tisu/stained-CM-through-DL, see PAPER.md):
    2048 px windows, centre 1025 px kept, step 512, window-weighted sum; per-window instance
    norm; the right and bottom remainders are dropped. Same models, same reader and writer."""
    spec = child_spec(args, tile_px=1024)
    models = load_models(spec)
    chain: StainChain = models.chain(spec.options.stages)
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
    writer.save("jpeg", 90, "tiff")
    writer.publish()
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


def network_stages_s(report: dict[str, Any]) -> float:
    """Seconds the stain spent in its networks (the despeckler and generator stage timers)."""
    timings = report["timings_s"]
    return float(sum(timings.get(stage, 0.0) for stage in ("despeckle", "generator")))


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def machine_backends() -> list[str]:
    """Every backend this machine has, as --backends names them."""
    host = Machine.probe()
    names = ["cpu"]
    if host.openvino:
        names.append("openvino")
    if host.cuda:
        names += ["cuda", "cuda:fp16"]
    return names


def backend_of(name: str) -> Backend:
    inference, _, precision = name.partition(":")
    return choose_backend(inference, precision or "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["stain", "model-only", "baseline"])
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(4096, 4096), (8192, 8192)],
        help="slide sizes: N (square) or WxH, e.g. 15000x10000",
    )  # fmt: skip
    parser.add_argument(
        "--backends", nargs="+", help="NAME[:PRECISION], e.g. cpu openvino cuda:fp16 auto "
        "(default: every backend this machine has)",
    )  # fmt: skip
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # a child's one backend
    parser.add_argument("--stages", default=DEFAULT_STAGES)
    parser.add_argument("--tissue-fraction", type=float, default=TISSUE_FRACTION)
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--baseline-windows", type=int, help="time only the first N windows")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json-out", default=str(REPO / "bench" / "stain-results.json"))
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
    installed = {*discover_stage_models(models), "median", "gareau"}  # colour card included
    stages = ",".join(s for s in args.stages.split(",") if s in installed)
    default = backend_of("auto")
    backends = args.backends or machine_backends()
    common = {
        "models": models, "tile_px": args.tile_px, "threads": args.threads,
        "batch_size": args.batch_size, "stages": stages,
    }  # fmt: skip
    rows = []
    for width, height in args.sizes:
        size = f"{width}x{height}"
        inputs = write_pair(
            work / f"in-{size}", width, height, tissue_fraction=args.tissue_fraction
        )
        megapixels = width * height / 1e6
        baseline = None
        if not args.no_baseline and min(width, height) >= BASELINE_WINDOW_PX:
            baseline = run_child(
                "baseline", rcm=inputs.rcm, fcm=inputs.fcm, out=work / "baseline.tif",
                backend="auto", baseline_windows=args.baseline_windows, **common,
            )  # fmt: skip
        for name in backends:
            backend = backend_of(name)
            out = work / f"out-{size}.tif"
            ours = run_child(
                "stain", rcm=inputs.rcm, fcm=inputs.fcm, out=out, backend=name, **common
            )
            report = ours["report"]
            computed = report["tiles"]["computed"]
            model_only = run_child("model-only", backend=name, **common)
            model_only_s = model_only["per_tile_s"] * computed
            row = {
                "size_px": size,
                "backend": name,
                "backend_chosen": backend.label,
                "providers": report["providers"],
                "tissue_fraction": args.tissue_fraction,
                "megapixels": megapixels,
                "tiles_computed": computed,
                "tiles_total": report["tiles"]["total"],
                "end_to_end_s": ours["wall_s"],
                "end_to_end_mp_per_s": megapixels / ours["wall_s"],
                "model_only_s": model_only_s,
                "ratio_end_to_end_over_model_only": ours["wall_s"] / model_only_s,
                # the same ratio within the stain's own run (its network stages' time), which a
                # shared machine's load moves less than two runs minutes apart
                "ratio_end_to_end_over_network_stages": ours["wall_s"] / network_stages_s(report),
                "psnr_vs_onnxruntime_fp32_db": model_only["psnr_vs_onnxruntime_fp32_db"],
                "peak_rss_mb": ours["max_rss_bytes"] / 2**20,
                "timings_s": report["timings_s"],
            }
            if baseline is not None and backend.label == default.label:
                row["baseline"] = baseline
                row["speedup_vs_baseline"] = baseline["wall_s"] / ours["wall_s"]
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    for name in backends:
        mine = [r for r in rows if r["backend"] == name]
        if len(mine) > 1:
            growth = mine[-1]["peak_rss_mb"] / mine[0]["peak_rss_mb"] - 1
            print(f"{name}: peak RSS {mine[0]['size_px']} -> {mine[-1]['size_px']}: {growth:+.1%}")
    result = {
        "machine": {
            "cpu_count": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "cpu_class": Machine.probe().cpu_class,
            "default_backend": f"{default.label} ({default.reason})",
        },
        "models": report["models"] if rows else [],
        "stages": stages,
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "size",
        "backend",
        "MP/s",
        "e2e s",
        "model s",
        "ratio",
        "PSNR dB",
        "RSS MB",
        "vs base",
    )
    print("\n" + f"{header[0]:>11} {header[1]:>10} " + " ".join(f"{h:>8}" for h in header[2:]))
    for r in rows:
        speed = f"{r['speedup_vs_baseline']:.1f}x" if "speedup_vs_baseline" in r else "-"
        psnr = min(r["psnr_vs_onnxruntime_fp32_db"].values(), default=float("inf"))
        print(
            f"{r['size_px']:>11} {r['backend']:>10} {r['end_to_end_mp_per_s']:>8.3f} "
            f"{r['end_to_end_s']:>8.1f} {r['model_only_s']:>8.1f} "
            f"{r['ratio_end_to_end_over_model_only']:>8.2f} {psnr:>8.1f} "
            f"{r['peak_rss_mb']:>8.0f} {speed:>8}"
        )


if __name__ == "__main__":
    main()
