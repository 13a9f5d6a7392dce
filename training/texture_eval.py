"""Texture realism of every method and of each real skin slide: SWD and C2ST.

Real skin H&E is the target domain, ``he/skin-wsi/<slide>/`` (three slides, 0.75 um/px). The
slides that trained the generator (``training.data.TRAIN_SKIN_SLIDES``) are the reference;
the third is held out. Each method stains synthetic confocal of prepared patches of the
training slides and of the held-out slide, and the real confocal crop, as the engine would.

- SWD (``service.core.quality.swd``): the method's output on the held-out slide against each
  reference slide, the nearest reported; each real slide against the nearest other real slide
  (the floor). On the real crop, the floor is one 512 px crop of the held-out slide (the median
  over its crops), since SWD of a small set reads higher.
- C2ST (``training.c2st``): a critic trained on real reference-slide patches against the
  method's stain of the reference slides, scored (ROC AUC) on the held-out slide's real
  patches against its stain (and against the stain of the real crop). The floor: each real
  slide against the other two, trained on odd-numbered crops, scored on even-numbered ones.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.core.quality import pyramid_levels, swd_descriptors, swd_of_descriptors
from training.c2st import CriticOptions, PatchSource, c2st
from training.data import TRAIN_SKIN_SLIDES, load_split_with_cases
from training.domains import chain_view
from training.stain_eval import EVAL_SEED, StainMethods
from training.synthetic import read_gray_unit, read_rgb, synthesize_confocal

TEXTURE_SEED = 7
PATCHES_PER_SLIDE = 24  # stained patches per slide (every k-th of the prepared patches)
CROP_PX = 512  # the real confocal crop's size: the single-crop floor is cut to it
_CROP_NUMBER = re.compile(r"-(\d\d)-(?:core|edge)-")


def read_real_slides(data_root: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every crop of every ``he/skin-wsi`` slide, with its crop number, uint8 HWC."""
    slides: dict[str, list[tuple[int, np.ndarray]]] = {}
    for folder in sorted((data_root / "he" / "skin-wsi").glob("*/")):
        crops = []
        for path in sorted(folder.glob("*.jpg")):
            number = _CROP_NUMBER.search(path.name)
            if number:
                crops.append((int(number.group(1)), read_rgb(path)))
        if crops:
            slides[folder.name] = crops
    return slides


def to_uint8_hwc(rgb_chw: np.ndarray) -> np.ndarray:
    return np.clip(np.moveaxis(rgb_chw, 0, -1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def stained_patches(
    patches: Sequence[tuple[np.ndarray, str]],
    methods: StainMethods,
    median: bool = True,
    per_slide: int = PATCHES_PER_SLIDE,
) -> dict[str, list[np.ndarray]]:
    """Each method's output (uint8 HWC) of synthetic confocal of up to ``per_slide`` evenly
    spaced patches of each slide, stained per slide (statistics pooled over its patches)."""
    out: dict[str, list[np.ndarray]] = {}
    for case in sorted({c for _, c in patches}):
        members = [rgb for rgb, c in patches if c == case]
        members = members[:: max(len(members) // per_slide, 1)][:per_slide]
        pairs = [synthesize_confocal(rgb, seed=EVAL_SEED + i) for i, rgb in enumerate(members)]
        views = [chain_view(p.fcm, p.rcm, methods.despeckler, median=median) for p in pairs]
        for name, images in methods.outputs(views).items():
            out.setdefault(name, []).extend(to_uint8_hwc(image) for image in images)
    return out


def stained_real_crop(
    data_root: Path, methods: StainMethods, median: bool = True
) -> dict[str, list[np.ndarray]]:
    """Each method's output of the real confocal crop (empty without the crop)."""
    fcm_path = data_root / "confocal" / "crop-512-fcm.jpg"
    rcm_path = data_root / "confocal" / "crop-512-rcm.jpg"
    if not (fcm_path.is_file() and rcm_path.is_file()):
        return {}
    view = chain_view(
        read_gray_unit(fcm_path), read_gray_unit(rcm_path), methods.despeckler, median=median
    )
    return {name: [to_uint8_hwc(images[0])] for name, images in methods.outputs([view]).items()}


def _summary(result: dict[str, list[float]], nearest: str) -> dict[str, Any]:
    return {
        "nearest_slide": nearest,
        "swd": round(float(np.mean(result["swd"])), 4),
        "swd_texture": round(float(np.mean(result["swd_texture"])), 4),
        "swd_levels": [round(v, 4) for v in result["swd"]],
        "swd_texture_levels": [round(v, 4) for v in result["swd_texture"]],
        "level_px": [int(v) for v in result["level_px"]],
    }


class SwdReference:
    """Patch descriptors of each reference slide, extracted once, on a fixed pyramid."""

    def __init__(self, slides: dict[str, list[np.ndarray]], side_px: int, seed: int) -> None:
        self.levels = pyramid_levels(side_px, side_px)
        self.level_px = [side_px >> level for level in range(self.levels)]
        self.seed = seed
        self.slides = {
            name: swd_descriptors(ims, self.levels, seed) for name, ims in slides.items()
        }

    def nearest(
        self, images: list[np.ndarray], among: Collection[str] | None = None
    ) -> dict[str, Any]:
        """SWD of ``images`` against each reference slide (those named in ``among``, or all);
        the nearest."""
        fake = swd_descriptors(images, self.levels, self.seed)
        results = {
            name: swd_of_descriptors(real, fake, self.level_px, self.seed)
            for name, real in self.slides.items()
            if among is None or name in among
        }
        nearest = min(results, key=lambda name: float(np.mean(results[name]["swd"])))
        return _summary(results[nearest], nearest)


def single_crop_floor(
    held_out: list[np.ndarray], reference: SwdReference, among: Collection[str]
) -> dict[str, Any]:
    """Median, over the held-out slide's crops, of one centre CROP_PX crop against the nearest
    reference slide: what one real 512 px field scores."""
    rows = []
    for image in held_out:
        side = min(CROP_PX, *image.shape[:2])
        top, left = ((s - side) // 2 for s in image.shape[:2])
        rows.append(reference.nearest([image[top : top + side, left : left + side]], among))
    return {
        "swd": round(float(np.median([r["swd"] for r in rows])), 4),
        "swd_texture": round(float(np.median([r["swd_texture"] for r in rows])), 4),
        "crops": len(rows),
    }


def evaluate_texture(
    data_root: Path,
    prepared_dir: Path,
    methods: StainMethods,
    options: CriticOptions | None = None,
    median: bool = True,
) -> dict[str, Any]:
    """SWD and C2ST for every method and for each real skin slide (see the module's doc)."""
    options = options or CriticOptions()
    slides = read_real_slides(data_root)
    all_real = {name: [im for _, im in crops] for name, crops in slides.items()}
    reference = {name: ims for name, ims in all_real.items() if name in TRAIN_SKIN_SLIDES}
    held_out_names = sorted(set(slides) - set(reference))
    held_out_real = [im for name in held_out_names for _, im in slides[name]]
    train = [p for p in load_split_with_cases(prepared_dir, ("train_skin",)) if p[1] in reference]
    test = load_split_with_cases(prepared_dir, ("heldout_skin",))
    test = [p for p in test if p[1] in held_out_names]
    stained_train = stained_patches(train, methods, median)
    stained_test = stained_patches(test, methods, median)
    stained_crop = stained_real_crop(data_root, methods, median)

    result: dict[str, Any] = {
        "reference_slides": sorted(reference),
        "held_out_slides": held_out_names,
        "stained_patches": {
            "train": len(stained_train[next(iter(stained_train))]),
            "held_out": len(stained_test[next(iter(stained_test))]),
        },
        "options": {k: v for k, v in vars(options).items()},
        "methods": {},
        "real_slides": {},
    }
    every = [im for ims in [*stained_test.values(), *all_real.values()] for im in ims]
    side_px = min(CROP_PX, *(min(im.shape[:2]) for im in every))
    swd_all = SwdReference(all_real, side_px, TEXTURE_SEED)
    patch_px, tissue = options.patch_px, options.min_tissue
    crops = {  # each real crop's tissue patches found once, for every critic
        name: {number: PatchSource([im], patch_px, tissue) for number, im in members}
        for name, members in slides.items()
    }

    def joined(names: Collection[str], parity: int | None = None) -> PatchSource:
        parts = [
            part
            for name in names
            for number, part in crops[name].items()
            if parity is None or number % 2 == parity
        ]
        return sum(parts[1:], parts[0])

    reference_real, held_out_patches = joined(reference), joined(held_out_names)
    for name, images in stained_test.items():
        row = {"held_out": swd_all.nearest(images, reference)}
        if name in stained_crop:
            row["real_crop"] = swd_all.nearest(stained_crop[name], reference)
        extra = {"real_crop": stained_crop[name]} if name in stained_crop else None
        row["c2st"] = c2st(
            reference_real, stained_train[name], held_out_patches, images, options, extra
        )
        result["methods"][name] = row
    for name in slides:
        others = [other for other in all_real if other != name]
        result["real_slides"][name] = {
            "swd": swd_all.nearest(all_real[name], others),
            "c2st": c2st(
                joined(others, 1), joined([name], 1), joined(others, 0), joined([name], 0), options
            ),
        }
    if stained_crop and held_out_real:
        result["real_crop_floor"] = single_crop_floor(held_out_real, swd_all, reference)
    return result
