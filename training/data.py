"""Data preparation: H&E images -> tissue patches split by source slide, with a manifest.

Splits are by *case*: every file of one TCGA case (a MoNuSeg slide, the crops of one glioma
slide, and a MoNuSeg and a glioma file of the same patient) lands in one split, so no tissue is
seen in training and evaluation both. Skin, the stain's target domain, is split by slide: two
real skin whole slides (``he/skin-wsi``) train the generator (``train_skin``, every tenth crop
``val_skin``), the third slide and the skin photograph are held out (``heldout_skin``).
Images are resampled to about the confocal pixel size (0.75 um/px: 40x scans by 1/3).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.filters import otsu_threshold
from training.synthetic import TISSUE_CHROMA, read_rgb, to_unit_rgb

MANIFEST_NAME = "manifest.json"
SPLITS = ("train_a", "train_b", "val", "test", "train_skin", "val_skin", "heldout_skin")
# Skin slides (folders of he/skin-wsi) that train the generator; the others are held out.
TRAIN_SKIN_SLIDES = ("keloid-scar", "molluscum-contagiosum")
SKIN_SOURCES = ("he/skin", "he/skin-wsi")
SKIN_VAL_EVERY = 10  # crop number divisible by this -> val_skin
# Skin crops include tissue edges with glass: the generator must see glass to keep it white.
SKIN_MIN_TISSUE = 0.05
# (folder, glob, licence, um/px of the scan)
SOURCES: tuple[tuple[str, str, str, float], ...] = (
    ("he/monuseg", "*.png", "CC BY-NC-SA 4.0 (MoNuSeg 2018)", 0.25),
    ("he/tcga-glioma", "*.png", "none stated (pengyzhang/cell_seg_matlab); do not ship", 0.25),
    ("he/skin", "wikimedia-*.jpg", "public domain (Wikimedia Commons, Kilbad)", 0.75),
    ("he/skin-wsi", "*/*-[0-9][0-9]-*.jpg", "MIT (pathologyatlas)", 0.75),
)
TARGET_UM_PER_PX = 0.75
_TCGA_CASE = re.compile(r"TCGA-[0-9A-Z]{2}-[0-9A-Z]{4}")


@dataclass(frozen=True)
class SourceImage:
    path: Path
    source: str  # folder under the data root
    case_id: str  # what a split keeps together
    licence: str
    um_per_px: float


@dataclass(frozen=True)
class PatchRecord:
    """One prepared patch (PNG, RGB, at TARGET_UM_PER_PX) and where it came from."""

    file: str  # relative to the prepared folder
    source_file: str
    case_id: str
    split: str
    height_px: int
    width_px: int
    tissue_fraction: float


def case_of(path: Path) -> str:
    """The TCGA case of a file name, the slide folder of a skin-wsi crop, or else the file stem
    (each its own slide)."""
    if path.parent.parent.name == "skin-wsi":
        return path.parent.name
    match = _TCGA_CASE.search(path.name)
    return match.group(0) if match else path.stem


def discover_images(data_root: Path) -> list[SourceImage]:
    images = []
    for folder, pattern, licence, um_per_px in SOURCES:
        for path in sorted((data_root / folder).glob(pattern)):
            images.append(SourceImage(path, folder, case_of(path), licence, um_per_px))
    return images


def assign_splits(
    images: list[SourceImage], seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> dict[str, str]:
    """Case id -> split. Skin is ``heldout_skin``; the rest is shuffled by case into test, val
    and two disjoint training halves (CycleGAN domain A comes from one, domain B from the
    other; the despeckler trains on both)."""
    cases = sorted({im.case_id for im in images if im.source not in SKIN_SOURCES})
    random.Random(seed).shuffle(cases)
    n_test = round(len(cases) * test_fraction)
    n_val = round(len(cases) * val_fraction)
    splits: dict[str, str] = {}
    for index, case in enumerate(cases):
        if index < n_test:
            splits[case] = "test"
        elif index < n_test + n_val:
            splits[case] = "val"
        else:
            splits[case] = "train_a" if (index - n_test - n_val) % 2 == 0 else "train_b"
    for im in images:
        if im.source in SKIN_SOURCES:
            splits[im.case_id] = "train_skin" if im.case_id in TRAIN_SKIN_SLIDES else "heldout_skin"
    return splits


def split_of(image: SourceImage, splits: dict[str, str]) -> str:
    """The split of one file: its case's, except every tenth crop of a training skin slide."""
    split = splits[image.case_id]
    number = re.search(r"-(\d\d)-", image.path.name)
    if split == "train_skin" and number and int(number.group(1)) % SKIN_VAL_EVERY == 0:
        return "val_skin"
    return split


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Stained tissue vs glass: Otsu on chroma, never stricter than the glass/tissue chroma
    (a field full of tissue has no glass for Otsu to find)."""
    unit = to_unit_rgb(rgb)
    chroma = unit.max(axis=2) - unit.min(axis=2)
    threshold = min(otsu_threshold(chroma[::4, ::4]), TISSUE_CHROMA)
    mask: np.ndarray = chroma > threshold
    return mask


def resample(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Resize an RGB uint8 image by ``scale`` (pyvips, Lanczos)."""
    if abs(scale - 1.0) < 1e-6:
        return rgb
    import pyvips

    image = pyvips.Image.new_from_array(np.ascontiguousarray(rgb)).resize(scale, kernel="lanczos3")
    out: np.ndarray = image.cast("uchar").numpy()
    return np.ascontiguousarray(out[..., :3])


def grid_patches(
    rgb: np.ndarray, patch_px: int, min_tissue: float
) -> list[tuple[int, int, np.ndarray, float]]:
    """Non-overlapping ``patch_px`` patches (the whole image if smaller) with enough tissue."""
    height, width = rgb.shape[:2]
    step_y, step_x = min(patch_px, height), min(patch_px, width)
    mask = tissue_mask(rgb)
    found = []
    for top in range(0, height - step_y + 1, step_y):
        for left in range(0, width - step_x + 1, step_x):
            fraction = float(mask[top : top + step_y, left : left + step_x].mean())
            if fraction >= min_tissue:
                found.append((top, left, rgb[top : top + step_y, left : left + step_x], fraction))
    return found


def prepare(
    data_root: Path,
    out_dir: Path,
    seed: int = 0,
    patch_px: int = 512,
    min_tissue: float = 0.5,
) -> dict[str, Any]:
    """Write patches as PNG under ``out_dir`` and ``manifest.json`` describing every one."""
    import pyvips

    images = discover_images(data_root)
    if not images:
        raise FileNotFoundError(f"no H&E images under {data_root}/he")
    splits = assign_splits(images, seed=seed)
    records: list[PatchRecord] = []
    for image in images:
        split = split_of(image, splits)
        rgb = resample(read_rgb(image.path), image.um_per_px / TARGET_UM_PER_PX)
        least = min(min_tissue, SKIN_MIN_TISSUE) if image.source in SKIN_SOURCES else min_tissue
        for top, left, patch, fraction in grid_patches(rgb, patch_px, least):
            name = f"{split}/{image.path.stem}_y{top}_x{left}.png"
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            pyvips.Image.new_from_array(np.ascontiguousarray(patch)).pngsave(str(out_dir / name))
            records.append(
                PatchRecord(
                    file=name,
                    source_file=str(image.path.relative_to(data_root)),
                    case_id=image.case_id,
                    split=split,
                    height_px=patch.shape[0],
                    width_px=patch.shape[1],
                    tissue_fraction=round(fraction, 3),
                )
            )
    manifest = {
        "data_root": str(data_root),
        "seed": seed,
        "um_per_px": TARGET_UM_PER_PX,
        "patch_px": patch_px,
        "min_tissue": min_tissue,
        "licences": {folder: licence for folder, _, licence, _ in SOURCES},
        "split_rule": (
            "by TCGA case (file name), else by file; skin by slide: "
            f"{', '.join(TRAIN_SKIN_SLIDES)} train (every {SKIN_VAL_EVERY}th crop val), "
            "the rest held out"
        ),
        "splits": {
            name: sorted({r.case_id for r in records if r.split == name}) for name in SPLITS
        },
        "patches": [asdict(r) for r in records],
    }
    manifest["fingerprint"] = hashlib.sha256(
        json.dumps(manifest["patches"], sort_keys=True).encode()
    ).hexdigest()[:16]
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(prepared_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((prepared_dir / MANIFEST_NAME).read_text())
    return data


def load_split(prepared_dir: Path, splits: tuple[str, ...]) -> list[np.ndarray]:
    """The RGB uint8 patches of the given splits, in manifest order."""
    return [rgb for rgb, _ in load_split_with_cases(prepared_dir, splits)]


def load_split_with_cases(
    prepared_dir: Path, splits: tuple[str, ...]
) -> list[tuple[np.ndarray, str]]:
    """(RGB uint8 patch, case id) of the given splits, in manifest order."""
    manifest = load_manifest(prepared_dir)
    return [
        (read_rgb(prepared_dir / record["file"]), str(record["case_id"]))
        for record in manifest["patches"]
        if record["split"] in splits
    ]


def split_summary(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per split: how many cases and patches (for model cards)."""
    summary: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        patches = [r for r in manifest["patches"] if r["split"] == name]
        summary[name] = {"cases": len({r["case_id"] for r in patches}), "patches": len(patches)}
    return summary
