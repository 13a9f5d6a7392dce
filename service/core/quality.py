"""Stain-quality measures on real confocal, as the project defines them (docs/models.md).

- ``fd_lab``: Frechet distance between Gaussian fits of the CIELab values of two sets of
  tissue pixels (FD_skin takes the nearest real skin H&E slide of a reference set).
- ``checkerboard_db``: the strongest spectral peak of the luminance at the 2- and 4-px periods
  over its surroundings, in dB (a regular grid left by transposed convolutions).
- ``glass_rgb``: the mean colour where neither FCM nor RCM carries signal.
- ``nuclear_r``: Pearson r between the output's haematoxylin optical density and FCM over
  tissue: does the stain keep the nuclei FCM shows (the per-slide faithfulness check)?
- ``swd``: sliced Wasserstein distance between 7x7 patches of Laplacian pyramids of real H&E
  and of outputs (texture at every scale, with or without colour).

numpy only, so the engine's report and ``dscm-train evaluate`` compute the same numbers.
"""

from __future__ import annotations

import itertools

import numpy as np

from service.core.colour import rgb_to_lab
from service.core.filters import median3x3, otsu_threshold
from service.core.stain import gareau_stain
from service.vocabulary.report import FaithfulnessCheck

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


def faithfulness_qc(output_rgb: np.ndarray, fcm: np.ndarray, rcm: np.ndarray) -> FaithfulnessCheck:
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
        return FaithfulnessCheck(None, None, None, note="too little tissue to check")
    ratio = nuc_r / reference
    return FaithfulnessCheck(
        nuc_r=round(nuc_r, 4),
        nuc_r_gareau=round(reference, 4),
        ratio=round(ratio, 4),
        threshold=QC_MIN_RATIO,
        flag=QC_FLAG if ratio < QC_MIN_RATIO else None,
        tissue_fraction=round(float(tissue.mean()), 4),
        overview_px=[int(fcm.shape[1]), int(fcm.shape[0])],
    )


# Texture: sliced Wasserstein distance (SWD) between Laplacian-pyramid patch descriptors.
SWD_PATCH_PX = 7
SWD_PATCHES_PER_LEVEL = 128  # per image per level
SWD_PROJECTIONS = 512
SWD_MIN_LEVEL_PX = 16  # the coarsest level is the first whose shorter side would fall below
_BINOMIAL_5 = np.asarray([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def _binomial_blur(image: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Separable 5x5 binomial filter of ``(H, W, C)`` with reflected borders (x ``gain``**2)."""
    kernel = _BINOMIAL_5 * gain
    out = np.asarray(image, np.float32)
    for axis in (0, 1):
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (2, 2)
        padded = np.pad(out, pad, mode="reflect" if size > 2 else "edge")
        taps = [np.take(padded, np.arange(k, k + size), axis=axis) for k in range(5)]
        out = sum((w * tap for w, tap in zip(kernel, taps, strict=True)), np.zeros_like(out))
    return out


def _upsample(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-insertion x2 then the binomial filter (x4 gain), cropped to ``shape``."""
    height, width = shape[0], shape[1]
    spread = np.zeros((2 * image.shape[0], 2 * image.shape[1], image.shape[2]), np.float32)
    spread[::2, ::2] = image
    return _binomial_blur(spread, gain=2.0)[:height, :width]


def pyramid_levels(height_px: int, width_px: int, min_level_px: int = SWD_MIN_LEVEL_PX) -> int:
    """How many pyramid levels an image has when halving stops at ``min_level_px``."""
    side = min(height_px, width_px)
    if side < min_level_px:
        raise ValueError(f"an image of {side} px is smaller than the {min_level_px} px level")
    return 1 + int(np.floor(np.log2(side / min_level_px)))


def laplacian_pyramid(rgb_hwc: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of ``(H, W, 3)`` RGB in [0, 1]: ``levels - 1`` band-pass images, finest
    first, then the low-pass residual (5x5 binomial kernel)."""
    gaussian = [np.asarray(rgb_hwc, np.float32)]
    for _ in range(levels - 1):
        gaussian.append(_binomial_blur(gaussian[-1])[::2, ::2])
    bands = [g - _upsample(coarse, g.shape) for g, coarse in itertools.pairwise(gaussian)]
    return [*bands, gaussian[-1]]


def swd_descriptors(
    images: list[np.ndarray],
    levels: int,
    seed: int = 0,
    patches_per_level: int = SWD_PATCHES_PER_LEVEL,
) -> list[np.ndarray]:
    """Per pyramid level, ``(images x patches, 7, 7, 3)`` patches at random positions (seeded:
    the same seed picks the same positions in images of the same size). Images are ``(H, W, 3)``
    uint8 or float in [0, 1], all at the same pixel size."""
    rng = np.random.default_rng(seed)
    per_level: list[list[np.ndarray]] = [[] for _ in range(levels)]
    for image in images:
        unit = np.asarray(image, np.float32)
        unit = unit / 255.0 if np.asarray(image).dtype == np.uint8 else unit
        for level, band in enumerate(laplacian_pyramid(unit, levels)):
            windows = np.lib.stride_tricks.sliding_window_view(
                band, (SWD_PATCH_PX, SWD_PATCH_PX), axis=(0, 1)
            )  # (H - 6, W - 6, 3, 7, 7)
            ys = rng.integers(0, windows.shape[0], patches_per_level)
            xs = rng.integers(0, windows.shape[1], patches_per_level)
            per_level[level].append(np.moveaxis(windows[ys, xs], 1, -1))
    return [np.concatenate(patches) for patches in per_level]


def _normalised(patches: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    flat = (patches - mean) / np.maximum(std, 1e-8)
    return flat.reshape(len(patches), -1).astype(np.float32)


def _channel_stats(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each colour channel over every patch and position."""
    values = patches.reshape(-1, patches.shape[-1]).astype(np.float64)
    return values.mean(axis=0), values.std(axis=0)


def _sorted_projections(points: np.ndarray, directions: np.ndarray, count: int) -> np.ndarray:
    """The 1-D distributions of ``points`` along each direction, ``(directions, count)``
    quantiles (linear interpolation when the set has another size)."""
    projected = np.sort(directions @ points.T, axis=1)
    size = len(points)
    if size == count:
        return projected
    # the quantile at (i + 0.5) / count of samples placed at (j + 0.5) / size
    position = np.clip((np.arange(count) + 0.5) * size / count - 0.5, 0.0, size - 1.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = (position - low).astype(np.float32)
    interpolated: np.ndarray = projected[:, low] * (1.0 - frac) + projected[:, high] * frac
    return interpolated


def sliced_wasserstein(
    points_a: np.ndarray, points_b: np.ndarray, projections: int = SWD_PROJECTIONS, seed: int = 0
) -> float:
    """Mean over ``projections`` random unit directions of the 1-D Wasserstein-1 distance
    between the two point sets ``(N, D)`` and ``(M, D)`` projected on it (quantiles matched)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((projections, points_a.shape[1])).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    count = max(len(points_a), len(points_b))
    sorted_a = _sorted_projections(points_a, directions, count)
    sorted_b = _sorted_projections(points_b, directions, count)
    return float(np.abs(sorted_a - sorted_b).mean())


def swd(real: list[np.ndarray], fake: list[np.ndarray], seed: int = 0) -> dict[str, list[float]]:
    """SWD between two sets of ``(H, W, 3)`` images at the same pixel size, per pyramid level
    (finest first) and two ways: ``swd``, both sets normalised per colour channel with the
    REAL set's mean and std (colour differences count), and ``swd_texture``, each set with its
    own (texture only). ``level_px``: each level's shorter side for the smallest image."""
    return swd_of_descriptors(*descriptor_sets(real, fake, seed), seed=seed)


def descriptor_sets(
    real: list[np.ndarray], fake: list[np.ndarray], seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Patch descriptors of both sets on a common number of levels, and each level's size."""
    side = min(min(image.shape[:2]) for image in [*real, *fake])
    levels = pyramid_levels(side, side)
    level_px = [side >> level for level in range(levels)]
    return swd_descriptors(real, levels, seed), swd_descriptors(fake, levels, seed), level_px


def swd_of_descriptors(
    real: list[np.ndarray], fake: list[np.ndarray], level_px: list[int], seed: int = 0
) -> dict[str, list[float]]:
    """:func:`swd` from descriptors already extracted (one array per level, same levels)."""
    result: dict[str, list[float]] = {"level_px": [float(p) for p in level_px]}
    colour, texture = [], []
    for level, (real_patches, fake_patches) in enumerate(zip(real, fake, strict=True)):
        mean, std = _channel_stats(real_patches)
        colour.append(
            sliced_wasserstein(
                _normalised(real_patches, mean, std),
                _normalised(fake_patches, mean, std),
                seed=seed + level,
            )
        )
        texture.append(
            sliced_wasserstein(
                _normalised(real_patches, mean, std),
                _normalised(fake_patches, *_channel_stats(fake_patches)),
                seed=seed + level,
            )
        )
    result["swd"] = colour
    result["swd_texture"] = texture
    return result
