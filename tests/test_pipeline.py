"""stain_slide end to end: the pyramid, seams, tissue skipping, cancellation, failures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openslide
import pytest
import pyvips
import tifffile
from onnx_factory import make_colour_card

from service.core.chain import StainChain
from service.core.colour import ColourTransfer
from service.core.normalize import IntensityRange, normalize
from service.engine.pipeline import StainSpec, layer_output_path, load_models, stain_slide
from service.slide import SlideInputs
from service.vocabulary.errors import JobCancelled, OutputError
from service.vocabulary.options import JobOptions


def read_level0(path: Path) -> np.ndarray:
    return np.asarray(pyvips.Image.tiffload(str(path)).numpy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def whole_image_pass(inputs: SlideInputs, report: dict, chain: StainChain) -> np.ndarray:
    """The same chain once over the whole image (reflect-padded by its halo), no tiles."""
    halo = chain.halo_px
    blocks = []
    for mode, path in (("fcm", inputs.fcm), ("rcm", inputs.rcm)):
        raw = np.asarray(pyvips.Image.new_from_file(str(path)).numpy())
        unit = normalize(raw, IntensityRange(**report["normalisation"][mode]))
        pad = (-unit.shape[0]) % 4, (-unit.shape[1]) % 4
        blocks.append(np.pad(unit, ((halo, halo + pad[0]), (halo, halo + pad[1])), mode="reflect"))
    out = chain.run(blocks[0][None], blocks[1][None])[0]
    height, width = report["input"]["height_px"], report["input"]["width_px"]
    return out[:height, :width]


def seam_ratio(image: np.ndarray, tile_px: int, band_px: int = 16) -> float:
    """Colour step across vertical tile borders over the step at other column positions.

    Means over ``band_px`` columns on each side, within each row of tiles, cancel the texture
    and speckle and leave the offset that differing per-tile statistics would cause.
    """
    pixels = image.astype(np.float64)
    steps = []
    for x in range(band_px, image.shape[1] - band_px, band_px):
        diffs = [
            np.abs(
                pixels[y : y + tile_px, x - band_px : x].mean(axis=(0, 1))
                - pixels[y : y + tile_px, x : x + band_px].mean(axis=(0, 1))
            ).sum()
            for y in range(0, image.shape[0], tile_px)
        ]
        steps.append((x % tile_px == 0, float(np.mean(diffs))))
    at_borders = np.mean([d for border, d in steps if border])
    elsewhere = np.mean([d for border, d in steps if not border])
    return float(at_borders / elsewhere)


LOSSLESS = {"options": JobOptions(compression="lossless"), "skip_background": False}


def test_pyramid_opens_in_openslide_and_tifffile_with_edges(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(1800, 2500, xres=1000 / 0.5, yres=1000 / 0.5, resunit="cm")
    output = tmp_path / "out.tif"
    report = stain_slide(inputs, output, StainSpec(models_dir=tmp_path, tile_px=512)).to_dict()
    assert report["output_sha256"] and len(report["levels"]) >= 4
    # Gareau alone cannot invent or erase nuclei: the faithfulness check passes it
    assert report["qc"]["flag"] is None and report["qc"]["ratio"] == pytest.approx(1, abs=0.05)
    slide = openslide.OpenSlide(str(output))
    assert slide.dimensions == (2500, 1800)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
    assert slide.level_count == len(report["levels"])
    corner = np.asarray(slide.read_region((2500 - 64, 1800 - 64), 0, (64, 64)))
    assert corner[..., 3].min() == 255  # fully inside the image: opaque
    deepest = slide.level_count - 1
    whole = np.asarray(slide.read_region((0, 0), deepest, slide.level_dimensions[deepest]))
    assert whole[..., :3].std() > 5  # an image, not a flat fill
    with tifffile.TiffFile(output) as tif:
        assert [p.shape[:2] for p in tif.pages] == [
            (lv["height_px"], lv["width_px"]) for lv in report["levels"]
        ]
        assert all(p.is_tiled for p in tif.pages)
        assert all(p.subfiletype == 1 for p in tif.pages[1:])  # reduced-resolution levels
        px_per_cm = [p.tags["XResolution"].value for p in tif.pages]
        for page, (num, den) in zip(tif.pages, px_per_cm, strict=True):
            expected = 1e4 / 0.5 * page.shape[1] / 2500  # each level's own resolution
            assert num / den == pytest.approx(expected, rel=1e-3)


def test_tiles_match_a_whole_image_pass_for_plain_models(
    make_pair, plain_models: Path, tmp_path: Path
) -> None:
    inputs = make_pair(2048, 2048)
    spec = StainSpec(models_dir=plain_models, tile_px=512, **LOSSLESS)
    models = load_models(spec)
    report = stain_slide(inputs, tmp_path / "tiled.tif", spec, models=models).to_dict()
    assert report["stages"] == ["despeckle", "median", "gareau", "generator"]
    reference = whole_image_pass(inputs, report, models.chain(None))
    assert psnr(read_level0(tmp_path / "tiled.tif"), reference) >= 40.0


def test_instance_norm_generator_has_no_seams(
    make_pair, shared_models: Path, tmp_path: Path, monkeypatch
) -> None:
    inputs = make_pair(2048, 2048, tissue_fraction=0.7)
    spec = StainSpec(models_dir=shared_models, tile_px=512, **LOSSLESS)
    models = load_models(spec)
    report = stain_slide(inputs, tmp_path / "shared.tif", spec, models=models).to_dict()
    assert report["shared_norm_stats"]
    shared = read_level0(tmp_path / "shared.tif")

    # exact against one whole-image pass that uses the same slide-wide statistics
    chain = models.chain(None)
    chain.norm_stats = _stats_of(inputs, spec, models, monkeypatch)
    assert psnr(shared, whole_image_pass(inputs, report, chain)) >= 40.0

    # against plain instance norm over the whole image (what the network was trained to do),
    # and against tiles that each normalise with their own statistics (what shared stats fix)
    whole_in = whole_image_pass(inputs, report, models.chain(None))  # norm_stats None: own
    monkeypatch.setattr(StainChain, "estimate_slide_stats", lambda self, blocks: None)
    stain_slide(inputs, tmp_path / "naive.tif", spec, models=models)
    naive = read_level0(tmp_path / "naive.tif")
    assert psnr(shared, whole_in) > psnr(naive, whole_in)
    # The untiled pass has no tile borders: its ratio at the same columns is what the image's
    # own texture gives. Shared statistics stay at it; per-tile statistics step well above it.
    untiled = seam_ratio(whole_in, 512)
    assert seam_ratio(shared, 512) <= 1.1 * untiled
    assert seam_ratio(naive, 512) >= 1.5 * untiled


def _stats_of(
    inputs: SlideInputs, spec: StainSpec, models, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """The statistics stain_slide pools, obtained through the same public entry point."""
    captured: list[np.ndarray] = []
    original = StainChain.estimate_slide_stats

    def spy(self: StainChain, blocks) -> None:
        original(self, blocks)
        assert self.norm_stats is not None
        captured.append(self.norm_stats)

    with monkeypatch.context() as patch:
        patch.setattr(StainChain, "estimate_slide_stats", spy)
        stain_slide(inputs, inputs.rcm.parent / "again.tif", spec, models=models)
    return captured[0]


def test_background_tiles_are_skipped_and_filled(
    make_pair, shared_models: Path, tmp_path: Path
) -> None:
    inputs = make_pair(1024, 2048, tissue_fraction=0.4)
    report = stain_slide(
        inputs, tmp_path / "o.tif", StainSpec(models_dir=shared_models, tile_px=256)
    ).to_dict()
    tiles = report["tiles"]
    assert 0 < tiles["skipped"] < tiles["total"]
    image = read_level0(tmp_path / "o.tif")
    far_right = image[:, -200:].reshape(-1, 3)
    assert np.abs(far_right.astype(int) - report["background_rgb"]).max() <= 3  # JPEG


def test_colour_stage_is_seamless_and_keeps_skipped_glass_white(make_pair, tmp_path: Path) -> None:
    folder = tmp_path / "colour-only"
    make_colour_card(folder)
    inputs = make_pair(1024, 2048, tissue_fraction=0.5)
    spec = StainSpec(models_dir=folder, tile_px=256, options=JobOptions(compression="lossless"))
    models = load_models(spec)
    report = stain_slide(inputs, tmp_path / "c.tif", spec, models=models).to_dict()
    assert report["stages"] == ["median", "gareau", "colour"]
    assert report["colour"]["target"] == "test-look"
    assert 0 < report["tiles"]["skipped"] < report["tiles"]["total"]
    assert min(report["background_rgb"]) == 255  # no signal: Gareau's white, untouched
    assert 0 < report["qc"]["nuc_r"] <= 1 and report["qc"]["nuc_r_gareau"] > 0.9
    image = read_level0(tmp_path / "c.tif")
    # one affine map for the whole slide: equal to a whole-image pass with that map
    chain = models.chain(None)
    transfer = report["colour"]["transfer"]
    matrix = tuple(tuple(row) for row in transfer["matrix"])
    chain.colour_transfer = ColourTransfer(matrix, tuple(transfer["offset"]))
    whole = whole_image_pass(inputs, report, chain)
    computed = np.ones(image.shape[:2], bool)
    assert psnr(image[computed], whole[computed]) >= 40.0
    # glass next to tissue (computed tiles) matches the skipped tiles' fill
    fcm = np.asarray(pyvips.Image.new_from_file(str(inputs.fcm)).numpy())
    glass = image[fcm <= np.percentile(fcm, 5)]
    assert np.abs(glass.astype(int) - 255).mean() < 3


def test_progress_reports_every_tile_and_cancel_leaves_nothing(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(1024, 1024)
    seen: list[tuple[str, int, int]] = []
    stain_slide(
        inputs,
        tmp_path / "ok.tif",
        StainSpec(models_dir=tmp_path, tile_px=256, skip_background=False),
        progress=lambda *a: seen.append(a),
    )
    tiles = [event for event in seen if event[0] == "tiles"]
    assert tiles[-1] == ("tiles", 16, 16)
    assert [d for _, d, _ in tiles] == sorted(d for _, d, _ in tiles)

    def cancel(phase: str, done: int, total: int) -> None:
        if phase == "tiles" and done >= 3:
            raise JobCancelled("cancelled by the user")

    output = tmp_path / "cancelled.tif"
    with pytest.raises(JobCancelled):
        stain_slide(
            inputs,
            output,
            StainSpec(models_dir=tmp_path, tile_px=256, skip_background=False),
            progress=cancel,
        )
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cancelled")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_directory(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(256, 256)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(OutputError):
        stain_slide(inputs, locked / "o.tif", StainSpec(models_dir=tmp_path))
    assert list(locked.iterdir()) == []


def test_an_uncreatable_output_path_fails_cleanly(make_pair, tmp_path: Path) -> None:
    """A path the kernel refuses to create (as root too): a clean OutputError, no file (a
    really full disk: tests/test_cli.py)."""
    inputs = make_pair(256, 256)
    with pytest.raises(OutputError):
        stain_slide(
            inputs, Path("/proc/dscm-cannot-write-here/o.tif"), StainSpec(models_dir=tmp_path)
        )


def test_ome_tiff_and_lossless_options(make_pair, tmp_path: Path) -> None:
    inputs = make_pair(1200, 1300)
    output = tmp_path / "o.ome.tif"
    report = stain_slide(
        inputs,
        output,
        StainSpec(
            models_dir=tmp_path,
            options=JobOptions(compression="lossless", output_format="ome-tiff"),
        ),
    ).to_dict()
    with tifffile.TiffFile(output) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert len(levels) == len(report["levels"]) >= 3
        assert float(tif.ome_metadata.split('PhysicalSizeX="')[1].split('"')[0]) == pytest.approx(
            0.75
        )
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_extra_layers_are_written_beside_the_stain(
    make_pair, shared_models: Path, tmp_path: Path
) -> None:
    inputs = make_pair(600, 700)
    output = tmp_path / "out.tif"
    spec = StainSpec(
        models_dir=shared_models,
        tile_px=256,
        options=JobOptions(compression="lossless", layers=("gareau", "fcm", "rcm")),
        skip_background=False,
    )
    report = stain_slide(inputs, output, spec).to_dict()
    paths = {layer: Path(p) for layer, p in report["extra_outputs"].items()}
    assert paths["gareau"] == layer_output_path(output, "gareau") == tmp_path / "out.gareau.tif"
    assert pyvips.Image.new_from_file(str(paths["fcm"])).bands == 1
    gareau_only = stain_slide(
        inputs,
        tmp_path / "g.tif",
        StainSpec(
            models_dir=shared_models,
            tile_px=256,
            options=JobOptions(compression="lossless", stages=("despeckle", "median", "gareau")),
            skip_background=False,
        ),
    )
    assert gareau_only.to_dict()["stages"] == ["despeckle", "median", "gareau"]
    assert np.array_equal(read_level0(paths["gareau"]), read_level0(tmp_path / "g.tif"))
    fcm_raw = np.asarray(pyvips.Image.new_from_file(str(inputs.fcm)).numpy())
    fcm_layer = read_level0(paths["fcm"])
    assert np.corrcoef(fcm_raw.ravel(), fcm_layer.ravel())[0, 1] > 0.99
