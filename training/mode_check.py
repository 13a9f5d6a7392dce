"""Measure the engine's input check (service.core.sanity) where the truth is known.

    python -m training.mode_check ../shared/data [--pairs 20]

Prints the evidence of the bundled sample, the real Vivascope crop (each also repeated into
mosaics many times larger than the engine's thumbnail) and confocal-like pairs made
from real skin H&E whole-slide crops (training/synthetic.py), each as given and swapped, with
the outcome the engine would give, and the detection rates: the figures in docs/models.md.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from service.core.grid import tissue_mask
from service.core.normalize import estimate_range, normalize
from service.core.sanity import ModeCheck, check_modes
from training.synthetic import read_rgb, synthesize_confocal

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "skin-scan"


def unit(pixels: np.ndarray) -> np.ndarray:
    """Normalised like the engine's thumbnails (the slide-wide percentile range)."""
    raw = np.asarray(pixels, np.float32)
    return normalize(raw, estimate_range(raw))


def judge(fcm: np.ndarray, rcm: np.ndarray) -> tuple[ModeCheck, ModeCheck]:
    """The check as given and with the two files swapped."""
    f, r = unit(fcm), unit(rcm)
    mask = tissue_mask(f, r)
    return check_modes(f, r, mask), check_modes(r, f, mask)


def judge_mosaic(fcm_path: Path, rcm_path: Path, repeats: int) -> tuple[ModeCheck, ModeCheck]:
    """The check as the engine runs it (service.slide.inspect.check_pair: the thumbnail, and
    full-resolution windows where the thumbnail is reduced) on the pair repeated ``repeats`` x
    ``repeats`` times, as given and swapped."""
    import pyvips

    from service.slide import SlideInputs
    from service.slide.inspect import check_pair

    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for mode, path in (("fcm", fcm_path), ("rcm", rcm_path)):
            field = pyvips.Image.new_from_file(str(path))
            field = field.extract_band(0) if field.bands > 1 else field
            paths[mode] = Path(folder) / f"{mode}.tif"
            pyvips.Image.arrayjoin([field] * repeats**2, across=repeats).tiffsave(
                str(paths[mode]), tile=True
            )
        right = check_pair(SlideInputs(rcm=paths["rcm"], fcm=paths["fcm"]), True, 10**10)
        wrong = check_pair(SlideInputs(rcm=paths["fcm"], fcm=paths["rcm"]), True, 10**10)
    return right, wrong


def read_raw(path: Path) -> np.ndarray:
    import pyvips

    pixels = pyvips.Image.new_from_file(str(path)).numpy()
    return np.asarray(pixels[..., 0] if pixels.ndim == 3 else pixels)


def line(name: str, right: ModeCheck, swapped: ModeCheck) -> str:
    features = " ".join(f"{k} {v:+.2f}" for k, v in right.features.items())
    return (
        f"{name:48s} given: {right.outcome:9s} {right.evidence:+.3f} ({features})   "
        f"swapped: {swapped.outcome:9s} {swapped.evidence:+.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the shared data folder (confocal/, he/)")
    parser.add_argument("--pairs", type=int, default=20, help="synthetic pairs from skin-wsi")
    parser.add_argument(
        "--mosaic",
        type=int,
        nargs="*",
        default=[5, 7, 24],
        help="also check each fixed pair repeated N x N times, as the engine does (files)",
    )
    args = parser.parse_args()

    fixed = {"bundled sample": (SAMPLE / "DET#2/highres_raw.tif", SAMPLE / "DET#1/highres_raw.tif")}
    crop = args.data / "confocal"
    if (crop / "crop-512-fcm.jpg").is_file():
        fixed["real Vivascope crop"] = (crop / "crop-512-fcm.jpg", crop / "crop-512-rcm.jpg")
    for name, (fcm_path, rcm_path) in fixed.items():
        print(line(name, *judge(read_raw(fcm_path), read_raw(rcm_path))))
    for name, (fcm_path, rcm_path) in fixed.items():
        for repeats in args.mosaic:
            print(
                line(
                    f"{name}, {repeats} x {repeats} mosaic",
                    *judge_mosaic(fcm_path, rcm_path, repeats),
                )
            )

    slides = sorted((args.data / "he" / "skin-wsi").glob("*/*.jpg"))
    step = max(1, len(slides) // max(args.pairs, 1))
    given: Counter[str] = Counter()
    swapped: Counter[str] = Counter()
    evidence = []
    for index, path in enumerate(slides[::step][: args.pairs]):
        pair = synthesize_confocal(read_rgb(path), seed=index)
        right, wrong = judge(pair.fcm, pair.rcm)
        given[right.outcome] += 1
        swapped[wrong.outcome] += 1
        evidence.append(right.evidence)
        print(line(path.name, right, wrong))
    count = sum(given.values())
    if count:
        print(
            f"\n{count} synthetic pairs from skin-wsi: evidence {min(evidence):+.3f} to "
            f"{max(evidence):+.3f} (median {float(np.median(evidence)):+.3f})\n"
            f"  as given: {dict(given)}\n  swapped:  {dict(swapped)}"
        )


if __name__ == "__main__":
    main()
