"""The pair on its thumbnails, before any tile is stained: each mode's intensity range, the
tissue mask, and the input check (are FCM and RCM what they claim, service.core.sanity).

The plan phase of stain_slide uses it, and the API runs the input check on an upload before
it accepts the job (through the stainer), without loading the networks.
"""

from __future__ import annotations

import numpy as np

from service.core.grid import tissue_mask
from service.core.normalize import IntensityRange, estimate_range, normalize
from service.core.sanity import ModeCheck, check_modes, same_image
from service.slide.reader import OpenedMode, SlideInputs, open_pair
from service.vocabulary.errors import InputsIdentical, InputsSwapped

THUMBNAIL_MAX_SIDE_PX = 2048


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
    return ranges, thumbs, mask, check_inputs(thumbs, mask, allow_swapped, (fcm, rcm))


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
) -> ModeCheck:
    """The pair's input check (service.core.sanity) on the thumbnails, an identical pair
    confirmed on one full-resolution crop of both ``modes`` (FCM, RCM); raises InputsSwapped
    or InputsIdentical for a pair it refuses, unless the caller allows it."""
    check = check_modes(thumbs["fcm"], thumbs["rcm"], mask, allow)
    if check.outcome == "identical" and not same_image(*(centre_crop_of(m, mask) for m in modes)):
        check = check_modes(thumbs["fcm"], thumbs["rcm"], mask, allow, look_for_identical=False)
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
