"""The pair on its thumbnails, before any tile is stained: each mode's intensity range, the
tissue mask, and the input check (are FCM and RCM what they claim, service.core.sanity).

The plan phase of stain_slide uses it, and the API runs the input check on an upload before
it accepts the job (through the stainer), without loading the networks.
"""

from __future__ import annotations

import itertools

import numpy as np

from service.core.grid import tissue_mask
from service.core.normalize import IntensityRange, estimate_range, normalize
from service.core.sanity import ModeCheck, Window, check_modes, same_image
from service.slide.reader import OpenedMode, SlideInputs, open_pair
from service.vocabulary.errors import InputsIdentical, InputsSwapped

THUMBNAIL_MAX_SIDE_PX = 2048
# The input check on a slide larger than its thumbnail: up to WINDOWS_PER_SIDE**2 windows of
# WINDOW_PX at full resolution over the tissue (4.2 MP at most, about the thumbnail's work).
WINDOW_PX = 512
WINDOWS_PER_SIDE = 4


def measure_thumbnails(
    fcm: OpenedMode, rcm: OpenedMode
) -> tuple[dict[str, IntensityRange], dict[str, np.ndarray]]:
    """Each mode's slide-wide intensity range, measured on its thumbnail, and the thumbnails
    normalised with it (for the tissue mask and, at the end, the faithfulness check)."""
    raw = {"fcm": fcm.thumbnail(THUMBNAIL_MAX_SIDE_PX), "rcm": rcm.thumbnail(THUMBNAIL_MAX_SIDE_PX)}
    ranges = {mode: estimate_range(pixels) for mode, pixels in raw.items()}
    return ranges, {mode: normalize(pixels, ranges[mode]) for mode, pixels in raw.items()}


def inspect_pair(
    fcm: OpenedMode, rcm: OpenedMode, allow_swapped: bool
) -> tuple[dict[str, IntensityRange], dict[str, np.ndarray], np.ndarray, ModeCheck]:
    """The pair on its thumbnails: each mode's intensity range, the normalised thumbnails, the
    tissue mask, and the input check (InputsSwapped or InputsIdentical for a refused pair)."""
    ranges, thumbs = measure_thumbnails(fcm, rcm)
    mask = tissue_mask(thumbs["fcm"], thumbs["rcm"])
    windows = tissue_windows((fcm, rcm), mask)
    return ranges, thumbs, mask, check_inputs(thumbs, mask, allow_swapped, (fcm, rcm), windows)


def check_pair(inputs: SlideInputs, allow_swapped: bool, max_pixels: int) -> ModeCheck:
    """The input check alone, as the API runs it before it accepts a job (the worker runs it
    again as part of the plan): InputsSwapped or InputsIdentical for a pair it refuses."""
    _, rcm, fcm = open_pair(inputs, max_pixels)
    return inspect_pair(fcm, rcm, allow_swapped)[3]


def check_inputs(
    thumbs: dict[str, np.ndarray],
    mask: np.ndarray,
    allow: bool,
    modes: tuple[OpenedMode, OpenedMode],
    windows: list[Window] | None = None,
) -> ModeCheck:
    """The pair's input check (service.core.sanity): identical on the thumbnails, confirmed on
    one full-resolution crop of both ``modes`` (FCM, RCM); swapped on ``windows`` at full
    resolution where given, else on the thumbnails. Raises InputsSwapped or InputsIdentical
    for a pair it refuses, unless the caller allows it."""
    fcm, rcm, found = thumbs["fcm"], thumbs["rcm"], windows or ()
    check = check_modes(fcm, rcm, mask, allow, windows=found)
    if check.outcome == "identical" and not same_image(*(centre_crop_of(m, mask) for m in modes)):
        check = check_modes(fcm, rcm, mask, allow, look_for_identical=False, windows=found)
    if check.refused:
        error = InputsIdentical if check.outcome == "identical" else InputsSwapped
        raise error(check.message())
    return check


def centre_crop_of(mode: OpenedMode, mask: np.ndarray, side_px: int = 256) -> np.ndarray:
    """A full-resolution crop of ``mode`` around the tissue pixel of the thumbnail ``mask``
    nearest its centre (the centre itself without tissue)."""
    height, width = mask.shape
    ys, xs = (
        np.nonzero(mask) if mask.any() else (np.asarray([height // 2]), np.asarray([width // 2]))
    )
    nearest = int(np.argmin((ys - height / 2) ** 2 + (xs - width / 2) ** 2))
    scale_x, scale_y = mode.image.width / width, mode.image.height / height
    l0_x = int((xs[nearest] + 0.5) * scale_x) - side_px // 2
    l0_y = int((ys[nearest] + 0.5) * scale_y) - side_px // 2
    return np.asarray(mode.read_padded(l0_x, l0_y, side_px, side_px), np.float32)


def tissue_windows(modes: tuple[OpenedMode, OpenedMode], mask: np.ndarray) -> list[Window]:
    """Full-resolution windows of both ``modes`` (FCM, RCM) over the tissue of the thumbnail
    ``mask`` (one per ``window_centres``); none when the thumbnail is the slide itself (nothing
    was averaged away) or there is no tissue.

    The windows are measured as a slide the thumbnail's size would be: each mode normalised
    with a range measured on its windows and the tissue found on them. The slide-wide range
    comes from the thumbnail, where averaging has pulled the bright nuclei and speckle in, and
    would clip them here; the thumbnail's mask, scaled up, would count glass at the tissue's
    edge as tissue. Both moved the bundled sample's evidence from +0.47 to +0.18 on a 7 x 7
    mosaic of it."""
    fcm, rcm = modes
    height, width = mask.shape
    slide_w, slide_h = fcm.image.width, fcm.image.height
    if (slide_w, slide_h) == (width, height):
        return []
    scale_x, scale_y = slide_w / width, slide_h / height
    side_w, side_h = min(WINDOW_PX, slide_w), min(WINDOW_PX, slide_h)
    raw: dict[str, list[np.ndarray]] = {"fcm": [], "rcm": []}
    for y, x in window_centres(mask):
        l0_x = min(max(int((x + 0.5) * scale_x) - side_w // 2, 0), slide_w - side_w)
        l0_y = min(max(int((y + 0.5) * scale_y) - side_h // 2, 0), slide_h - side_h)
        raw["fcm"].append(fcm.read_padded(l0_x, l0_y, side_w, side_h))
        raw["rcm"].append(rcm.read_padded(l0_x, l0_y, side_w, side_h))
    if not raw["fcm"]:
        return []
    unit = {}
    for name, blocks in raw.items():
        stacked = np.stack(blocks)
        unit[name] = normalize(stacked, estimate_range(stacked))
    tissue = tissue_mask(unit["fcm"], unit["rcm"])
    return [Window(*planes) for planes in zip(unit["fcm"], unit["rcm"], tissue, strict=True)]


def window_centres(mask: np.ndarray) -> list[tuple[int, int]]:
    """Thumbnail pixels ``(y, x)`` spread over the tissue of ``mask``: in each cell of a
    WINDOWS_PER_SIDE grid over the tissue's bounding box that holds tissue, the tissue pixel
    nearest the cell's centre."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    edges_y = np.linspace(ys.min(), ys.max() + 1, WINDOWS_PER_SIDE + 1)
    edges_x = np.linspace(xs.min(), xs.max() + 1, WINDOWS_PER_SIDE + 1)
    centres = []
    for top, bottom in itertools.pairwise(edges_y):
        for left, right in itertools.pairwise(edges_x):
            inside = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
            if inside.any():
                cy, cx = ys[inside], xs[inside]
                distance = (cy - (top + bottom) / 2) ** 2 + (cx - (left + right) / 2) ** 2
                nearest = int(np.argmin(distance))
                centres.append((int(cy[nearest]), int(cx[nearest])))
    return centres
