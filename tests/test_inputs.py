"""Bad inputs: each gives a clear one-line error, a non-zero exit, and no output file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
from click.testing import CliRunner
from engine_fixtures import huge_header_tiff
from hostile_inputs import gray_tiff_bytes, lying_jpeg, lying_png, undecodable_tiff
from support.pairs import confocal_like, write_gray

from service.cli import main
from service.slide import SlideInputs, probe_pair, resolve_scan_dir
from service.vocabulary.errors import (
    BandError,
    CorruptSlide,
    InputError,
    PixelLimitExceeded,
    SizeMismatch,
    SlideNotFound,
    UnsupportedFormat,
)


def run_stain(rcm: Path, fcm: Path, output: Path, *extra: str):
    return CliRunner().invoke(
        main, ["stain", "--rcm", str(rcm), "--fcm", str(fcm), "-o", str(output), *extra]
    )


def assert_clean_failure(result, output: Path, fragment: str) -> None:
    assert result.exit_code != 0
    message = result.stderr.strip()
    assert "Traceback" not in result.output + message
    assert len(message.splitlines()) == 1, message
    assert message.startswith("dscm: error:")
    assert fragment in message
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]


def good_gray(tmp_path: Path, name: str, size=(300, 400), dtype="uint8") -> Path:
    """The fluorescence of a confocal-like pair, or its reflectance for an RCM file name or
    folder (a pair of two identical images is refused as such)."""
    fcm, rcm = confocal_like(*size)
    is_rcm = name.startswith("rcm") or tmp_path.name == "DET#1"
    return write_gray(tmp_path / name, rcm if is_rcm else fcm, dtype)


def test_size_mismatch(tmp_path: Path) -> None:
    rcm = good_gray(tmp_path, "rcm.tif", (300, 400))
    fcm = good_gray(tmp_path, "fcm.tif", (300, 401))
    with pytest.raises(SizeMismatch):
        probe_pair(SlideInputs(rcm, fcm), 10**9)
    assert_clean_failure(run_stain(rcm, fcm, tmp_path / "out.tif"), tmp_path / "out.tif", "401")


def test_colour_rgb_input_is_refused(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    rcm = write_gray(tmp_path / "rgb.tif", rgb / 255.0)
    fcm = good_gray(tmp_path, "fcm.tif")
    with pytest.raises(BandError):
        probe_pair(SlideInputs(rcm, fcm), 10**9)
    assert_clean_failure(run_stain(rcm, fcm, tmp_path / "o.tif"), tmp_path / "o.tif", "grayscale")


def test_a_colour_image_of_the_wrong_size_is_refused_for_its_colour(tmp_path: Path) -> None:
    """An H&E picture sent as RCM is the mistake to name, not that its size differs."""
    rgb = np.random.default_rng(0).integers(0, 255, (512, 640, 3), dtype=np.uint8)
    rcm = write_gray(tmp_path / "he.jpg", rgb / 255.0)
    fcm = good_gray(tmp_path, "fcm.tif")  # 300 x 400 px
    with pytest.raises(BandError, match="colour RGB image"):
        probe_pair(SlideInputs(rcm, fcm), 10**9)
    assert_clean_failure(run_stain(rcm, fcm, tmp_path / "o.tif"), tmp_path / "o.tif", "grayscale")


def test_gray_stored_as_rgb_is_accepted(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(300, 400)
    rcm = write_gray(tmp_path / "rcm.tif", np.dstack([rcm_unit] * 3))
    fcm = write_gray(tmp_path / "fcm.tif", fcm_unit)
    output = tmp_path / "out.tif"
    result = run_stain(rcm, fcm, output, "--stages", "gareau")
    assert result.exit_code == 0, result.output
    assert output.is_file()


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_16_bit_and_float_inputs_work(tmp_path: Path, dtype: str) -> None:
    rcm = good_gray(tmp_path, "rcm.tif", dtype=dtype)
    fcm = good_gray(tmp_path, "fcm.tif", dtype=dtype)
    result = run_stain(rcm, fcm, tmp_path / "out.tif", "--stages", "median,gareau")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.tif").stat().st_size > 0


def test_a_float_tiff_at_the_float32_extremes_stains(tmp_path: Path) -> None:
    """3e38 everywhere, one pixel of -3e38: accepted, so it must stain (it failed
    internal_error, ZeroDivisionError in estimate_range)."""
    extreme = np.full((64, 64), 3e38, np.float32)
    extreme[5, 5] = -3e38
    rcm, fcm = tmp_path / "rcm.tif", tmp_path / "fcm.tif"
    for path in (rcm, fcm):
        tifffile.imwrite(
            path, extreme, resolution=(1 / 0.75e-4, 1 / 0.75e-4), resolutionunit="CENTIMETER"
        )
    result = run_stain(rcm, fcm, tmp_path / "out.tif", "--stages", "median,gareau")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.tif").stat().st_size > 0


def test_float_tiffs_of_16_and_32_bits_stain_and_64_bits_is_refused_by_name(
    tmp_path: Path,
) -> None:
    """libvips reads no 64-bit float TIFF ("tiff2vips: samples out of range", which was
    reported as a corrupt file); the README's "float" is 16- or 32-bit, and the refusal says so."""
    fcm_unit, rcm_unit = confocal_like(64, 80)
    resolution = {"resolution": (1 / 0.75e-4, 1 / 0.75e-4), "resolutionunit": "CENTIMETER"}
    paths = {}
    for dtype in ("float16", "float32", "float64"):
        for mode, unit in (("rcm", rcm_unit), ("fcm", fcm_unit)):
            paths[mode, dtype] = tmp_path / f"{mode}-{dtype}.tif"
            tifffile.imwrite(paths[mode, dtype], unit.astype(dtype), **resolution)  # type: ignore[arg-type]
    for dtype in ("float16", "float32"):
        output = tmp_path / f"out-{dtype}.tif"
        result = run_stain(paths["rcm", dtype], paths["fcm", dtype], output, "--stages", "gareau")
        assert result.exit_code == 0, result.output
    rcm, fcm = paths["rcm", "float64"], paths["fcm", "float64"]
    with pytest.raises(InputError, match="64-bit float samples are not supported"):
        probe_pair(SlideInputs(rcm, fcm), 10**9)
    assert_refused_by_stain(rcm, fcm, tmp_path / "o.tif", "save the image as 32-bit float")


def test_truncated_tiff(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(512, 512)
    full = write_gray(tmp_path / "full.tif", rcm_unit, tile=True)
    data = full.read_bytes()
    # libvips writes the directory last; keep it but cut pixel data out of the middle
    head = data[: len(data) // 3]
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(head)
    fcm = write_gray(tmp_path / "fcm.tif", fcm_unit)
    with pytest.raises(CorruptSlide):
        probe_pair(SlideInputs(truncated, fcm), 10**9)
    assert_clean_failure(
        run_stain(truncated, fcm, tmp_path / "out.tif"), tmp_path / "out.tif", "truncated"
    )


def test_truncated_strip_data_with_intact_directory(tmp_path: Path) -> None:
    """A TIFF whose directory comes first and whose strips are cut off."""
    height, width = 64, 64
    fcm = good_gray(tmp_path, "fcm.tif", (height, width))
    bad = huge_header_tiff(tmp_path / "cut.tif", width, height)  # declares 16 bytes per strip
    data = bytearray(bad.read_bytes())
    # declare a strip of the full image size: 4096 bytes that the file does not have
    data[
        data.index(bytes([279 & 0xFF, 279 >> 8])) + 8 : data.index(bytes([279 & 0xFF, 279 >> 8]))
        + 12
    ] = (height * width).to_bytes(4, "little")
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptSlide, match="truncated"):
        probe_pair(SlideInputs(bad, fcm), 10**9)


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    fcm = good_gray(tmp_path, "fcm.tif")
    with pytest.raises(UnsupportedFormat):
        probe_pair(SlideInputs(empty, fcm), 10**9)
    assert_clean_failure(run_stain(empty, fcm, tmp_path / "o.tif"), tmp_path / "o.tif", "empty")


def test_text_renamed_tif(tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("patient notes, definitely not an image\n" * 20)
    fcm = good_gray(tmp_path, "fcm.tif")
    with pytest.raises(UnsupportedFormat):
        probe_pair(SlideInputs(text, fcm), 10**9)
    assert_clean_failure(run_stain(text, fcm, tmp_path / "o.tif"), tmp_path / "o.tif", "not a TIFF")


def test_header_declaring_a_million_by_a_million_pixels(tmp_path: Path) -> None:
    huge = huge_header_tiff(tmp_path / "huge.tif", 1_000_000, 1_000_000)
    with pytest.raises(PixelLimitExceeded):
        probe_pair(SlideInputs(huge, huge), 400_000_000)
    assert_clean_failure(run_stain(huge, huge, tmp_path / "o.tif"), tmp_path / "o.tif", "limit")


def test_missing_file(tmp_path: Path) -> None:
    fcm = good_gray(tmp_path, "fcm.tif")
    result = run_stain(tmp_path / "nope.tif", fcm, tmp_path / "o.tif")
    assert_clean_failure(result, tmp_path / "o.tif", "not found")


def test_scan_folder_mapping_and_missing_detector(tmp_path: Path) -> None:
    scan = tmp_path / "scan"
    (scan / "DET#1").mkdir(parents=True)
    (scan / "DET#2").mkdir()
    good_gray(scan / "DET#1", "highres_raw.tif")
    good_gray(scan / "DET#2", "highres_raw.tif")
    inputs = resolve_scan_dir(scan)
    assert inputs.rcm.parent.name == "DET#1" and inputs.fcm.parent.name == "DET#2"
    swapped = resolve_scan_dir(scan, rcm_detector="DET#2", fcm_detector="DET#1")
    assert swapped.rcm.parent.name == "DET#2"
    (scan / "DET#2" / "highres_raw.tif").unlink()
    with pytest.raises(SlideNotFound, match="DET#2"):
        resolve_scan_dir(scan)


def test_mpp_is_read_from_the_files_and_none_when_they_do_not_say(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(100, 120)
    plain = SlideInputs(
        write_gray(tmp_path / "r.tif", rcm_unit, mpp_um=None),
        write_gray(tmp_path / "f.tif", fcm_unit, mpp_um=None),
    )
    assert probe_pair(plain, 10**9).mpp_um is None
    res = {"xres": 1000 / 0.5, "yres": 1000 / 0.5, "resunit": "cm"}
    tagged = SlideInputs(
        write_gray(tmp_path / "r2.tif", rcm_unit, **res),
        write_gray(tmp_path / "f2.tif", fcm_unit, **res),
    )
    assert probe_pair(tagged, 10**9).mpp_um == pytest.approx(0.5, rel=1e-3)


def test_png_and_jpeg_crops_are_accepted(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(256, 256)
    rcm = write_gray(tmp_path / "rcm.png", rcm_unit)
    fcm = write_gray(tmp_path / "fcm.jpg", fcm_unit)
    info = probe_pair(SlideInputs(rcm, fcm), 10**9)
    assert (info.width_px, info.rcm.format, info.fcm.format) == (256, "png", "jpeg")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_png_and_jpeg(tmp_path: Path, suffix: str) -> None:
    fcm_unit, rcm_unit = confocal_like(400, 400)
    full = write_gray(tmp_path / f"full{suffix}", rcm_unit)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    fcm = write_gray(tmp_path / f"fcm{suffix}", fcm_unit)
    assert_clean_failure(run_stain(cut, fcm, tmp_path / "o.tif"), tmp_path / "o.tif", "truncated")


def test_output_parent_is_a_file(tmp_path: Path) -> None:
    fcm = good_gray(tmp_path, "fcm.tif")
    rcm = good_gray(tmp_path, "rcm.tif")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_stain(rcm, fcm, blocker / "o.tif", "--stages", "gareau")
    assert result.exit_code == 5
    assert "cannot write" in result.stderr and "Traceback" not in result.output


def test_tiny_images_are_refused(tmp_path: Path) -> None:
    tiny = write_gray(tmp_path / "tiny.tif", np.full((1, 1), 0.5))
    result = run_stain(tiny, tiny, tmp_path / "o.tif")
    assert_clean_failure(result, tmp_path / "o.tif", "too small")


def test_screen_resolution_is_not_taken_for_a_microscope_resolution(tmp_path: Path) -> None:
    paths = []
    for name, unit in zip(("r.png", "f.png"), confocal_like(64, 64), strict=True):
        image = pyvips.Image.new_from_array((unit * 255).astype(np.uint8))
        image.copy(xres=72 / 25.4, yres=72 / 25.4).pngsave(str(tmp_path / name))  # 72 dpi
        paths.append(tmp_path / name)
    assert pyvips.Image.new_from_file(str(paths[0])).xres == pytest.approx(72 / 25.4, rel=0.01)
    assert probe_pair(SlideInputs(*paths), 10**9).mpp_um is None  # says nothing usable


def test_a_pair_without_pixel_size_is_refused_unless_someone_states_it(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(128, 160)
    rcm = write_gray(tmp_path / "r.tif", rcm_unit, mpp_um=None)
    fcm = write_gray(tmp_path / "f.tif", fcm_unit, mpp_um=None)
    output = tmp_path / "o.tif"
    result = run_stain(rcm, fcm, output, "--stages", "gareau")
    assert_clean_failure(result, output, "no pixel size")
    stated = run_stain(rcm, fcm, output, "--stages", "gareau", "--mpp", "0.6", "--json")
    assert stated.exit_code == 0, stated.stderr
    report = json.loads(stated.stdout)
    assert report["pixel_size"]["source"] == "caller" and report["mpp_um"] == 0.6
    again = run_stain(rcm, fcm, output, "--stages", "gareau")
    assert again.exit_code == 5 and "--overwrite" in again.stderr  # never replaced unasked


def test_output_must_be_named_as_a_tiff(tmp_path: Path) -> None:
    fcm, rcm = good_gray(tmp_path, "fcm.tif"), good_gray(tmp_path, "rcm.tif")
    result = run_stain(rcm, fcm, tmp_path / "out.png", "--stages", "gareau")
    assert_clean_failure(result, tmp_path / "out.png", ".tif")


def assert_refused_by_stain(rcm: Path, fcm: Path, output: Path, fragment: str) -> None:
    """`dscm stain` exits 4 (bad input) with the reason on stderr and writes nothing."""
    result = run_stain(rcm, fcm, output, "--stages", "gareau")
    assert result.exit_code == 4, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("dscm: error:")]
    assert len(error) == 1 and fragment in error[0], result.stderr
    assert "Traceback" not in result.output
    assert not output.exists()


def set_tag(path: Path, tag: int, value: int) -> Path:
    """Overwrite the SHORT or LONG value of ``tag`` in a little-endian TIFF's first IFD."""
    data = bytearray(path.read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(data[entry : entry + 2], "little") == tag:
            size = 2 if int.from_bytes(data[entry + 2 : entry + 4], "little") == 3 else 4
            data[entry + 8 : entry + 8 + size] = value.to_bytes(size, "little")
            path.write_bytes(bytes(data))
            return path
    raise AssertionError(f"no tag {tag} in {path}")


def test_a_header_claiming_pixels_its_bytes_cannot_hold_is_refused(tmp_path: Path) -> None:
    """138 bytes that claim 19000 x 19000 px: under the pixel limit, but no such data exists."""
    claim = huge_header_tiff(tmp_path / "claim.tif", 19000, 19000)
    assert claim.stat().st_size < 200
    with pytest.raises(CorruptSlide, match="holds 16 bytes, its pixels need 361000000"):
        probe_pair(SlideInputs(claim, claim), 400_000_000)
    assert_refused_by_stain(claim, claim, tmp_path / "o.tif", "361000000")
    # The same claim said to be Deflate-compressed: 16 bytes cannot inflate to 361 MB.
    with pytest.raises(CorruptSlide, match="expands at most 1100:1"):
        probe_pair(SlideInputs(*[set_tag(claim, 259, 8)] * 2), 400_000_000)


def test_strips_that_all_point_at_the_same_bytes_are_refused(tmp_path: Path) -> None:
    """Each strip's count is right, but all of them reuse one strip's bytes."""
    fcm_unit, rcm_unit = confocal_like(64, 64)
    stacked = tmp_path / "stacked.tif"
    tifffile.imwrite(stacked, (rcm_unit * 255).astype(np.uint8), rowsperstrip=8)
    data = bytearray(stacked.read_bytes())
    with tifffile.TiffFile(stacked) as tif:
        tag = tif.pages[0].tags["StripOffsets"]
        offsets = list(tag.value)
        start = tag.valueoffset
    for i in range(len(offsets)):  # every strip at the first strip's offset
        data[start + 4 * i : start + 4 * i + 4] = offsets[0].to_bytes(4, "little")
    stacked.write_bytes(bytes(data))
    fcm = write_gray(tmp_path / "fcm.tif", fcm_unit)
    with pytest.raises(CorruptSlide, match="holds 512 bytes of image data"):
        probe_pair(SlideInputs(stacked, fcm), 10**9)


@pytest.mark.parametrize("compression", ["none", "deflate", "lzw", "packbits", "jpeg"])
@pytest.mark.parametrize("tile", [False, True])
def test_well_formed_tiffs_pass_the_pixel_data_check(
    tmp_path: Path, compression: str, tile: bool
) -> None:
    """Real files, including an all-black Deflate one near the codec's best ratio, are accepted."""
    fcm_unit, _ = confocal_like(300, 400)
    textured = write_gray(tmp_path / "t.tif", fcm_unit, compression=compression, tile=tile)
    black = write_gray(
        tmp_path / "b.tif", np.zeros((2000, 2000)), compression=compression, tile=tile
    )
    info = probe_pair(SlideInputs(textured, textured), 10**9)
    assert (info.width_px, info.height_px) == (400, 300)
    assert probe_pair(SlideInputs(black, black), 10**9).width_px == 2000
    if compression == "deflate" and not tile:
        assert black.stat().st_size * 200 < 2000 * 2000  # highly compressed, and still accepted


@pytest.mark.parametrize("make", [lying_jpeg, lying_png], ids=["jpeg", "png"])
def test_a_jpeg_or_png_claiming_pixels_its_data_cannot_hold_is_refused(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    """16 x 16 px of data under a header claiming 7000 x 7000: the JPEG used to stain as a
    blank slide (libjpeg fills the missing data with gray), the PNG failed only in the job."""
    claim = make(tmp_path / f"claim.{'jpg' if make is lying_jpeg else 'png'}")
    assert claim.stat().st_size < 1000
    with pytest.raises(CorruptSlide, match="claims 7000 x 7000 px"):
        probe_pair(SlideInputs(claim, claim), 400_000_000)
    assert_refused_by_stain(claim, claim, tmp_path / "o.tif", "claims 7000 x 7000 px")


@pytest.mark.parametrize(
    "options",
    [{}, {"optimize_coding": True}, {"interlace": True, "optimize_coding": True}],
    ids=["baseline", "optimized", "progressive"],
)
def test_well_formed_jpegs_and_pngs_pass_the_pixel_data_check(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    """Flat images (the best any codec compresses) in gray and colour, 16 px to 5000 px."""
    for shape in ((16, 16), (5000, 3001)):
        for bands in (1, 3):
            flat = pyvips.Image.new_from_array(np.full((*shape, bands), 200, np.uint8))
            jpeg, png = tmp_path / "flat.jpg", tmp_path / "flat.png"
            flat.jpegsave(str(jpeg), **options)
            flat.pngsave(str(png), compression=9, interlace=options.get("interlace", False))
            for path in (jpeg, png):
                assert probe_pair(SlideInputs(path, path), 10**9).width_px == shape[1]


def float_pair(tmp_path: Path, fcm_unit: np.ndarray, rcm_unit: np.ndarray, tag: str) -> SlideInputs:
    resolution = {"xres": 1000 / 0.75, "yres": 1000 / 0.75, "resunit": "cm"}
    return SlideInputs(
        write_gray(tmp_path / f"rcm-{tag}.tif", rcm_unit, "float32", **resolution),
        write_gray(tmp_path / f"fcm-{tag}.tif", fcm_unit, "float32", **resolution),
    )


def test_an_image_without_a_finite_pixel_is_refused(tmp_path: Path) -> None:
    _, rcm_unit = confocal_like(64, 80)
    nan = write_gray(tmp_path / "nan.tif", np.full((64, 80), np.nan), "float32")
    rcm = write_gray(tmp_path / "rcm.tif", rcm_unit, "float32")
    with pytest.raises(InputError, match="no finite pixel"):
        probe_pair(SlideInputs(rcm, nan), 10**9)
    infinite = write_gray(tmp_path / "inf.tif", np.full((64, 80), np.inf), "float32")
    with pytest.raises(InputError, match="no finite pixel"):
        probe_pair(SlideInputs(infinite, rcm), 10**9)
    assert_refused_by_stain(rcm, nan, tmp_path / "o.tif", "no finite pixel")


def test_a_few_non_finite_pixels_are_stained_as_zero(tmp_path: Path) -> None:
    fcm_unit, rcm_unit = confocal_like(160, 200)
    holes = (np.array([3, 50, 120, 159]), np.array([7, 60, 30, 199]))
    zeroed_fcm, zeroed_rcm = fcm_unit.copy(), rcm_unit.copy()
    zeroed_fcm[holes] = zeroed_rcm[holes] = 0.0
    holed_fcm, holed_rcm = fcm_unit.copy(), rcm_unit.copy()
    holed_fcm[holes] = [np.nan, np.inf, -np.inf, np.nan]
    holed_rcm[holes] = [np.inf, np.nan, np.nan, -np.inf]
    outputs = []
    for tag, (fcm, rcm) in {
        "holed": (holed_fcm, holed_rcm),
        "zeroed": (zeroed_fcm, zeroed_rcm),
    }.items():
        pair = float_pair(tmp_path, fcm, rcm, tag)
        out = tmp_path / f"{tag}.tif"
        result = run_stain(
            pair.rcm, pair.fcm, out, "--stages", "gareau", "--compression", "lossless"
        )
        assert result.exit_code == 0, result.output
        outputs.append(pyvips.Image.new_from_file(str(out)).numpy())
    assert outputs[0].std() > 5  # a stain, not a flat image
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_image_data_that_does_not_decode_fails_instead_of_staining_black(tmp_path: Path) -> None:
    """Right headers and sizes, noise for Deflate data: refused once the pixels are read."""
    noise = undecodable_tiff(tmp_path / "noise.tif", 128, 128)
    good = tmp_path / "good.tif"
    good.write_bytes(gray_tiff_bytes(128, 128, compression="zlib"))
    assert probe_pair(SlideInputs(noise, good), 10**9).width_px == 128  # headers are fine
    out = tmp_path / "o.tif"
    result = run_stain(noise, good, out, "--stages", "gareau")
    assert result.exit_code == 4, result.output
    assert "noise.tif: image data is truncated or corrupt" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_write_errors_name_the_users_output_not_our_temporaries() -> None:
    from service.slide.writer import output_error

    error = output_error(
        OSError("unable to open /data/.out.tif.bdfc587f.canvas.tif"), Path("/data/out.tif")
    )
    assert ".canvas" not in str(error) and "/data/out.tif" in str(error)
