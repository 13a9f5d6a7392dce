"""Fit the colour stage's target: the Lab look of one real skin H&E lab (``models/colour.json``).

The target is the mean and standard deviation of CIELab over the tissue of one slide's crops
(tissue as the stain-quality measures define it for real H&E: L* < 88 or chroma > 10, L* > 5).
One slide, not a pool: slides from different labs differ, and their pooled statistics describe
no real slide (the pooled fit is wider than any of them). The same functions normalise the
training H&E of other slides to this look (``normalise_he``), so the generator learns one look.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.core.colour import COLOUR_ROLE, ColourTransfer, LabAccumulator, LabStats
from service.core.quality import lab_of, reference_tissue
from training.data import TARGET_UM_PER_PX
from training.synthetic import read_rgb, to_unit_rgb

DEFAULT_TARGET_SLIDE = "he/skin-wsi/molluscum-contagiosum"
TARGET_GLOB = "*-core-*.jpg"


def he_tissue_stats(images: list[np.ndarray]) -> LabStats:
    """Pooled Lab statistics over the tissue of H&E images ``(H, W, 3)`` of one slide."""
    accumulator = LabAccumulator()
    for rgb in images:
        unit = to_unit_rgb(rgb)
        weight = reference_tissue(lab_of(unit)).astype(np.float32)
        accumulator.add(np.moveaxis(unit, -1, 0), weight)
    stats = accumulator.stats()
    if stats is None:
        raise ValueError("no tissue in these H&E images")
    return stats


def normalise_he(images: list[np.ndarray], target: LabStats) -> list[np.ndarray]:
    """H&E images of one slide moved to ``target``'s look (glass kept), ``(3, H, W)`` [0, 1]."""
    transfer = ColourTransfer.fit(he_tissue_stats(images), target)
    out = []
    for rgb in images:
        unit = to_unit_rgb(rgb)
        weight = reference_tissue(lab_of(unit)).astype(np.float32)
        out.append(transfer.apply(np.moveaxis(unit, -1, 0), weight))
    return out


def fit_colour_card(data_root: Path, slide: str = DEFAULT_TARGET_SLIDE) -> dict[str, Any]:
    """The colour card for the slide folder ``slide`` (relative to ``data_root``)."""
    paths = sorted((data_root / slide).glob(TARGET_GLOB)) or sorted(
        p for p in (data_root / slide).glob("*.jpg") if p.name != "overview.jpg"
    )
    if not paths:
        raise FileNotFoundError(f"no H&E crops under {data_root / slide}")
    stats = he_tissue_stats([read_rgb(p) for p in paths])
    return {
        "name": f"skin-he-{Path(slide).name}",
        "version": "1.0.0",
        "role": COLOUR_ROLE,
        "lab_mean": [round(v, 3) for v in stats.mean],
        "lab_std": [round(v, 3) for v in stats.std],
        "lab_cov": [[round(v, 3) for v in row] for row in stats.covariance()],
        "mpp_um": TARGET_UM_PER_PX,
        "method": (
            "Reinhard colour transfer in CIELab over tissue: the slide's own Lab mean and std "
            "(sampled tissue tiles, weighted by FCM + RCM signal) mapped onto these per "
            "channel; glass (no signal) keeps Gareau's white; lab_cov is for reference"
        ),
        "fitted_on": {
            "slide": slide,
            "crops": [p.name for p in paths],
            "tissue": "L* < 88 or chroma > 10, and L* > 5",
            "licence": "MIT (pathologyatlas)" if "skin-wsi" in slide else "see the data README",
        },
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def write_colour_card(card: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")
