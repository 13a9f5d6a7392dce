"""One slide across workers (issue 20): the same slide through real processes (redis-server,
`dscm serve`, `dscm worker`s, SQLite), one worker with N threads and regions off against N
workers with one thread each and DSCM_REGION_TILES set, in the same run.

    .venv/bin/python bench/regions.py [--size 6000x4000] [--workers 2] [--region-tiles 4]
        [--tile-px 1024] [--stages despeckle,gareau,colour] [--json-out FILE]

Prints, per configuration, the time from the accepted upload to the job's success, the report's
phase times and the result's sha256 (the configurations must agree), and the figures the
scaling model in docs/performance.md needs: seconds per region, canvas write rate, pyramid time.
On a machine with fewer cores than workers x threads the split cannot be faster; it measures
the overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "service"))

from processes import Cluster, get_job, poll, post_pair, tiff_files  # noqa: E402

from bench.synthetic import write_pair  # noqa: E402
from service.api.auth import hash_key, new_key  # noqa: E402


def run(
    root: Path, files: Any, workers: int, threads: int, region_tiles: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Stain the pair once on ``workers`` workers of ``threads`` threads; the figures."""
    key_id, key = new_key()
    entry = {"id": key_id, "tenant": "bench", "roles": ["submit", "read"], "sha256": hash_key(key)}
    root.mkdir(parents=True)
    cluster = Cluster(root, [entry])
    cluster.extra_env.update(
        DSCM_MODELS_DIR=str(REPO / "models"),
        DSCM_TILE_PX=str(args.tile_px),
        DSCM_THREADS=str(threads),
        DSCM_REGION_TILES=str(region_tiles),
        DSCM_HEARTBEAT_INTERVAL_S="2",
        DSCM_STALE_AFTER_S="30",
        DSCM_JOB_TIME_LIMIT_S="3600",
    )
    try:
        cluster.start_redis()
        cluster.start_api()
        for index in range(workers):
            cluster.start_worker(f"w{index}")
        started = time.monotonic()
        job = post_pair(cluster, key, files, stages=args.stages)
        accepted = time.monotonic()
        done = poll(cluster, key, job["id"], timeout_s=3600)
        finished = time.monotonic()
        if done["state"] != "succeeded":
            raise SystemExit(f"the job ended {done['state']}: {done.get('error')}")
        report = get_job(cluster, key, job["id"])["report"]
        timings = report["timings_s"]
        tiles = report["tiles"]
        regions = -(-tiles["computed"] // region_tiles) if region_tiles else 1
        return {
            "workers": workers,
            "threads_each": threads,
            "region_tiles": region_tiles,
            "regions": regions,
            "upload_s": round(accepted - started, 2),
            "accepted_to_succeeded_s": round(finished - accepted, 2),
            "timings_s": timings,
            "tiles": tiles,
            "sha256": done["result"]["sha256"],
        }
    finally:
        cluster.stop_all()


def main() -> None:
    """Run both configurations on one synthetic slide and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="6000x4000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--region-tiles", type=int, default=4)
    parser.add_argument("--tile-px", type=int, default=1024)
    parser.add_argument("--stages", default="despeckle,gareau,colour")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="dscm-regions-") as tmp:
        folder = Path(tmp)
        pair = write_pair(folder / "pair", width, height, tissue_fraction=1.0)
        files = tiff_files(pair.rcm.read_bytes(), pair.fcm.read_bytes())
        one = run(folder / "one", files, 1, args.workers, 0, args)
        split = run(folder / "split", files, args.workers, 1, args.region_tiles, args)
    tile_s = split["timings_s"]["tiles"]
    megapixels = width * height / 1e6
    result = {
        "size": args.size,
        "stages": args.stages,
        "one_worker": one,
        "regions": split,
        "identical": one["sha256"] == split["sha256"],
        "overhead": round(split["accepted_to_succeeded_s"] / one["accepted_to_succeeded_s"], 3),
        "model": {
            "seconds_per_region_on_one_core": round(tile_s * args.workers / split["regions"], 2),
            "canvas_write_mb_per_s": round(megapixels * 3 / max(tile_s, 1e-9), 1),
            "pyramid_s": split["timings_s"].get("pyramid"),
            "before_tiles_s": round(
                sum(split["timings_s"].get(k, 0.0) for k in ("open", "thumbnail", "statistics")), 2
            ),
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
