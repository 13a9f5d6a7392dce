"""Open and validate an RCM/FCM pair: headers first, pixels only once the pair is accepted."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyvips

from service.slide.image_headers import check_jpeg_extent, check_png_extent
from service.slide.tiff_header import check_tiff_extent, sample_description
from service.vocabulary.errors import (
    BandError,
    CorruptSlide,
    InputError,
    PixelLimitExceeded,
    SizeMismatch,
    SlideNotFound,
    UnsupportedFormat,
)
from service.vocabulary.options import FCM_DETECTOR, RCM_DETECTOR
from service.vocabulary.report import ImageInfo, PairInfo  # the report's records of the headers

# Only the three loaders below are ever used; the rest of libvips' loaders (some of which are
# not fuzzed for hostile input) stay blocked too.
pyvips.block_untrusted_set(True)
# pyvips logs every operation at DEBUG and formats images with a repr that itself logs: with
# two handlers on two threads that re-entry deadlocks on the handlers' locks (seen in CI).
# Nothing of ours needs those records, so they are never created.
logging.getLogger("pyvips").setLevel(logging.WARNING)
# libvips' operation cache keeps every file it loaded open after the image is gone: deleted
# uploads and results would go on holding their disk space in the API and the workers. Every
# image we need is held by our own objects (OpenedMode, DeepZoom), so the cache adds nothing.
pyvips.cache_set_max(0)

SMALL_FORMAT_MAX_PIXELS = 50_000_000  # PNG/JPEG decode whole; they are for small crops
MIN_SIDE_PX = 16
# Resolution tags outside this range are not microscope resolutions (a 72 dpi PNG says
# 353 um/px): the file is treated as saying nothing about its pixel size.
PLAUSIBLE_MPP_UM = (0.01, 100.0)
SCAN_FILE = "highres_raw.tif"

_NUMPY_DTYPES = {"uchar": np.uint8, "ushort": np.uint16, "float": np.float32}
SUPPORTED_SAMPLES = "8- or 16-bit unsigned, or 16- or 32-bit float"
# What libvips reads but the stain does not take, and what it does not read at all, in words.
_FORMAT_WORDS = {
    "char": "signed 8-bit",
    "short": "signed 16-bit",
    "uint": "unsigned 32-bit",
    "int": "signed 32-bit",
    "double": "64-bit float",
    "complex": "complex",
    "dpcomplex": "complex",
}
_UNREAD_SAMPLES = {"64-bit float", "64-bit complex float", "128-bit complex float"}
_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)


@dataclass(frozen=True)
class SlideInputs:
    """The two files of one slide."""

    rcm: Path
    fcm: Path


def resolve_scan_dir(
    scan_dir: Path, rcm_detector: str = RCM_DETECTOR, fcm_detector: str = FCM_DETECTOR
) -> SlideInputs:
    """A Vivascope scan folder: ``DET#1/highres_raw.tif`` reflectance, ``DET#2`` fluorescence.

    Public code of the instrument's users disagrees on the mapping, so it is a parameter.
    """
    if scan_dir.is_file():  # a user who has a pair of files rather than a scan folder
        raise InputError(
            f"{scan_dir} is a file, not a scan folder: give a pair of files as "
            "--rcm RCM_FILE --fcm FCM_FILE"
        )
    if not scan_dir.is_dir():
        raise SlideNotFound(f"scan folder not found: {scan_dir}")
    rcm, fcm = scan_dir / rcm_detector / SCAN_FILE, scan_dir / fcm_detector / SCAN_FILE
    for path in (rcm, fcm):
        if not path.is_file():
            raise SlideNotFound(f"scan folder {scan_dir} has no {path.relative_to(scan_dir)}")
    return SlideInputs(rcm=rcm, fcm=fcm)


def sniff_format(path: Path) -> str:
    """The container format from the file's first bytes (never from its name)."""
    if not path.is_file():
        raise SlideNotFound(f"file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise UnsupportedFormat(f"{path.name}: empty file")
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    raise UnsupportedFormat(f"{path.name}: not a TIFF, PNG or JPEG image")


def open_image(path: Path) -> pyvips.Image:
    """Open lazily with the one loader its magic bytes name; truncated data is an error, and
    so is data that does not decode (libvips would otherwise read it as black, silently)."""
    kind = sniff_format(path)
    loader = {"tiff": pyvips.Image.tiffload, "png": pyvips.Image.pngload}.get(
        kind, pyvips.Image.jpegload
    )
    try:
        return loader(str(path), access="random", fail_on="error")
    except pyvips.Error as exc:
        samples = sample_description(path) if kind == "tiff" else None
        if samples in _UNREAD_SAMPLES:  # libvips says "samples out of range"
            raise InputError(
                f"{path.name}: {samples} samples are not supported ({SUPPORTED_SAMPLES}): "
                "save the image as 32-bit float"
            ) from exc
        raise CorruptSlide(
            f"{path.name}: truncated or corrupt {kind.upper()}: {first_line(exc)}"
        ) from exc


def first_line(exc: BaseException) -> str:
    """The informative line of a libvips error (not "unable to call ..."), without file paths."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("unable to call")]
    text = (useful or lines or [type(exc).__name__])[0]
    return text.rsplit(": ", 1)[-1] if text.startswith("/") else text


def read_mpp_um(image: pyvips.Image) -> float | None:
    """Microns per pixel from the resolution tags, or None when the file does not say."""
    fields = image.get_fields()
    if "resolution-unit" not in fields and image.get("xres") <= 1.0:
        return None
    xres_px_per_mm = float(image.get("xres"))
    if not math.isfinite(xres_px_per_mm) or xres_px_per_mm <= 0.0:
        return None
    mpp_um = 1000.0 / xres_px_per_mm
    low, high = PLAUSIBLE_MPP_UM
    return mpp_um if low <= mpp_um <= high else None


def probe_image(path: Path, max_pixels: int) -> tuple[ImageInfo, pyvips.Image]:
    """The image's header info and the opened image; refuses (PixelLimitExceeded, InputError,
    BandError) one over the pixel limit, too small, of an unsupported sample type or band count, or
    with non-finite floats."""
    kind = sniff_format(path)
    image = open_image(path)
    pixels = image.width * image.height
    limit = max_pixels if kind == "tiff" else min(max_pixels, SMALL_FORMAT_MAX_PIXELS)
    if pixels > limit:
        raise PixelLimitExceeded(
            f"{path.name}: {image.width} x {image.height} px exceeds the limit of {limit} px"
        )
    if min(image.width, image.height) < MIN_SIDE_PX:
        raise InputError(
            f"{path.name}: {image.width} x {image.height} px is too small to stain "
            f"(at least {MIN_SIDE_PX} px per side)"
        )
    if image.format not in _NUMPY_DTYPES:
        words = _FORMAT_WORDS.get(image.format, image.format)
        raise InputError(f"{path.name}: {words} samples are not supported ({SUPPORTED_SAMPLES})")
    if image.bands not in (1, 3):
        raise BandError(f"{path.name}: {image.bands} bands; expected one grayscale band")
    {"tiff": check_tiff_extent, "png": check_png_extent, "jpeg": check_jpeg_extent}[kind](path)
    if image.format == "float":
        require_finite(image, path.name)
    info = ImageInfo(
        path=str(path),
        format=kind,
        width_px=image.width,
        height_px=image.height,
        bands=image.bands,
        dtype=str(np.dtype(_NUMPY_DTYPES[image.format])),
        mpp_um=read_mpp_um(image),
    )
    return info, image


def probe_pair(inputs: SlideInputs, max_pixels: int) -> PairInfo:
    """Validate a pair from its headers; RGB inputs are also checked to be gray (a thumbnail).

    A colour image is refused before the sizes are compared: an H&E or other RGB picture sent
    as RCM or FCM is the mistake to name, whatever its size."""
    rcm_info, rcm = probe_image(inputs.rcm, max_pixels)
    fcm_info, fcm = probe_image(inputs.fcm, max_pixels)
    for info, image in ((rcm_info, rcm), (fcm_info, fcm)):
        if image.bands == 3:
            require_gray(image, Path(info.path).name)
    if (rcm.width, rcm.height) != (fcm.width, fcm.height):
        raise SizeMismatch(
            f"RCM is {rcm.width} x {rcm.height} px but FCM is {fcm.width} x {fcm.height} px"
        )
    mpp_um = rcm_info.mpp_um or fcm_info.mpp_um
    return PairInfo(rcm.width, rcm.height, mpp_um, rcm_info, fcm_info)


def pyramid_pages(path: Path) -> list[pyvips.Image]:
    """Every level of a (pyramidal) TIFF, full resolution first: OME-TIFF SubIFDs or pages,
    keeping only pages with the first page's bands (a label or macro image is not a level).
    A PNG or JPEG has one level."""
    base = open_image(path)
    if sniff_format(path) != "tiff":
        return [base]
    fields = base.get_fields()
    if "n-subifds" in fields and int(base.get("n-subifds")) > 0:  # OME-TIFF pyramid
        reduced = range(int(base.get("n-subifds")))
        pages = [base] + [pyvips.Image.tiffload(str(path), subifd=i) for i in reduced]
    else:
        n_pages = int(base.get("n-pages")) if "n-pages" in fields else 1
        pages = [base] + [pyvips.Image.tiffload(str(path), page=i) for i in range(1, n_pages)]
    return [p for p in pages if p.bands == base.bands]


def require_gray(image: pyvips.Image, name: str, max_side_px: int = 512) -> None:
    """An RGB file is accepted as gray only if its three channels are equal (JPEG: nearly)."""
    small = shrink_to_array(image, max_side_px, name)
    spread = float(np.max(small.max(axis=-1) - small.min(axis=-1)))
    full_scale = 255.0 if image.format == "uchar" else 65535.0 if image.format == "ushort" else 1.0
    if spread > 0.02 * full_scale:
        raise BandError(f"{name}: a colour RGB image; RCM and FCM must be grayscale")


def finite_mask(image: pyvips.Image) -> pyvips.Image:
    """255 where a pixel is finite, 0 where it is NaN or infinite (only then is x - x not 0)."""
    return (image - image) == 0


def require_finite(image: pyvips.Image, name: str) -> None:
    """Refuse a float image with no finite pixel (decodes every pixel; float inputs only)."""
    try:
        any_finite = finite_mask(image).max() > 0
    except pyvips.Error as exc:
        raise CorruptSlide(f"{name}: image data is truncated or corrupt") from exc
    if not any_finite:
        raise InputError(f"{name}: no finite pixel: every value is NaN or infinite")


def shrink_to_array(image: pyvips.Image, max_side_px: int, name: str = "image") -> np.ndarray:
    """A box-filtered view whose longer side is at most ``max_side_px`` (decodes every pixel)."""
    factor = max(1, math.ceil(max(image.width, image.height) / max_side_px))
    small = image.shrink(factor, factor) if factor > 1 else image
    try:
        array = np.asarray(small.numpy())
    except pyvips.Error as exc:
        raise CorruptSlide(f"{name}: image data is truncated or corrupt") from exc
    return array if array.ndim == 3 else array[..., None]


class OpenedMode:
    """One validated mode, reading gray regions with reflected padding at the slide's edges."""

    def __init__(self, image: pyvips.Image, name: str) -> None:
        if image.format == "float":  # a few NaN or infinite pixels read as 0, like no signal
            image = finite_mask(image).ifthenelse(image, 0)
        self.image = image
        self.name = name
        self.dtype = _NUMPY_DTYPES[image.format]
        self.region = pyvips.Region.new(image)

    def resampled(self, width_px: int, height_px: int) -> OpenedMode:
        """The same mode resized to ``width_px x height_px`` (lazily, region by region: no
        whole-slide copy), for running the networks at the resolution they were trained at."""
        image = self.image.resize(
            width_px / self.image.width, vscale=height_px / self.image.height, kernel="lanczos3"
        )
        if image.width != width_px or image.height != height_px:  # rounding: pad or cut one px
            image = image.embed(0, 0, width_px, height_px, extend="copy")
        return OpenedMode(image.cast(self.image.format), self.name)

    def thumbnail(self, max_side_px: int) -> np.ndarray:
        """The image shrunk to at most ``max_side_px`` on its longer side, as a 2-D array."""
        return shrink_to_array(self.image, max_side_px, self.name)[..., 0]

    def read_padded(self, l0_x: int, l0_y: int, width_px: int, height_px: int) -> np.ndarray:
        """Pixels of a box that may extend past the slide; outside is mirrored (reflect)."""
        left, top = max(l0_x, 0), max(l0_y, 0)
        right = min(l0_x + width_px, self.image.width)
        bottom = min(l0_y + height_px, self.image.height)
        try:
            data = self.region.fetch(left, top, right - left, bottom - top)
        except pyvips.Error as exc:
            raise CorruptSlide(
                f"{self.name}: corrupt data near ({left}, {top}): {first_line(exc)}"
            ) from exc
        bands = self.image.bands
        block = np.frombuffer(data, dtype=self.dtype).reshape(bottom - top, right - left, bands)
        block = block[..., 0]
        pad = ((top - l0_y, l0_y + height_px - bottom), (left - l0_x, l0_x + width_px - right))
        if any(p for pair in pad for p in pair):
            block = pad_reflect(block, pad)
        return block


def pad_reflect(block: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Mirror padding (numpy repeats the reflection when the pad exceeds the block)."""
    mode: Literal["reflect", "edge"] = "reflect" if min(block.shape) > 1 else "edge"
    return np.pad(block, pad, mode=mode)


def open_pair(inputs: SlideInputs, max_pixels: int) -> tuple[PairInfo, OpenedMode, OpenedMode]:
    """Probe, then open both modes for region reads."""
    info = probe_pair(inputs, max_pixels)
    rcm = OpenedMode(open_image(inputs.rcm), f"RCM {inputs.rcm.name}")
    fcm = OpenedMode(open_image(inputs.fcm), f"FCM {inputs.fcm.name}")
    return info, rcm, fcm
