"""``auto`` per model: time onnxruntime fp32 against OpenVINO on this model, once per machine.

Where ``auto`` has a contender (OpenVINO bf16 on a CPU with bf16 units: service.core.backends),
each model is run on both backends on a PROBE_PX tile, each in a child process of its own (so
that its peak memory is its own), PROBE_RUNS times after a warm-up; the contender runs the
model only when it was at least PROBE_MIN_GAIN faster and its peak memory grew no more than
onnxruntime's (plus PROBE_MEMORY_SLACK_MB of measurement noise). The result is kept in a small
JSON file keyed by CPU model and flags, threads, contender and the model's sha256, so a worker
pays for the probe once per machine and model (a few seconds), not per slide.

The cache is ``DSCM_BACKEND_CACHE`` when set, else ``$XDG_CACHE_HOME/dscm/backend-probes.json``
(``~/.cache`` without it); a cache that cannot be read or written is ignored (the probe runs
again). Why a model runs where it does is the Backend's ``reason``, which the report and
``dscm models`` show, e.g. ``probe: onnxruntime fp32 0.41 s vs openvino bf16 0.55 s``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from service.core.backends import Backend, Machine
from service.vocabulary.errors import ModelError

# Side of the timed tile (rounded up to the model's size multiple): the default tile. On the
# AVX2 EPYC, OpenVINO fp32 ran the despeckler 1.3x faster than onnxruntime at 512 px and no
# faster at 1040 px (docs/performance.md): a smaller probe would mislead.
PROBE_PX = 1024
PROBE_RUNS = 2  # timed runs after one warm-up; the median counts
PROBE_MIN_GAIN = 0.9  # the contender must take at most 90 % of onnxruntime's time
PROBE_MEMORY_SLACK_MB = 16.0  # peak-memory noise between two children
PROBE_TIMEOUT_S = 600


@dataclass(frozen=True)
class ProbeResult:
    """One backend on one model: median seconds per PROBE_PX tile, and how much the child's
    peak RSS grew from loading and running the model (MB)."""

    seconds: float
    peak_mb: float


Probe = Callable[[Path, Backend, int], ProbeResult]


def probe_in_child(path: Path, backend: Backend, threads: int) -> ProbeResult:
    """Time ``path`` on ``backend`` in a fresh Python process; ModelError when it fails."""
    argv = [sys.executable, "-m", "service.core.backend_probe", str(path)]
    argv += [backend.name, backend.precision, str(threads)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=True, timeout=PROBE_TIMEOUT_S
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return ProbeResult(float(data["seconds"]), float(data["peak_mb"]))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise ModelError(f"timing {path.name} on {backend.label} failed: {detail}") from exc


def default_cache_path() -> Path:
    """Where probe results are kept (DSCM_BACKEND_CACHE, else the XDG cache folder)."""
    stated = os.environ.get("DSCM_BACKEND_CACHE")
    if stated:
        return Path(stated)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dscm" / "backend-probes.json"


def cache_key(machine: Machine, sha256: str, contender: Backend, threads: int) -> str:
    """The machine (CPU model and flags), thread count, contender and model a result is for."""
    flags = hashlib.sha256(" ".join(sorted(machine.cpu_flags)).encode()).hexdigest()[:12]
    cpu = machine.cpu_model or "cpu"
    return f"{cpu}|flags {flags}|{threads} threads|{contender.label}|{sha256}"


def settle_backend(
    backend: Backend,
    path: Path,
    sha256: str,
    threads: int,
    machine: Machine | None = None,
    probe: Probe = probe_in_child,
    cache_path: Path | None = None,
) -> Backend:
    """The backend ``path`` runs on: ``backend`` itself when it has no contender, else the
    faster of the two on this model (measured or from the cache), never one that needs more
    memory than ``backend``; its reason says why."""
    contender = backend.contender
    if contender is None:
        return backend
    machine = machine or Machine.probe()
    cache_path = cache_path or default_cache_path()
    key = cache_key(machine, sha256, contender, threads)
    cache = read_cache(cache_path)
    source = "probe, cached"
    if key in cache:
        base, other = (ProbeResult(**cache[key][side]) for side in ("base", "contender"))
    else:
        base = probe(path, Backend(backend.name, backend.precision), threads)
        other = probe(path, Backend(contender.name, contender.precision), threads)
        cache[key] = {"base": asdict(base), "contender": asdict(other)}
        write_cache(cache_path, cache)
        source = "probe"
    faster = other.seconds <= base.seconds * PROBE_MIN_GAIN
    leaner = other.peak_mb <= base.peak_mb + PROBE_MEMORY_SLACK_MB
    reason = (
        f"{source}: {backend.label} {base.seconds:.2f} s, +{base.peak_mb:.0f} MB vs "
        f"{contender.label} {other.seconds:.2f} s, +{other.peak_mb:.0f} MB"
    )
    if faster and leaner:
        return Backend(contender.name, contender.precision, reason)
    why = "not faster" if not faster else "more memory"
    return Backend(backend.name, backend.precision, f"{reason} ({contender.label} {why})")


def read_cache(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """The cached probe results; empty when the file is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, cache: dict[str, dict[str, dict[str, float]]]) -> None:
    """Write the cache atomically; a folder that cannot be written only costs a probe later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(cache, indent=1, sort_keys=True))
        scratch.replace(path)
    except OSError:
        return


def time_model(path: Path, backend: Backend, threads: int) -> ProbeResult:
    """In this (child) process: load ``path`` on ``backend`` and time it on a PROBE_PX tile."""
    import numpy as np

    from service.core.models import OnnxModel

    # the runtime's own libraries are not the model's memory: loaded before the baseline
    importlib.import_module("openvino" if backend.name == "openvino" else "onnxruntime")
    before_mb = peak_rss_mb()
    model = OnnxModel(path, threads, backend)
    multiple = max(model.card.size_multiple_px, 1)
    side = -(-PROBE_PX // multiple) * multiple
    rng = np.random.default_rng(0)
    block = (0.3 + 0.4 * rng.random((1, model.card.in_channels, side, side))).astype(np.float32)
    times = []
    for _ in range(PROBE_RUNS + 1):
        started = time.perf_counter()
        model.run(block)
        times.append(time.perf_counter() - started)
    return ProbeResult(float(np.median(times[1:])), peak_rss_mb() - before_mb)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """The child: ``python -m service.core.backend_probe MODEL BACKEND PRECISION THREADS``."""
    parser = argparse.ArgumentParser(description="time one model on one backend (JSON out)")
    parser.add_argument("model", type=Path)
    parser.add_argument("backend", choices=["cpu", "openvino", "cuda"])
    parser.add_argument("precision", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    result = time_model(args.model, Backend(args.backend, args.precision), args.threads)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
