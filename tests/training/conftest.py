"""Tiny generated H&E-like data for the training tests (no shared data needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pyvips

sys.path.insert(0, str(Path(__file__).parent))

from train_fakes import he_like, write_png


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A look-alike of the shared data folder: MoNuSeg- and glioma-like files, one skin image."""
    root = tmp_path_factory.mktemp("data")
    cases = [f"TCGA-{letter * 2}-{index:04d}" for index, letter in enumerate("ABCDEFGHIJ", 1)]
    for index, case in enumerate(cases):
        write_png(root / "he" / "monuseg" / f"{case}-01Z-00-DX1.png", he_like(288, 288, index))
    # two glioma crops of one case already in MoNuSeg: they must share its split
    for part in (1, 2):
        name = f"tcga-TCGA-AA-0001-R01.tif_normal.png_normal_small_{part}.png"
        write_png(root / "he" / "tcga-glioma" / name, he_like(288, 288, 100 + part))
    for index in range(4):
        write_png(
            root / "he" / "tcga-glioma" / f"gbm40-0{index}.png", he_like(288, 288, 200 + index)
        )
    skin = he_like(192, 256, 300)
    (root / "he" / "skin").mkdir(parents=True)
    pyvips.Image.new_from_array(skin).jpegsave(str(root / "he" / "skin" / "wikimedia-test.jpg"))
    # three skin whole slides: two train the generator (crop 10 is validation), one is held out
    for slide_index, slide in enumerate(("keloid-scar", "molluscum-contagiosum", "morphea")):
        folder = root / "he" / "skin-wsi" / slide
        folder.mkdir(parents=True)
        for number, kind in ((1, "core"), (2, "edge"), (10, "core")):
            crop = he_like(160, 160, 400 + 10 * slide_index + number)
            name = f"{slide}-{number:02d}-{kind}-x{number}-y{number}.jpg"
            pyvips.Image.new_from_array(crop).jpegsave(str(folder / name))
    return root


@pytest.fixture(scope="session")
def prepared_dir(fake_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(fake_data_root, out, seed=0, patch_px=128, min_tissue=0.5)
    return out
