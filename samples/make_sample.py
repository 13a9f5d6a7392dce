"""Make the bundled sample: a synthetic confocal scan folder from a public-domain skin H&E.

    python samples/make_sample.py \\
        ../shared/data/he/skin/wikimedia-normal-epidermis-dermis-nevus-10x.jpg samples/skin-scan

Writes ``DET#1/highres_raw.tif`` (reflectance) and ``DET#2/highres_raw.tif`` (fluorescence):
16-bit single-band tiled TIFFs at 0.75 um/px, like a Vivascope export. Deterministic (seeded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyvips

from training.synthetic import confocal_stats, read_rgb, synthesize_confocal

WIDTH_PX = 2000
HEIGHT_PX = 1500
PIXEL_SIZE_UM = 0.75
SEED = 20190708  # MIDL 2019
# An 11-bit detector: the low 4 bits of each 16-bit sample are zero (also keeps the files small).
DETECTOR_BITS = 11


def centre_crop(image: np.ndarray, height_px: int, width_px: int) -> np.ndarray:
    top = max(0, (image.shape[0] - height_px) // 2)
    left = max(0, (image.shape[1] - width_px) // 2)
    return image[top : top + height_px, left : left + width_px]


def to_uint16(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float to 16-bit samples with ``DETECTOR_BITS`` significant bits."""
    levels = (1 << DETECTOR_BITS) - 1
    counts = np.rint(np.clip(unit, 0.0, 1.0) * levels).astype(np.uint16)
    return (counts << (16 - DETECTOR_BITS)).astype(np.uint16)


def write_raw_tiff(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pyvips.Image.new_from_array(np.ascontiguousarray(pixels))
    pixels_per_mm = 1000.0 / PIXEL_SIZE_UM
    image.tiffsave(
        str(path),
        compression="deflate",
        predictor="horizontal",
        tile=True,
        tile_width=256,
        tile_height=256,
        xres=pixels_per_mm,
        yres=pixels_per_mm,
        resunit="cm",
    )


def make_sample(he_path: Path, out_dir: Path) -> None:
    rgb = centre_crop(read_rgb(he_path), HEIGHT_PX, WIDTH_PX)
    pair = synthesize_confocal(rgb, seed=SEED)
    write_raw_tiff(to_uint16(pair.rcm), out_dir / "DET#1" / "highres_raw.tif")
    write_raw_tiff(to_uint16(pair.fcm), out_dir / "DET#2" / "highres_raw.tif")
    for name, mode in (("reflectance", pair.rcm), ("fluorescence", pair.fcm)):
        print(name, {k: round(v, 3) for k, v in confocal_stats(mode).to_dict().items()})


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: make_sample.py HE_IMAGE OUT_DIR")
    make_sample(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
