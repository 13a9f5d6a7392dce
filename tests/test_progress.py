"""Progress: one fraction of the whole job that never goes back, in words a surgeon reads."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import ProgressBar
from service.vocabulary.progress import overall_progress

REPO = Path(__file__).resolve().parents[1]


def test_progress_never_goes_back_across_stages() -> None:
    events = [("load_models", 0, 1), ("prepare", 0, 1), ("prepare", 1, 1)]
    events += [("statistics", i, 8) for i in range(9)]
    events += [("tiles", i, 150) for i in range(151)]
    events += [("pyramid", 0, 1), ("pyramid", 1, 1), ("thumbnail", 0, 1)]
    fractions = [overall_progress(*event)[0] for event in events]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and 0.98 <= fractions[-1] <= 1.0
    assert overall_progress("tiles", 12, 150)[1] == "staining 12 of 150 tiles"
    assert overall_progress("statistics", 3, 8)[1] == "measuring the slide"
    assert all(len(overall_progress(*event)[1]) <= 32 for event in events)


def test_cli_without_a_terminal_prints_progress_lines(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "stain", str(REPO / "samples" / "skin-scan"),
         "-o", str(tmp_path / "out.tif"), "--stages", "median,gareau", "--tile-px", "512"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip().endswith("tiles")]
    percents = [int(line.split("%")[0]) for line in lines]
    assert len(percents) >= 5 and percents == sorted(percents)
    assert all(b - a <= 20 for a, b in itertools.pairwise(percents))
    assert "100 % done" in result.stderr.splitlines()


def test_progress_lines_pass_every_tenth_once_and_end_at_100(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sample at the default 1024 px tiles: four tiles of 21 % each. A line for each tenth
    the job passes (never two for one), where the job really is, and 100 % at the end (the CLI
    makes no thumbnail, so its last stage ended at 99 % and the old bar stopped at 93 %)."""
    events = [("load_models", 0, 1), ("prepare", 0, 1), ("prepare", 1, 1)]
    events += [("statistics", i, 8) for i in range(9)]
    events += [("tiles", i, 4) for i in range(5)] + [("pyramid", 0, 1), ("pyramid", 1, 1)]
    with ProgressBar() as bar:
        assert not bar.tty
        for event in events:
            bar.update(*event)
    lines = capsys.readouterr().err.splitlines()
    percents = [int(line.split("%")[0]) for line in lines]
    assert percents == [4, 29, 50, 72, 93, 100], lines
    assert lines[-1] == "100 % done"
    tenths = [p // 10 for p in percents]
    assert tenths == sorted(set(tenths))


def test_a_failed_stain_prints_no_100_percent(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        with ProgressBar() as bar:
            bar.update("tiles", 1, 4)
            raise RuntimeError("stopped")
    except RuntimeError:
        pass
    assert "100 %" not in capsys.readouterr().err
