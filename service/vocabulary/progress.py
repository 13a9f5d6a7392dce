"""One progress vocabulary for the CLI, the workers and the viewer: the engine's
``(phase, done, total)`` callbacks as one fraction of the whole job that never goes back, and
a short message a surgeon can read ("staining 12 of 150 tiles")."""

from __future__ import annotations

from collections.abc import Callable

# What the engine calls between tiles: ``progress(phase, done, total)``; raising from it stops
# the stain (cancel, time limit, shutdown).
ProgressCallback = Callable[[str, int, int], None]

PROGRESS_SCALE = 1000  # stored as done / 1000 of the whole job
# Share of the whole job each engine phase covers, in order: one fraction that never goes back.
# (A phase is a step of the engine's work; a *stage* is a step of the stain chain, StageName.)
PROGRESS_SPANS: dict[str, tuple[float, float]] = {
    "load_models": (0.0, 0.01),
    "prepare": (0.01, 0.04),
    "statistics": (0.04, 0.08),
    "tiles": (0.08, 0.93),
    "pyramid": (0.93, 0.99),
    "thumbnail": (0.99, 1.0),
}


def overall_progress(phase: str, done: int, total: int) -> tuple[float, str]:
    """The engine's ``(phase, done, total)`` as one fraction of the whole job in [0, 1] and a
    short message a surgeon can read (at most 32 characters)."""
    low, high = PROGRESS_SPANS.get(phase, (0.0, 0.0))
    part = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    messages = {
        "load_models": "preparing",
        "prepare": "preparing",
        "statistics": "measuring the slide",
        "tiles": f"staining {done} of {total} tiles",
        "pyramid": "building the pyramid",
        "thumbnail": "finishing",
    }
    return low + (high - low) * part, messages.get(phase, phase)[:32]
