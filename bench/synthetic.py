"""The benchmarks' synthetic slides: the writer in tests/support/slides.py, so tests and benches
stain the same pairs. The tests folder goes on the path here because the bench scripts run
without pytest (``python bench/stain.py`` from the repository root, bench/gpu.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.slides import write_slide_pair as write_pair  # noqa: E402

__all__ = ["write_pair"]
