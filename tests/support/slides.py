"""Synthetic RCM/FCM pairs of any size, made and written by libvips in bounded memory: the
whole-slide test and the benchmarks use them. Only pyvips and the service: the benchmark's GPU
environment has no test extras."""

from __future__ import annotations

from pathlib import Path

import pyvips

from service.slide import SlideInputs

FIXTURE_MPP_UM = 0.75  # what test pairs say of their pixel size unless told otherwise
MODE_SEEDS = {"rcm": 1, "fcm": 2}


def write_slide_pair(
    folder: Path,
    width_px: int,
    height_px: int,
    mpp_um: float = FIXTURE_MPP_UM,
    tissue_fraction: float = 1.0,
) -> SlideInputs:
    """``folder/rcm.tif`` and ``folder/fcm.tif``: 8-bit tiled TIFFs of smooth waves plus
    Gaussian noise (seeded per mode), background (zero) to the right of ``tissue_fraction`` of
    the width."""
    folder.mkdir(parents=True, exist_ok=True)
    xy = pyvips.Image.xyz(width_px, height_px)
    x, y = xy[0], xy[1]
    px_per_mm = 1000.0 / mpp_um
    paths = {}
    for mode, seed in MODE_SEEDS.items():
        structure = (x / 97.0 + seed).sin() * 40 + (y / 53.0).cos() * 30 + 110
        image = structure + pyvips.Image.gaussnoise(width_px, height_px, sigma=20, seed=seed)
        if tissue_fraction < 1.0:
            image = (x < tissue_fraction * width_px).ifthenelse(image, 0)
        paths[mode] = folder / f"{mode}.tif"
        image.cast("uchar").tiffsave(
            str(paths[mode]),
            tile=True,
            compression="lzw",
            xres=px_per_mm,
            yres=px_per_mm,
            resunit="cm",
        )
    return SlideInputs(**paths)
