"""Synthetic confocal-like slides of any size, made and written by libvips in bounded memory.

Used by the benchmarks and the whole-slide test. Structure (smooth waves) plus Gaussian noise,
and background (zero) to the right of ``tissue_fraction`` of the width.
"""

from __future__ import annotations

from pathlib import Path

import pyvips

from service.slide import SlideInputs


def write_mode(
    path: Path,
    width_px: int,
    height_px: int,
    seed: int,
    mpp_um: float = 0.75,
    tissue_fraction: float = 1.0,
) -> Path:
    xy = pyvips.Image.xyz(width_px, height_px)
    x, y = xy[0], xy[1]
    structure = (x / 97.0 + seed).sin() * 40 + (y / 53.0).cos() * 30 + 110
    noise = pyvips.Image.gaussnoise(width_px, height_px, sigma=20, seed=seed)
    image = structure + noise
    if tissue_fraction < 1.0:
        image = (x < tissue_fraction * width_px).ifthenelse(image, 0)
    res = 1000.0 / mpp_um
    image.cast("uchar").tiffsave(
        str(path), tile=True, compression="lzw", xres=res, yres=res, resunit="cm"
    )
    return path


def write_pair(
    folder: Path,
    width_px: int,
    height_px: int,
    mpp_um: float = 0.75,
    tissue_fraction: float = 1.0,
) -> SlideInputs:
    folder.mkdir(parents=True, exist_ok=True)
    return SlideInputs(
        rcm=write_mode(folder / "rcm.tif", width_px, height_px, 1, mpp_um, tissue_fraction),
        fcm=write_mode(folder / "fcm.tif", width_px, height_px, 2, mpp_um, tissue_fraction),
    )
