"""bench/gpu.sh, the GPU benchmark, passes on the CPU (DSCM_INFERENCE=cpu, a small slide), so
it is ready the day a GPU machine is at hand."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the [train] extra")
def test_gpu_script_runs_on_the_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, DSCM_INFERENCE="cpu", PYTHON=sys.executable, DSCM_BATCH_SIZE="2")
    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--no-install", "--size", "512x384",
         "--work", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "inference: cpu fp32 (DSCM_INFERENCE=cpu)" in run.stdout
    for name in ("shipped", "paper"):
        line = re.search(rf"^{name}: 512 x 384 px, .*$", run.stdout, re.MULTILINE)
        assert line is not None, run.stdout
        assert "CPUExecutionProvider fp32" in line[0] and "MP/s" in line[0], line[0]
        assert "batch 2" in line[0] and (tmp_path / f"{name}.tif").stat().st_size > 0
    # The paper-size generator really is ngf64 x 9 (its card, written by import-reference).
    card = (tmp_path / "paper" / "generator.json").read_text()
    assert "ngf=64" in card and "n_blocks=9" in card
