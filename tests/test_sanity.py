"""The input check (issue 22, part 1): FCM told from RCM by content; swapped and identical pairs
refused (CLI exit 4, job code inputs_swapped), doubtful ones flagged, correct ones untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.pairs import Texture, confocal_like, textured_tissue, write_gray, write_gray_tiff
from support.shared_data import real_crop
from support.slides import write_slide_pair

from service.cli import main
from service.core.grid import tissue_mask
from service.core.normalize import estimate_range, normalize
from service.core.sanity import check_modes
from service.engine.pipeline import StainSpec, stain_slide
from service.slide import SlideInputs, open_pair
from service.slide.inspect import check_inputs, measure_thumbnails
from service.vocabulary.errors import InputsIdentical, InputsSwapped
from service.vocabulary.options import JobOptions

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = SlideInputs(
    rcm=ROOT / "samples/skin-scan/DET#1/highres_raw.tif",
    fcm=ROOT / "samples/skin-scan/DET#2/highres_raw.tif",
)
REAL_CROP = SlideInputs(rcm=real_crop("rcm"), fcm=real_crop("fcm"))
needs_crop = pytest.mark.skipif(
    not REAL_CROP.fcm.is_file(), reason="the real Vivascope crop is not on this machine"
)


def unit(pixels: np.ndarray) -> np.ndarray:
    raw = np.asarray(pixels, np.float32)
    return normalize(raw, estimate_range(raw))


def outcome_of(fcm: np.ndarray, rcm: np.ndarray) -> str:
    f, r = unit(fcm), unit(rcm)
    return check_modes(f, r, tissue_mask(f, r)).outcome


def outcome_of_files(inputs: SlideInputs) -> str:
    """The check as stain_slide's plan phase runs it, on the files' thumbnails."""
    _, rcm, fcm = open_pair(inputs, 10**9)
    _, thumbs = measure_thumbnails(fcm, rcm)
    mask = tissue_mask(thumbs["fcm"], thumbs["rcm"])
    return check_inputs(thumbs, mask, True, (fcm, rcm)).outcome


def swapped(inputs: SlideInputs) -> SlideInputs:
    return SlideInputs(rcm=inputs.fcm, fcm=inputs.rcm)


@pytest.mark.parametrize(
    "inputs", [SAMPLE, pytest.param(REAL_CROP, marks=needs_crop)], ids=["sample", "real-crop"]
)
def test_real_looking_pairs_pass_and_are_caught_swapped_or_doubled(inputs: SlideInputs) -> None:
    assert outcome_of_files(inputs) == "ok"
    assert outcome_of_files(swapped(inputs)) == "swapped"
    assert outcome_of_files(SlideInputs(rcm=inputs.fcm, fcm=inputs.fcm)) == "identical"
    assert outcome_of_files(SlideInputs(rcm=inputs.rcm, fcm=inputs.rcm)) == "identical"


def test_confocal_like_both_directions() -> None:
    fcm, rcm = confocal_like(600, 800)
    assert outcome_of(fcm, rcm) == "ok"
    assert outcome_of(rcm, fcm) == "swapped"
    assert outcome_of(fcm, fcm) == "identical"


def test_pairs_without_fcm_rcm_signal_are_ok(tmp_path: Path) -> None:
    """The tests' textured and wave pairs look alike in both modes: no evidence, no flag."""
    rng = np.random.default_rng(1)
    first = textured_tissue(256, 256, rng)
    second = textured_tissue(256, 256, np.random.default_rng(2))
    assert outcome_of(second, first) == outcome_of(first, second) == "ok"
    look = Texture(periods_px=(7.0, 11.0), tissue_fraction=0.7, speckle_low=0.6, gain=127.0)
    dim = Texture(periods_px=(7.0, 11.0), tissue_fraction=0.7, speckle_low=0.6, gain=89.0)
    assert (
        outcome_of(textured_tissue(256, 256, rng, dim), textured_tissue(256, 256, rng, look))
        == "ok"
    )
    for fraction in (0.7, 1.0):
        waves = write_slide_pair(tmp_path / str(fraction), 600, 500, tissue_fraction=fraction)
        assert outcome_of_files(waves) == outcome_of_files(swapped(waves)) == "ok"
    service_pair = SlideInputs(
        rcm=write_gray_tiff(tmp_path / "rcm.tif", 256, 256, 1),
        fcm=write_gray_tiff(tmp_path / "fcm.tif", 256, 256, 2),
    )
    assert outcome_of_files(service_pair) == "ok"


def test_flat_or_empty_images_carry_no_evidence() -> None:
    black = np.zeros((128, 128), np.float32)
    grey = np.full((128, 128), 0.5, np.float32)
    assert outcome_of(black, black) == "ok"
    assert outcome_of(grey, black) == "ok"


def test_a_weak_reversed_signal_is_flagged_not_refused() -> None:
    """Two reflectance-like images, the RCM with faint nuclei: doubtful, never refused."""
    fcm, rcm = confocal_like(600, 800, seed=1)
    _, other_rcm = confocal_like(600, 800, seed=2)
    nuclei = fcm * (fcm > 0.5)
    f, r = unit(other_rcm), unit(rcm + 0.3 * nuclei)
    check = check_modes(f, r, tissue_mask(f, r))
    assert check.outcome == "doubtful" and not check.refused
    assert check.flag == "check that FCM and RCM are not swapped"
    assert check.summary().flag == check.flag


def test_stain_refuses_swapped_and_identical_unless_allowed(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(256, 320)
    spec = StainSpec(options=JobOptions(stages=("gareau",)))
    with pytest.raises(InputsSwapped) as refused:
        stain_slide(swapped(inputs), tmp_path / "s.tif", spec)
    assert refused.value.code == "inputs_swapped" and refused.value.http_status == 422
    assert "--allow-swapped" in refused.value.detail and "\n" not in refused.value.detail
    assert not (tmp_path / "s.tif").exists()
    with pytest.raises(InputsIdentical):
        stain_slide(SlideInputs(rcm=inputs.fcm, fcm=inputs.fcm), tmp_path / "i.tif", spec)
    allowed = StainSpec(options=JobOptions(stages=("gareau",), allow_swapped=True))
    report = stain_slide(swapped(inputs), tmp_path / "a.tif", allowed)
    assert report.inputs_check is not None
    assert report.inputs_check.outcome == "swapped" and report.inputs_check.allowed
    assert report.inputs_check.flag
    right = stain_slide(inputs, tmp_path / "r.tif", spec)
    assert right.inputs_check is not None and right.inputs_check.outcome == "ok"
    assert right.inputs_check.flag is None


def test_cli_exit_4_with_one_line_and_the_override(tmp_path: Path) -> None:
    fcm, rcm = confocal_like(256, 320)
    rcm_path, fcm_path = write_gray(tmp_path / "r.tif", rcm), write_gray(tmp_path / "f.tif", fcm)
    args = ["stain", "--rcm", str(fcm_path), "--fcm", str(rcm_path), "--stages", "gareau"]
    runner = CliRunner()
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "out.tif")])
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "swap them" in lines[0] and "--allow-swapped" in lines[0]
    assert not (tmp_path / "out.tif").exists()
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "out.tif"), "--allow-swapped"])
    assert result.exit_code == 0, result.stderr
    assert "FCM and RCM look swapped" in result.stderr


def test_options_carry_allow_swapped_through_storage() -> None:
    stored = JobOptions(allow_swapped=True).to_json()
    assert JobOptions.from_json(stored).allow_swapped is True
    assert JobOptions.from_json({}).allow_swapped is False


def test_box_mean_matches_the_integral_image_blur() -> None:
    from service.core.filters import box_mean
    from service.core.quality import box_blur

    image = np.random.default_rng(3).random((300, 420)).astype(np.float32)
    for size_px in (3, 5, 15, 41):
        np.testing.assert_allclose(box_mean(image, size_px), box_blur(image, size_px), atol=1e-4)
