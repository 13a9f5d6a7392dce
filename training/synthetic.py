"""Synthetic confocal (FCM + RCM) from H&E: the domain A we can build without a confocal scanner.

Ruifrok-Johnston colour deconvolution splits an H&E image into hematoxylin and eosin
concentrations. Hematoxylin becomes fluorescence (acridine orange stains nuclei bright), eosin
becomes reflectance (collagen and cytoplasm reflect), and reflectance gets multiplicative speckle
``~ Gauss(1, 0.2)``. Intensities are mapped to what was measured on the real Vivascope crops
(dark: median 0.22-0.25, 99th percentile 0.46-0.57; local contrast ~0.09 FCM, 0.10-0.12 RCM):
the speckle is drawn per pixel with std 0.2 on a grid finer than the output pixel and
integrated over it (a detector pixel averages several speckle grains), which gives the measured
local contrast. numpy only (pyvips for reading), so the sample maker and tests need no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.core.quality import box_blur

# Ruifrok & Johnston (2001) stain vectors (optical density per RGB channel), as in scikit-image.
HEMATOXYLIN_OD = (0.65, 0.70, 0.29)
EOSIN_OD = (0.07, 0.99, 0.11)
DAB_OD = (0.27, 0.57, 0.78)

SPECKLE_MEAN = 1.0
SPECKLE_STD = 0.2
# Targets measured on the real 8-bit crops (shared/data/confocal): the tissue median and 99th
# percentile the affine map aims at, the chroma below which the H&E shows glass, and the
# window and tissue floor of the local-contrast measure. docs/training.md ("Synthetic
# confocal") lists the measurements.
TARGET_MEDIAN = 0.25  # over tissue; glass pulls the whole-image median a little lower
TARGET_P99 = 0.51
GLASS_CHROMA = 0.04
TISSUE_CHROMA = 0.08
LOCAL_WINDOW_PX = 7
TISSUE_LOCAL_MEAN = 0.1


def _stain_matrix() -> np.ndarray:
    rows = np.asarray([HEMATOXYLIN_OD, EOSIN_OD, DAB_OD], dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


_OD_TO_CONC = np.linalg.inv(_stain_matrix()).astype(np.float32)


def to_unit_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8/uint16/float RGB ``(H, W, 3)`` (alpha dropped) to float32 in [0, 1]."""
    pixels = np.asarray(rgb)[..., :3]
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / np.float32(65535.0)
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)


def deconvolve_he(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentrations (optical-density units, >= 0) of an H&E image.

    ``rgb`` is ``(H, W, 3)`` (uint8, uint16 or float in [0, 1]); returns two float32 ``(H, W)``.
    """
    unit = to_unit_rgb(rgb)
    od = -np.log10(np.clip(unit, 1.0 / 256.0, 1.0))
    conc = od.reshape(-1, 3) @ _OD_TO_CONC
    conc = np.maximum(conc, 0.0).reshape(unit.shape)
    return np.ascontiguousarray(conc[..., 0]), np.ascontiguousarray(conc[..., 1])


@dataclass(frozen=True)
class ConfocalStats:
    """Intensity statistics of one confocal mode in [0, 1] (what we match synthetic data to)."""

    median: float
    p99: float
    local_contrast: float  # median std/mean in 7x7 windows where the local mean > 0.1

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def confocal_stats(image: np.ndarray) -> ConfocalStats:
    """Median, 99th percentile and local contrast of a ``(H, W)`` image in [0, 1]."""
    values = image.astype(np.float32)
    mean = box_blur(values, LOCAL_WINDOW_PX)
    square = box_blur(values * values, LOCAL_WINDOW_PX)
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    tissue = mean > TISSUE_LOCAL_MEAN
    contrast = float(np.median(std[tissue] / mean[tissue])) if tissue.any() else 0.0
    return ConfocalStats(
        median=float(np.median(values)),
        p99=float(np.percentile(values, 99)),
        local_contrast=contrast,
    )


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W)`` (reflected borders); ``sigma_px <= 0`` copies."""
    if sigma_px <= 0:
        return image.astype(np.float32, copy=True)
    radius = max(1, int(np.ceil(3 * sigma_px)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        length = out.shape[axis]
        acc = np.zeros_like(out)
        for index, weight in enumerate(taps):
            acc += weight * np.take(padded, np.arange(index, index + length), axis=axis)
        out = acc
    return out


def quantile_match(
    values: np.ndarray,
    where: np.ndarray | None = None,
    median: float = TARGET_MEDIAN,
    p99: float = TARGET_P99,
) -> np.ndarray:
    """Affine map moving the median and 99th percentile of ``values[where]`` to the targets.

    Affine, not a power law: a power law lifts faint, noisy deconvolution residue into visible
    texture and overshoots the real crops' local contrast.
    """
    sample = values[where] if where is not None and where.any() else values
    src_median, src_p99 = np.percentile(sample.astype(np.float64), [50, 99])
    gain = (p99 - median) / max(src_p99 - src_median, 1e-6)
    shifted = (values.astype(np.float32) - np.float32(src_median)) * np.float32(gain)
    return (shifted + np.float32(median)).astype(np.float32)


def tissue_weight(unit_rgb: np.ndarray, sigma_px: float = 3.0) -> np.ndarray:
    """0 on glass, 1 on tissue: a ramp of the (blurred) chroma ``max(RGB) - min(RGB)``
    between ``GLASS_CHROMA`` and ``TISSUE_CHROMA``. Confocal captures are dark where an H&E
    slide shows glass; glass is grey or white, stained tissue is coloured (optical density
    does not separate them: pale dermis can be lighter than grey glass)."""
    chroma = gaussian_blur(unit_rgb.max(axis=2) - unit_rgb.min(axis=2), sigma_px)
    ramp = (chroma - np.float32(GLASS_CHROMA)) / np.float32(TISSUE_CHROMA - GLASS_CHROMA)
    return np.clip(ramp, 0.0, 1.0).astype(np.float32)


def speckle_field(
    shape: tuple[int, int],
    rng: np.random.Generator,
    std: float = SPECKLE_STD,
    grains_per_px: int = 1,
) -> np.ndarray:
    """Multiplicative speckle, mean 1: Gauss(1, std) per grain, averaged over
    ``grains_per_px`` x ``grains_per_px`` grains in each pixel (1 = the paper's model)."""
    height, width = shape
    fine = rng.normal(SPECKLE_MEAN, std, size=(height * grains_per_px, width * grains_per_px))
    if grains_per_px > 1:
        fine = fine.reshape(height, grains_per_px, width, grains_per_px).mean(axis=(1, 3))
    return fine.astype(np.float32)


@dataclass(frozen=True)
class SyntheticConfig:
    """How H&E concentrations become confocal intensities."""

    fcm_eosin_weight: float = 0.15  # acridine orange also lights cytoplasm faintly
    rcm_hematoxylin_weight: float = 0.1  # nuclei reflect a little
    background: float = 0.02  # detector floor where there is no tissue
    psf_sigma_px: float = 1.0  # optical blur: confocal sections are smoother than H&E scans
    rcm_grains_per_px: int = 3  # speckle grains averaged per pixel (std 0.2 -> 0.067)
    fcm_noise_std: float = 0.07  # multiplicative shot-like noise on fluorescence


@dataclass(frozen=True)
class SyntheticConfocal:
    """A synthetic pair in [0, 1] (float32 ``(H, W)``), like raw normalised Vivascope captures."""

    fcm: np.ndarray
    rcm: np.ndarray
    rcm_clean: np.ndarray  # before speckle (the despeckling ground truth)


def synthesize_confocal(
    rgb: np.ndarray, seed: int = 0, config: SyntheticConfig | None = None
) -> SyntheticConfocal:
    """FCM and RCM from an H&E image ``(H, W, 3)``; deterministic for a given seed."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    hema, eosin = deconvolve_he(rgb)
    fcm_raw = gaussian_blur(hema + cfg.fcm_eosin_weight * eosin, cfg.psf_sigma_px)
    rcm_raw = gaussian_blur(eosin + cfg.rcm_hematoxylin_weight * hema, cfg.psf_sigma_px)
    floor = np.float32(cfg.background)
    weight = tissue_weight(to_unit_rgb(rgb))
    tissue = weight > 0.5
    fcm_clean = floor + np.maximum(quantile_match(fcm_raw, tissue) - floor, 0.0) * weight
    rcm_clean = floor + np.maximum(quantile_match(rcm_raw, tissue) - floor, 0.0) * weight
    fcm_noise = rng.normal(1.0, cfg.fcm_noise_std, size=fcm_clean.shape).astype(np.float32)
    speckle = speckle_field(rcm_clean.shape, rng, grains_per_px=cfg.rcm_grains_per_px)
    fcm = np.clip(fcm_clean * fcm_noise, 0.0, 1.0)
    rcm = np.clip(rcm_clean * speckle, 0.0, 1.0)
    return SyntheticConfocal(fcm=fcm, rcm=rcm, rcm_clean=np.clip(rcm_clean, 0.0, 1.0))


def read_rgb(path: Path) -> np.ndarray:
    """An RGB image file as ``(H, W, 3)`` uint8 (pyvips; grey is repeated, alpha dropped)."""
    import pyvips

    image = pyvips.Image.new_from_file(str(path), access="sequential")
    if image.format != "uchar":
        image = image.cast("uchar") if image.format == "char" else image.colourspace("srgb")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    pixels: np.ndarray = image.numpy()
    return np.ascontiguousarray(pixels[..., :3])


def read_gray_unit(path: Path) -> np.ndarray:
    """A single-band image file (8- or 16-bit) as float32 ``(H, W)`` in [0, 1]."""
    import pyvips

    image = pyvips.Image.new_from_file(str(path))
    pixels = image.numpy()
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    full_scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    return (pixels.astype(np.float32) / np.float32(full_scale)).astype(np.float32)


def main() -> None:
    """Print the statistics of the real crops beside a synthetic pair (a sanity check)."""
    import sys

    data_root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    for mode in ("fcm", "rcm"):
        path = data_root / "confocal" / f"crop-512-{mode}.jpg"
        if path.is_file():
            print(f"real {mode}:", confocal_stats(read_gray_unit(path)).to_dict())
    for he_path in sorted((data_root / "he" / "skin").glob("wikimedia-*.jpg")):
        pair = synthesize_confocal(read_rgb(he_path), seed=0)
        print(f"synthetic fcm ({he_path.name}):", confocal_stats(pair.fcm).to_dict())
        print(f"synthetic rcm ({he_path.name}):", confocal_stats(pair.rcm).to_dict())


if __name__ == "__main__":
    main()
