"""Stain-quality measures on real confocal, as the project defines them (docs/models.md).

- ``fd_lab``: Frechet distance between Gaussian fits of the CIELab values of two sets of
  tissue pixels (FD_skin takes the nearest real skin H&E slide of a reference set).
- ``checkerboard_db``: the strongest spectral peak of the luminance at the 2- and 4-px periods
  over its surroundings, in dB (a regular grid left by transposed convolutions).
- ``glass_rgb``: the mean colour where neither FCM nor RCM carries signal.
- ``nuclear_r``: Pearson r between the output's haematoxylin optical density and FCM over
  tissue: does the stain keep the nuclei FCM shows (the per-slide faithfulness check)?

numpy only, so the engine's report and ``dscm-train evaluate`` compute the same numbers.
"""

from __future__ import annotations

import numpy as np

from service.core.colour import rgb_to_lab
from service.core.filters import median3x3, otsu_threshold
from service.core.stain import gareau_stain

OUTPUT_TISSUE_CAP = 0.3  # Otsu threshold on smoothed FCM + RCM never above this
GLASS_LEVEL = 0.15  # FCM and RCM both below this (smoothed, eroded) is glass
SMOOTH_PX = 5
ERODE_PX = 7
REFERENCE_MAX_L = 88.0
REFERENCE_MIN_CHROMA = 10.0
REFERENCE_MIN_L = 5.0
CB_WINDOW_PX = 256
CB_PEAK_RADIUS = 1  # 3x3 neighbourhood
CB_RING = (4, 10)  # bins around the peak that make its surroundings
MIN_PIXELS = 64
# The faithfulness check flags a slide whose nuc_r falls below this fraction of what Gareau's
# linear stain (which cannot invent or erase nuclei) reaches on the same slide.
QC_MIN_RATIO = 0.9
QC_FLAG = "review against FCM"

# scikit-image's hed_from_rgb (the inverse of Ruifrok & Johnston's stain matrix).
_RGB_FROM_HED = np.asarray([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# haematoxylin OD = log(rgb) / log(1e-6) @ this (rgb2hed's first column; also the training loss)
HAEMATOXYLIN_FROM_LOG_RGB = tuple(float(v) for v in _HED_FROM_RGB[:, 0])


def box_blur(image: np.ndarray, size_px: int) -> np.ndarray:
    """Mean over ``size_px`` x ``size_px`` windows (edges repeated), via an integral image."""
    radius = size_px // 2
    padded = np.pad(
        np.asarray(image, np.float64), ((radius + 1, radius), (radius + 1, radius)), "edge"
    )
    integral = padded.cumsum(0).cumsum(1)
    height, width = image.shape
    total = (
        integral[size_px : size_px + height, size_px : size_px + width]
        - integral[:height, size_px : size_px + width]
        - integral[size_px : size_px + height, :width]
        + integral[:height, :width]
    )
    return (total / (size_px * size_px)).astype(np.float32)


def output_tissue(fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
    """Tissue of a stained output: smoothed FCM + RCM above Otsu's threshold (capped at 0.3).

    ``fcm`` and ``rcm`` are normalised to [0, 1] like the engine does.
    """
    score = box_blur(fcm.astype(np.float32) + rcm.astype(np.float32), SMOOTH_PX)
    threshold = min(otsu_threshold(score[::2, ::2]), OUTPUT_TISSUE_CAP)
    mask: np.ndarray = score > threshold
    return mask


def glass_mask(fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
    """Glass: smoothed FCM and RCM both below 0.15, eroded so that no tissue edge counts."""
    low = (box_blur(fcm, SMOOTH_PX) < GLASS_LEVEL) & (box_blur(rcm, SMOOTH_PX) < GLASS_LEVEL)
    # erosion by a square: the box mean of the mask is 1 only where the whole window is glass
    eroded: np.ndarray = box_blur(low.astype(np.float32), ERODE_PX) > 0.999
    return eroded


def reference_tissue(lab: np.ndarray) -> np.ndarray:
    """Tissue of a real H&E image, from its Lab ``(..., 3)``: L* < 88 or chroma > 10, L* > 5."""
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    mask: np.ndarray = ((lab[..., 0] < REFERENCE_MAX_L) | (chroma > REFERENCE_MIN_CHROMA)) & (
        lab[..., 0] > REFERENCE_MIN_L
    )
    return mask


def gaussian_fit(lab_pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``(N, 3)`` Lab values."""
    values = np.asarray(lab_pixels, np.float64).reshape(-1, 3)
    if values.shape[0] < MIN_PIXELS:
        raise ValueError(f"only {values.shape[0]} tissue pixels: too few for a colour fit")
    return values.mean(axis=0), np.cov(values, rowvar=False)


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def fd_lab(fit_a: tuple[np.ndarray, np.ndarray], fit_b: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between two Gaussians, in Lab units: the square root of
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (FID's formula)."""
    (mean_a, cov_a), (mean_b, cov_b) = fit_a, fit_b
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * cross))
    return float(np.sqrt(max(value, 0.0)))


def luminance(rgb_hwc: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of ``(H, W, 3)`` RGB (any scale)."""
    rgb = np.asarray(rgb_hwc, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _power_spectrum(gray: np.ndarray, window_px: int) -> np.ndarray:
    """Welch: the mean power spectrum of Hann-windowed ``window_px`` squares (half overlap)."""
    height, width = gray.shape
    side = min(window_px, height, width)
    side -= side % 4
    hann = np.hanning(side).astype(np.float64)
    window = np.outer(hann, hann)
    step = max(side // 2, 1)
    total = np.zeros((side, side))
    count = 0
    for top in range(0, height - side + 1, step):
        for left in range(0, width - side + 1, step):
            block = gray[top : top + side, left : left + side].astype(np.float64)
            block = (block - block.mean()) * window
            total += np.abs(np.fft.fft2(block)) ** 2
            count += 1
    spectrum: np.ndarray = total / max(count, 1)
    return spectrum


def checkerboard_db(rgb_hwc: np.ndarray, window_px: int = CB_WINDOW_PX) -> float:
    """Strongest peak at the 2- and 4-px periods (frequencies 1/2 and 1/4 on either axis and the
    diagonals) of the luminance spectrum: its 3x3 neighbourhood mean over the mean of the ring
    4-10 bins around it, in dB. A flat or natural image gives about 0 dB; a grid, far more."""
    spectrum = _power_spectrum(luminance(rgb_hwc), window_px)
    side = spectrum.shape[0]
    offsets = np.arange(-CB_RING[1], CB_RING[1] + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    distance = np.maximum(np.abs(dy), np.abs(dx))
    ring = (distance >= CB_RING[0]) & (distance <= CB_RING[1])
    peak = distance <= CB_PEAK_RADIUS
    tiny = 1e-12 * max(float(spectrum.mean()), 1e-12)
    best = -np.inf
    for fy, fx in ((0, 4), (4, 0), (4, 4), (4, -4), (0, 2), (2, 0), (2, 2)):
        cy = side // fy if fy else 0
        cx = (side // abs(fx)) * (1 if fx > 0 else -1) if fx else 0
        patch = spectrum[np.ix_((cy + offsets) % side, (cx + offsets) % side)]
        ratio = (patch[peak].mean() + tiny) / (patch[ring].mean() + tiny)
        best = max(best, 10.0 * float(np.log10(ratio)))
    return best


def glass_rgb(rgb_hwc: np.ndarray, fcm: np.ndarray, rcm: np.ndarray) -> tuple[float, ...] | None:
    """Mean RGB (0-255) over glass, or None when the image has too little glass to say."""
    mask = glass_mask(fcm, rcm)
    if int(mask.sum()) < MIN_PIXELS:
        return None
    mean = np.asarray(rgb_hwc, np.float64)[mask].mean(axis=0)
    return tuple(round(float(v), 1) for v in mean)


def haematoxylin_od(rgb_hwc: np.ndarray) -> np.ndarray:
    """The haematoxylin channel of scikit-image's ``rgb2hed`` for ``(H, W, 3)`` RGB in [0, 1]."""
    rgb = np.maximum(np.asarray(rgb_hwc, np.float64), 1e-6)
    log_adjust = np.log(1e-6)
    stains = (np.log(rgb) / log_adjust) @ _HED_FROM_RGB
    return np.maximum(stains[..., 0], 0.0).astype(np.float32)


def nuclear_r(rgb_hwc: np.ndarray, fcm: np.ndarray, tissue: np.ndarray) -> float:
    """Pearson r over ``tissue`` between the output's haematoxylin OD and normalised FCM."""
    if int(tissue.sum()) < MIN_PIXELS:
        return float("nan")
    hema = haematoxylin_od(rgb_hwc)[tissue].astype(np.float64)
    signal = np.asarray(fcm, np.float64)[tissue]
    if hema.std() == 0 or signal.std() == 0:
        return 0.0
    return float(np.corrcoef(hema, signal)[0, 1])


def lab_of(rgb_hwc: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 or [0, 1] RGB -> Lab."""
    rgb = np.asarray(rgb_hwc)
    unit = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    return rgb_to_lab(unit)


def faithfulness_qc(output_rgb: np.ndarray, fcm: np.ndarray, rcm: np.ndarray) -> dict[str, object]:
    """The per-slide faithfulness check on overviews of the same size: nuc_r of the output,
    nuc_r of Gareau's stain of the same FCM/RCM, their ratio, and the flag when the ratio
    falls below QC_MIN_RATIO (the stain may recolour but must not invent or erase nuclei).

    ``output_rgb`` is ``(H, W, 3)`` uint8, ``fcm``/``rcm`` normalised ``(H, W)`` in [0, 1].
    """
    tissue = output_tissue(fcm, rcm)
    unit = np.asarray(output_rgb, np.float32) / 255.0
    nuc_r = nuclear_r(unit, fcm, tissue)
    gareau = np.moveaxis(gareau_stain(fcm, median3x3(rcm)), 0, -1)
    reference = nuclear_r(gareau, fcm, tissue)
    if not (np.isfinite(nuc_r) and np.isfinite(reference)) or reference <= 0:
        return {"nuc_r": None, "nuc_r_gareau": None, "ratio": None, "flag": None,
                "note": "too little tissue to check"}  # fmt: skip
    ratio = nuc_r / reference
    return {
        "nuc_r": round(nuc_r, 4),
        "nuc_r_gareau": round(reference, 4),
        "ratio": round(ratio, 4),
        "threshold": QC_MIN_RATIO,
        "flag": QC_FLAG if ratio < QC_MIN_RATIO else None,
        "tissue_fraction": round(float(tissue.mean()), 4),
        "overview_px": [int(fcm.shape[1]), int(fcm.shape[0])],
    }
