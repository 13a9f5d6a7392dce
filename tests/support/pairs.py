"""Synthetic confocal-like pairs (FCM nuclei, RCM texture and speckle, dark background), written
as real files: the image formats are part of what the tests exercise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
import tifffile

from support.slides import FIXTURE_MPP_UM


def confocal_like(height: int, width: int, seed: int = 0, tissue_fraction: float = 0.6):
    """(fcm, rcm) float arrays in [0, 1]: blobs of tissue with bright nuclei, speckled RCM,
    background (zero) outside a tissue region covering about ``tissue_fraction`` of the width."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = (
        0.5 + 0.2 * np.sin(xx / 37.0 + 3 * np.sin(yy / 91.0)) + 0.15 * np.cos(yy / 23.0 + xx / 59.0)
    )
    nuclei = np.zeros((height, width), np.float32)
    for _ in range(max(1, height * width // 4000)):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        y0, y1, x0, x1 = max(cy - 4, 0), min(cy + 5, height), max(cx - 4, 0), min(cx + 5, width)
        nuclei[y0:y1, x0:x1] = 1.0
    tissue = (xx < tissue_fraction * width).astype(np.float32)
    fcm = np.clip((0.15 * texture + 0.6 * nuclei) * tissue, 0, 1)
    speckle = rng.normal(1.0, 0.2, (height, width)).astype(np.float32)
    rcm = np.clip(texture * 0.5 * speckle * tissue, 0, 1)
    return fcm, rcm


def write_gray(
    path: Path,
    unit: np.ndarray,
    dtype: str = "uint8",
    mpp_um: float | None = FIXTURE_MPP_UM,
    **options: object,
) -> Path:
    """A gray image file; with resolution tags for ``mpp_um`` (None: no tags) unless
    ``options`` set their own."""
    scale = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    array = (unit * scale).astype(dtype) if dtype != "float32" else unit.astype(np.float32)
    image = pyvips.Image.new_from_array(array)
    if mpp_um is not None and "xres" not in options:
        image = image.copy(xres=1000.0 / mpp_um, yres=1000.0 / mpp_um)
        if path.suffix.lower() in (".tif", ".tiff"):
            options = {"resunit": "cm", **options}
    image.write_to_file(str(path), **options)
    return path


@dataclass(frozen=True)
class Texture:
    """The look of a textured-tissue image: a sin x cos texture with speckle on the left
    ``tissue_fraction`` of the width, zero (background) to the right."""

    periods_px: tuple[float, float] = (9.0, 13.0)  # along x, along y
    tissue_fraction: float = 0.6
    speckle_low: float = 0.7  # speckle is uniform in [speckle_low, 1)
    gain: float = 200.0  # 8-bit value of a texture of 1.0


def textured_tissue(
    height_px: int, width_px: int, rng: np.random.Generator, look: Texture = Texture()
) -> np.ndarray:
    """An 8-bit single-band image with ``look``, its speckle drawn from ``rng``."""
    yy, xx = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    texture = 0.5 + 0.25 * np.sin(xx / look.periods_px[0]) * np.cos(yy / look.periods_px[1])
    tissue = (xx < look.tissue_fraction * width_px).astype(np.float32)
    values = texture * tissue * rng.uniform(look.speckle_low, 1.0, (height_px, width_px))
    return np.clip(values * look.gain, 0, 255).astype(np.uint8)


def write_uint8_tiff(path: Path, pixels: np.ndarray, mpp_um: float = FIXTURE_MPP_UM) -> Path:
    """A plain (strip) 8-bit TIFF with resolution tags for ``mpp_um``."""
    px_per_cm = 1e4 / mpp_um
    tifffile.imwrite(path, pixels, resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    return path


def write_gray_tiff(path: Path, height_px: int, width_px: int, seed: int = 0) -> Path:
    """A confocal-like 8-bit single-band TIFF: a textured tissue half, dark background."""
    rng = np.random.default_rng(seed)
    return write_uint8_tiff(path, textured_tissue(height_px, width_px, rng))


def write_tissue_pair(
    folder: Path, width_px: int, height_px: int, mpp_um: float
) -> dict[str, Path]:
    """A confocal-like pair: nuclei bright in FCM, fibres in RCM, tissue in an ellipse."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height_px, 0:width_px].astype(np.float32)
    cx, cy = width_px / 2, height_px / 2
    wobble = 1 + 0.08 * np.sin(np.arctan2(yy - cy, xx - cx) * 5)
    inside = ((xx - cx) / (0.42 * width_px)) ** 2 + ((yy - cy) / (0.4 * height_px)) ** 2
    tissue = (inside < wobble**2).astype(np.float32)
    fcm = np.full((height_px, width_px), 0.12, np.float32)
    count = width_px * height_px // 900
    for x, y, radius_px, value in zip(
        rng.uniform(0, width_px, count),
        rng.uniform(0, height_px, count),
        rng.uniform(3, 7, count),
        rng.uniform(0.55, 0.95, count),
        strict=True,
    ):
        x0, x1 = int(max(0, x - radius_px - 1)), int(min(width_px, x + radius_px + 2))
        y0, y1 = int(max(0, y - radius_px - 1)), int(min(height_px, y + radius_px + 2))
        disc = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= radius_px**2
        fcm[y0:y1, x0:x1][disc] = value
    fibres = 0.45 + 0.2 * np.sin(xx / 11 + 3 * np.sin(yy / 37)) * np.cos(yy / 17)
    rcm = fibres * rng.uniform(0.6, 1.0, fibres.shape)  # speckle
    resolution = (1e4 / mpp_um, 1e4 / mpp_um)
    paths = {}
    for name, image in (("rcm", rcm * tissue), ("fcm", fcm * tissue)):
        paths[name] = folder / f"{name}.tif"
        tifffile.imwrite(
            paths[name],
            (np.clip(image, 0, 1) * 255).astype(np.uint8),
            resolution=resolution,
            resolutionunit="CENTIMETER",
        )
    return paths
