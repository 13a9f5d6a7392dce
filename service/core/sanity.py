"""Input sanity: is the file given as FCM fluorescence and the one given as RCM reflectance?

Measured on the normalised thumbnails the plan phase already makes, over their tissue mask.
Fluorescence (acridine orange) shows nuclei as sparse bright blobs on a darker background;
reflectance shows broad bright structure (collagen, cytoplasm) under speckle. Each feature is
the difference FCM minus RCM of one measure, so swapping the files flips its sign exactly and
two modes that look alike (no evidence either way) give about zero:

- ``skew``: skewness of the intensities over tissue (sparse bright blobs skew right);
- ``blob``: skewness of a band-pass at nucleus scale, box 3 px minus box 15 px (bright blobs
  the size of a nucleus on a darker surround; the pixel-scale speckle is averaged out);
- ``peak``: skewness of the image minus its 15 px box mean (bright peaks over the surround).

The evidence is their mean. Positive: the pair is the right way round. Clearly negative, with
each of the three clearly negative on its own: swapped. The middle is flagged, never refused:
a false refusal of a real slide costs far more than a missed swap. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.core.filters import box_mean
from service.vocabulary.report import ModeCheckSummary, SwapThresholds

ModeCheckOutcome = Literal["ok", "doubtful", "swapped", "identical"]

# Thresholds, measured with `python -m training.mode_check ../shared/data` (docs/models.md,
# "Input check"). Correct pairs read evidence +0.47 (bundled sample), +0.46 (real Vivascope
# crop), about +5 (tests' confocal_like) and +0.20 to +1.43 on 20 confocal-like pairs made from
# skin whole-slide crops; pairs without FCM/RCM signal (the tests' textured and wave pairs)
# -0.05 to +0.05. Swapped, the signs flip. Refusing at -0.30 leaves 0.49 between the worst
# correct pair seen and a refusal; the flag at -0.15 catches weaker swaps, no correct pair.
REFUSE_EVIDENCE = -0.30  # at or below, with every feature at or below REFUSE_EACH: swapped
# Each feature must agree on its own: two reflectance-like images, one with faint nuclei, read
# blob -0.80 but skew -0.04 (evidence -0.33); that is flagged, not refused.
REFUSE_EACH = -0.10
DOUBT_EVIDENCE = -0.15  # at or below: doubtful (flagged in the report, the viewer, the CLI)
# Identical: the thumbnails correlate at least this much and differ by at most this on average
# (normalised units), and a full-resolution crop correlates as much: the thumbnail of the
# tests' 15000 px pair of waves a degree apart under different noise is one image, the
# noise that tells them apart averaged away.
IDENTICAL_R = 0.995
IDENTICAL_MAX_DIFF = 0.02
BLOB_SMALL_PX = 3
BLOB_LARGE_PX = 15
STAT_STRIDE = 2
MIN_TISSUE_PX = 1000  # fewer tissue pixels on the thumbnail: no evidence, ok
MIN_STD = 1e-3  # a flat mode carries no evidence
DOUBT_FLAG = "check that FCM and RCM are not swapped"
FEATURES = ("skew", "blob", "peak")


@dataclass(frozen=True)
class ModeCheck:
    """The verdict on an FCM/RCM pair, with the measures it rests on."""

    outcome: ModeCheckOutcome
    evidence: float  # mean of ``features``; > 0: FCM looks like FCM and RCM like RCM
    features: dict[str, float]
    correlation: float  # Pearson r of the two thumbnails
    allowed: bool = False  # the caller accepted a refused pair (allow_swapped)

    @property
    def refused(self) -> bool:
        """Whether the pair is refused: the modes look swapped or identical and the caller did not
        allow it."""
        return self.outcome in ("swapped", "identical") and not self.allowed

    @property
    def flag(self) -> str | None:
        """A flag for the report and the viewer, or None when the pair looks right."""
        if self.outcome == "ok":
            return None
        if self.outcome == "identical":
            return "FCM and RCM are the same image"
        if self.outcome == "swapped":
            return "FCM and RCM look swapped (accepted with allow_swapped)"
        return DOUBT_FLAG

    def message(self) -> str:
        """The one-line refusal: what was found and what to do."""
        if self.outcome == "identical":
            found = "the FCM and RCM files hold the same image"
            fix = "give the fluorescence and the reflectance capture of the scan"
        else:
            found = (
                "the file given as FCM looks like reflectance and the one given as RCM like "
                f"fluorescence (evidence {self.evidence:+.2f})"
            )
            fix = (
                "swap them (--rcm/--fcm, the API's rcm/fcm files, or --rcm-detector/--fcm-detector)"
            )
        return f"{found}: {fix}, or stain them as given with --allow-swapped (API: allow_swapped)"

    def summary(self) -> ModeCheckSummary:
        """The check, its evidence and thresholds, rounded for the report."""
        return ModeCheckSummary(
            outcome=self.outcome,
            evidence=round(self.evidence, 4),
            features={name: round(value, 4) for name, value in self.features.items()},
            correlation=round(self.correlation, 4),
            thresholds=SwapThresholds(doubtful=DOUBT_EVIDENCE, swapped=REFUSE_EVIDENCE),
            allowed=self.allowed,
            flag=self.flag,
        )


@dataclass(frozen=True)
class Window:
    """One place of the pair, both modes normalised, with its tissue mask."""

    fcm: np.ndarray
    rcm: np.ndarray
    tissue: np.ndarray


def _skewness(values: np.ndarray) -> float:
    centred = values.astype(np.float32) - np.float32(values.mean(dtype=np.float64))
    std = float(np.sqrt(np.mean(centred * centred, dtype=np.float64)))
    if std < MIN_STD:
        return 0.0
    return float(np.mean(centred * centred * centred, dtype=np.float64) / std**3)


def feature_samples(unit: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """The values the three measures take over ``tissue`` in one normalised image (every second
    pixel each way: a quarter of the work, the same estimate)."""
    image = np.asarray(unit, np.float32)
    surround = box_mean(image, BLOB_LARGE_PX)
    sample = (slice(None, None, STAT_STRIDE), slice(None, None, STAT_STRIDE))
    where = tissue[sample]
    return {
        "skew": image[sample][where],
        "blob": (box_mean(image, BLOB_SMALL_PX) - surround)[sample][where],
        "peak": (image - surround)[sample][where],
    }


def pooled_features(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """The skewness of each measure over the values of every image in ``samples`` together
    (windows of one slide are measured apart, so no filter reaches across their seams)."""
    return {name: _skewness(np.concatenate([s[name] for s in samples])) for name in FEATURES}


def mode_features(unit: np.ndarray, tissue: np.ndarray) -> dict[str, float]:
    """The three measures of one normalised mode over ``tissue`` (see the module docstring)."""
    return pooled_features([feature_samples(unit, tissue)])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a64.std() < MIN_STD or b64.std() < MIN_STD:
        return 0.0
    return float(np.corrcoef(a64, b64)[0, 1])


def check_modes(
    fcm_unit: np.ndarray,
    rcm_unit: np.ndarray,
    tissue: np.ndarray,
    allow_swapped: bool = False,
    look_for_identical: bool = True,
    windows: Sequence[Window] = (),
) -> ModeCheck:
    """Judge a pair from its normalised thumbnails ``(H, W)`` in [0, 1] and their tissue mask.

    Returns ``identical`` for one image given twice, ``swapped`` when the evidence is clearly
    negative and every feature agrees, ``doubtful`` in between, and ``ok`` otherwise, also when
    there is no evidence (flat, no tissue). The caller refuses ``swapped`` and ``identical``
    unless ``allow_swapped``; a thumbnail averages the noise away, so the caller confirms
    ``identical`` at full resolution (``same_image``) and otherwise asks again with
    ``look_for_identical`` off. ``windows``: full-resolution (FCM, RCM, tissue) crops of a
    slide larger than its thumbnail; the features are measured on them instead, at the scale
    of nuclei and speckle the thresholds were set at (on a thumbnail several times smaller both
    are averaged away and a swap reads ``ok``).
    """
    fcm = np.asarray(fcm_unit, np.float32)
    rcm = np.asarray(rcm_unit, np.float32)
    correlation = _correlation(fcm, rcm)
    if look_for_identical and correlation >= IDENTICAL_R:
        difference = float(np.mean(np.abs(fcm - rcm), dtype=np.float64))
        if difference <= IDENTICAL_MAX_DIFF:
            return ModeCheck("identical", 0.0, {}, correlation, allow_swapped)
    measured = list(windows) or [Window(fcm, rcm, np.asarray(tissue, bool))]
    if sum(int(w.tissue.sum()) for w in measured) < MIN_TISSUE_PX:
        return ModeCheck("ok", 0.0, {}, correlation, allow_swapped)
    of_fcm = pooled_features([feature_samples(w.fcm, w.tissue) for w in measured])
    of_rcm = pooled_features([feature_samples(w.rcm, w.tissue) for w in measured])
    features = {name: of_fcm[name] - of_rcm[name] for name in of_fcm}
    evidence = float(np.mean(list(features.values())))
    outcome: ModeCheckOutcome = "ok"
    if evidence <= REFUSE_EVIDENCE and all(v <= REFUSE_EACH for v in features.values()):
        outcome = "swapped"
    elif evidence <= DOUBT_EVIDENCE:
        outcome = "doubtful"
    return ModeCheck(outcome, evidence, features, correlation, allow_swapped)


def same_image(fcm_crop: np.ndarray, rcm_crop: np.ndarray) -> bool:
    """Whether two full-resolution crops of the same place are one image (their noise too)."""
    return _correlation(fcm_crop, rcm_crop) >= IDENTICAL_R
