"""Worker-side Prometheus metrics (durations, tiles/s, outcomes); no job ids in labels.

A Celery worker serves them on DSCM_WORKER_METRICS_PORT; the embedded worker's appear in the
API's /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from service.vocabulary.report import StainReport

WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# Every timing of the report (timings_s): the engine's phases (open, tiles, pyramid, ...) and
# the chain's stages (despeckle, gareau, ...). The metric and label keep their first names.
TIMING_SECONDS = Histogram(
    "dscm_stage_duration_seconds",
    "Seconds spent in each engine phase and stain stage, per job",
    ["stage"],
    buckets=_DURATION_BUCKETS_S,
    registry=WORKER_REGISTRY,
)
JOB_SECONDS = Histogram(
    "dscm_job_duration_seconds",
    "Wall time of one successful stain",
    buckets=_DURATION_BUCKETS_S,
    registry=WORKER_REGISTRY,
)
TILES_PER_SECOND = Histogram(
    "dscm_job_tiles_per_second",
    "Tiles computed per second of the tiles phase, per job",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000),
    registry=WORKER_REGISTRY,
)
TILES = Counter("dscm_tiles_computed", "Tiles run through the networks", registry=WORKER_REGISTRY)
OUTCOMES = Counter(
    "dscm_job_attempts_finished",
    "Attempts by how they ended",
    ["outcome"],
    registry=WORKER_REGISTRY,
)


def observe_report(report: StainReport) -> None:
    """Record a finished stain's per-phase, per-stage and total seconds, tiles computed and
    tile rate in the worker's Prometheus metrics."""
    timings = report.timings_s
    for name, seconds in timings.items():
        if name != "total":
            TIMING_SECONDS.labels(stage=name).observe(seconds)
    JOB_SECONDS.observe(timings["total"])
    computed = report.tiles.computed
    TILES.inc(computed)
    tile_s = timings.get("tiles", 0.0)
    if computed and tile_s > 0:
        TILES_PER_SECOND.observe(computed / tile_s)
