"""Viewer tile benchmark: latency of deepest-level Deep Zoom tiles, ours against OpenSlide's.

    .venv/bin/python bench/viewer_tiles.py [--width-px 8192] [--height-px 6144] [--tiles 200]
                                    [--concurrency 6] [--json-out PATH]

Stains a synthetic pair through a real `dscm serve` (embedded worker, median + Gareau, the
default pyramidal JPEG TIFF) in a scratch folder, then times tiles of the deepest Deep Zoom
level, each over tissue and each distinct, on that job's pyramid:

- in this process, ``service.slide.deepzoom.DeepZoomCache``: cold (pyramid open, tile not
  cached: the first view of a region), warm (tile cached), and opening the pyramid;
- the baseline, same file, same tiles, same geometry (254 px + 1 px overlap, JPEG Q85):
  ``openslide.deepzoom.DeepZoomGenerator.get_tile`` + Pillow JPEG, which has no tile cache;
- over HTTP on loopback (auth, routing, problem checks, the server's cache): cold, warm, and
  warm with ``--concurrency`` requests in flight (a browser opens about six), beside
  GET /livez on the same server as the HTTP baseline.

Prints p50/p95/max per path against the 50 ms target.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyvips

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load import Processes, api_env, free_port, http_ok, percentile, wait_for  # noqa: E402
from service.slide import SlideInputs  # noqa: E402
from service.slide.deepzoom import (  # noqa: E402
    DZ_JPEG_QUALITY,
    DZ_OVERLAP_PX,
    DZ_TILE_PX,
    DeepZoom,
    DeepZoomCache,
)

TARGET_MS = 50.0
TISSUE_FRACTION = 0.6
MPP_UM = 0.5
Tile = tuple[int, int, int]


def timed(calls: list[Callable[[], Any]]) -> list[float]:
    """Milliseconds of each call, one after another."""
    latencies = []
    for call in calls:
        started = time.perf_counter()
        call()
        latencies.append(1000 * (time.perf_counter() - started))
    return latencies


def summary(name: str, latencies_ms: list[float]) -> dict[str, Any]:
    return {
        "path": name,
        "n": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p95_ms": round(percentile(latencies_ms, 95), 2),
        "max_ms": round(max(latencies_ms), 2),
    }


def deepest_tissue_tiles(zoom: DeepZoom, count: int, seed: int = 0) -> list[Tile]:
    """``count`` distinct tiles of the deepest level, all inside the tissue (left) part."""
    level = len(zoom.levels) - 1
    dz = zoom.levels[level]
    tissue_columns = max(1, int(dz.columns * TISSUE_FRACTION) - 1)
    candidates = [(level, c, r) for c in range(tissue_columns) for r in range(dz.rows)]
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


def bench_library(pyramid: Path, tiles: list[Tile]) -> list[dict[str, Any]]:
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    rows = []
    opens = timed([lambda: DeepZoom(pyramid) for _ in range(5)])
    rows.append(summary("dscm DeepZoom(): open the pyramid", opens))
    cache = DeepZoomCache()
    cache.slide(pyramid)  # opened once, as the server does on the DZI request
    calls = [lambda t=t: cache.tile(pyramid, *t) for t in tiles]
    rows.append(summary("dscm DeepZoomCache.tile, cold (tile not cached)", timed(calls)))
    rows.append(summary("dscm DeepZoomCache.tile, warm (tile cached)", timed(calls)))

    slide = openslide.OpenSlide(str(pyramid))
    generator = DeepZoomGenerator(slide, tile_size=DZ_TILE_PX, overlap=DZ_OVERLAP_PX)
    assert generator.level_count == len(cache.slide(pyramid).levels), "level counts differ"

    def openslide_tile(level: int, column: int, row: int) -> bytes:
        buffer = io.BytesIO()
        generator.get_tile(level, (column, row)).save(buffer, "jpeg", quality=DZ_JPEG_QUALITY)
        return buffer.getvalue()

    calls = [lambda t=t: openslide_tile(*t) for t in tiles]
    baseline = "openslide DeepZoomGenerator + Pillow JPEG (baseline, no cache)"
    rows.append(summary(baseline, timed(calls)))
    rows.append(summary("openslide, same tiles again (OS page cache warm)", timed(calls)))
    slide.close()
    return rows


def bench_http(
    base: str, key: str, job_id: str, tiles: list[Tile], fresh: list[Tile], concurrency: int
) -> list[dict[str, Any]]:
    """Cold then warm on ``tiles`` one at a time; then on ``fresh`` with requests in flight."""
    headers = {"Authorization": f"Bearer {key}"}
    url = f"/v1/jobs/{job_id}/dzi_files/{{}}/{{}}_{{}}.jpeg"
    rows = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        assert client.get(f"/v1/jobs/{job_id}/dzi").status_code == 200  # opens the pyramid

        def get(tile: Tile) -> None:
            answer = client.get(url.format(*tile))
            assert answer.status_code == 200, answer.text

        livez = [lambda: client.get("/livez") for _ in tiles]
        rows.append(summary("HTTP GET /livez (baseline: HTTP on loopback)", timed(livez)))
        calls = [lambda t=t: get(t) for t in tiles]
        rows.append(summary("HTTP GET tile, cold (server cache miss)", timed(calls)))
        rows.append(summary("HTTP GET tile, warm (server cache hit)", timed(calls)))

    clients = [httpx.Client(base_url=base, headers=headers, timeout=60) for _ in range(concurrency)]

    def one(index: int) -> float:
        started = time.perf_counter()
        answer = clients[index % concurrency].get(url.format(*fresh[index]))
        assert answer.status_code == 200, answer.text
        return 1000 * (time.perf_counter() - started)

    for what in ("cold", "warm"):
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(one, range(len(fresh))))
        rows.append(summary(f"HTTP GET tile, {what}, {concurrency} in flight", latencies))
    for client in clients:
        client.close()
    return rows


def write_tissue_like_pair(folder: Path, width_px: int, height_px: int) -> SlideInputs:
    """Nuclei-like blobs in FCM and speckled fibres in RCM (so JPEG tiles have a realistic
    size), tissue on the left ``TISSUE_FRACTION``; written by libvips in bounded memory."""
    folder.mkdir(parents=True, exist_ok=True)
    xy = pyvips.Image.xyz(width_px, height_px)
    x, y = xy[0], xy[1]
    blobs = pyvips.Image.gaussnoise(width_px, height_px, mean=0, sigma=60, seed=1).gaussblur(2.5)
    noise = pyvips.Image.gaussnoise(width_px, height_px, mean=0, sigma=8, seed=3)
    fcm = (blobs > 12).ifthenelse(120, 30) + noise  # dark, as real confocal scans are
    fibres = (x / 11 + (y / 37).sin() * 3).sin() * (y / 17).cos() * 25 + 60
    rcm = fibres * pyvips.Image.gaussnoise(width_px, height_px, mean=1, sigma=0.25, seed=2)
    tissue = x < TISSUE_FRACTION * width_px
    px_per_mm = 1000.0 / MPP_UM
    paths = []
    for name, image in (("rcm", rcm), ("fcm", fcm)):
        path = folder / f"{name}.tif"
        tissue.ifthenelse(image, 0).cast("uchar").tiffsave(
            str(path), tile=True, compression="lzw", xres=px_per_mm, yres=px_per_mm
        )
        paths.append(path)
    return SlideInputs(*paths)


def stain_through_the_service(
    scratch: Path, args: argparse.Namespace
) -> tuple[Processes, str, str, str, Path]:
    """A real `dscm serve` stains the pair; returns it, its URL, key, the job and its pyramid."""
    pair = write_tissue_like_pair(scratch / "pair", args.width_px, args.height_px)
    key, env = api_env(scratch, "bench", DSCM_JOB_TIME_LIMIT_S="3000")
    port = free_port()
    procs = Processes(scratch, env)
    serve = ["-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    procs.spawn("api", [sys.executable, *serve, "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{base}/livez"), 60, "the API")
    headers = {"Authorization": f"Bearer {key}"}
    files = {"rcm": ("rcm.tif", pair.rcm.read_bytes()), "fcm": ("fcm.tif", pair.fcm.read_bytes())}
    data = {"stages": "median,gareau"}
    accepted = httpx.post(f"{base}/v1/jobs", files=files, data=data, headers=headers, timeout=600)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    while True:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise SystemExit(f"tiles: the stain failed: {job['error']}")
    pyramid = scratch / "storage" / "results" / job_id / job["report"]["output"]
    return procs, base, key, job_id, pyramid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-px", type=int, default=8192)
    parser.add_argument("--height-px", type=int, default=6144)
    parser.add_argument("--tiles", type=int, default=200, help="distinct deepest-level tiles")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="dscm-tiles-"))
    procs: Processes | None = None
    try:
        started = time.perf_counter()
        procs, base, key, job_id, pyramid = stain_through_the_service(scratch, args)
        stain_s = time.perf_counter() - started
        zoom = DeepZoom(pyramid)
        chosen = deepest_tissue_tiles(zoom, 2 * args.tiles)
        tiles, fresh = chosen[: args.tiles], chosen[args.tiles :]
        rows = bench_library(pyramid, tiles)
        rows += bench_http(base, key, job_id, tiles, fresh, args.concurrency)
        tile_bytes = [len(zoom.tile_jpeg(*t)) for t in tiles[:20]]
    finally:
        if procs is not None:
            procs.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"pyramid: {args.width_px} x {args.height_px} px synthetic stain (median + Gareau, JPEG "
        f"Q90 tiled pyramid, {len(zoom.pages)} pages), stained in {stain_s:.1f} s; "
        f"deepest Deep Zoom level {len(zoom.levels) - 1}, {len(tiles)} distinct tiles over tissue, "
        f"{DZ_TILE_PX} px + {DZ_OVERLAP_PX} px overlap, JPEG Q{DZ_JPEG_QUALITY}, "
        f"~{sum(tile_bytes) // len(tile_bytes) // 1000} kB each"
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    print(f"{'path':<66} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  <{TARGET_MS:g} ms p95")
    for row in rows:
        ok = "yes" if row["p95_ms"] < TARGET_MS else "no"
        print(
            f"{row['path']:<66} {row['n']:>4} {row['p50_ms']:>8} {row['p95_ms']:>8} "
            f"{row['max_ms']:>8}  {ok}"
        )
    if args.json_out:
        figures = {"width_px": args.width_px, "height_px": args.height_px, "rows": rows}
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
