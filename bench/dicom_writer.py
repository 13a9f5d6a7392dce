"""Writer benchmark: the DICOM series against the TIFF pyramid, for the same stained canvas, in
the same run (target: DICOM <= 1.3 x the TIFF writer's time).

    .venv/bin/python bench/dicom_writer.py [--size 15000x10000] [--rounds 3] [--json-out F]

The canvas is the bundled sample's stain (samples/skin-scan through the Gareau stage) repeated
over the slide, so the JPEG tiles have real stain texture. Each round writes the canvas once
as a TIFF and once as a DICOM series (which writes the TIFF pyramid, then the series from its
tiles), in alternating order; the figures are each writer's median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.engine.pipeline import StainSpec, stain_slide  # noqa: E402
from service.slide import PyramidWriter, SlideInputs  # noqa: E402
from service.vocabulary.options import JobOptions  # noqa: E402

TARGET_RATIO = 1.3
BLOCK_PX = 1024


def sample_stain(folder: Path) -> np.ndarray:
    """The bundled sample stained with Gareau's stage, as an (H, W, 3) uint8 array."""
    scan = REPO / "samples" / "skin-scan"
    inputs = SlideInputs(scan / "DET#1" / "highres_raw.tif", scan / "DET#2" / "highres_raw.tif")
    out = folder / "sample.tif"
    stain_slide(inputs, out, StainSpec(options=JobOptions(stages=("gareau",))))
    return np.asarray(pyvips.Image.new_from_file(str(out)).numpy())[..., :3]


def fill(writer: PyramidWriter, texture: np.ndarray, width: int, height: int) -> None:
    rows, cols = texture.shape[:2]
    for y in range(0, height, BLOCK_PX):
        for x in range(0, width, BLOCK_PX):
            h, w = min(BLOCK_PX, height - y), min(BLOCK_PX, width - x)
            ty, tx = (y // BLOCK_PX * 397) % (rows - h + 1), (x // BLOCK_PX * 613) % (cols - w + 1)
            writer.write(x, y, np.ascontiguousarray(texture[ty : ty + h, tx : tx + w]))


def timed_write(
    output_format: str, folder: Path, texture: np.ndarray, width: int, height: int
) -> float:
    """Seconds of save + publish (the encoding) for one format; the canvas fill is not timed."""
    output = folder / ("out" if output_format == "dicom" else "out.tiff")
    writer = PyramidWriter(output, width, height, 0.75)
    fill(writer, texture, width, height)
    started = time.perf_counter()
    writer.save("jpeg", 90, output_format)  # type: ignore[arg-type]
    writer.publish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="15000x10000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    times: dict[str, list[float]] = {"tiff": [], "dicom": []}
    with tempfile.TemporaryDirectory(prefix="dscm-bench-dicom-") as tmp:
        texture = sample_stain(Path(tmp))
        for round_index in range(args.rounds):
            order = ("tiff", "dicom") if round_index % 2 == 0 else ("dicom", "tiff")
            for output_format in order:
                folder = Path(tmp) / f"{output_format}-{round_index}"
                folder.mkdir()
                times[output_format].append(
                    timed_write(output_format, folder, texture, width, height)
                )
                sizes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                print(
                    f"round {round_index} {output_format:5s} {times[output_format][-1]:7.2f} s "
                    f"({sizes / 2**20:.0f} MiB on disk)",
                    flush=True,
                )
    tiff_s, dicom_s = statistics.median(times["tiff"]), statistics.median(times["dicom"])
    ratio = dicom_s / tiff_s
    result: dict[str, Any] = {
        "size": [width, height],
        "rounds": args.rounds,
        "tiff_s": times["tiff"],
        "dicom_s": times["dicom"],
        "median_tiff_s": round(tiff_s, 2),
        "median_dicom_s": round(dicom_s, 2),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
    }
    print(
        f"{width} x {height}: TIFF {tiff_s:.2f} s, DICOM {dicom_s:.2f} s (median of "
        f"{args.rounds}); ratio {ratio:.2f} against the target {TARGET_RATIO} "
        f"({'met' if ratio <= TARGET_RATIO else 'MISSED'})"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
