"""A slide while it is being stained, as other processes see it: the live folder.

A worker that stains a job's slide keeps, in the attempt's live folder on shared storage:

    plan.json            the grid (LivePlan): sizes, tile size, tile count, the canvases
    overview.jpg         Gareau's stain of the slide's thumbnails (slide coordinates), which the
                         viewer shows, greyed, where tiles are not yet stained
    <name>.canvas.tif    one uncompressed canvas per output ("stain", and each extra layer)
    tiles.done           the ledger: one byte per grid tile, 1 once the tile is in every canvas

Tiles are written into the canvases first and marked in the ledger after, so a reader that
trusts the ledger never sees a half-written tile. The viewer reads it to show the tiles already
stained; region workers (issue 20) open the same canvases and write their tiles into them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.core.stain import gareau_stain

PLAN_NAME = "plan.json"
Plan = TypeVar("Plan")
LEDGER_NAME = "tiles.done"
OVERVIEW_NAME = "overview.jpg"


def canvas_name(output: str) -> str:
    """The canvas file of one output ("stain", "gareau", "fcm", "rcm") in a live folder."""
    return f"{output}.canvas.tif"


def save_overview(folder: Path, fcm_unit: np.ndarray, rcm_unit: np.ndarray) -> None:
    """Write overview.jpg atomically: Gareau's stain of the normalised thumbnails (values in
    [0, 1]), the picture of the whole slide a viewer shows before its tiles are stained."""
    import pyvips  # here: the API reads live folders without loading libvips for it

    rgb = (gareau_stain(fcm_unit, rcm_unit).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
    tmp = folder / f".{OVERVIEW_NAME}.tmp"
    tmp.write_bytes(pyvips.Image.new_from_array(rgb, interpretation="srgb").jpegsave_buffer(Q=85))
    os.replace(tmp, folder / OVERVIEW_NAME)


@dataclass(frozen=True)
class LivePlan:
    """What a reader needs to find a tile in a live folder's canvases."""

    width_px: int  # the slide's own size (the published pyramid's)
    height_px: int
    work_width_px: int  # the size the tiles are computed and the canvases written at
    work_height_px: int
    tile_px: int  # the grid's tile side; tiles are row-major (service.core.grid.tile_grid)
    tiles: int
    mpp_um: float
    bands: dict[str, int]  # output name -> 3 (RGB) or 1 (gray): the canvases in the folder

    @property
    def columns(self) -> int:
        """Grid columns."""
        return -(-self.work_width_px // self.tile_px)

    def save(self, folder: Path) -> None:
        """Write plan.json atomically (a reader sees the whole plan or none)."""
        _save_json(folder / PLAN_NAME, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> LivePlan:
        """Read plan.json; OSError when absent, ValueError when malformed."""
        return _load_json(cls, folder / PLAN_NAME)


class TileLedger:
    """One byte per grid tile in a file: 0 not yet, 1 in every canvas. ``create`` makes (or
    truncates to zeros) the file; otherwise the file must exist (a reader, a region worker)."""

    def __init__(self, path: Path, tiles: int, create: bool = False) -> None:
        self.path, self.tiles = path, tiles
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self.fd, tiles)

    def mark(self, indices: list[int] | range | int) -> None:
        """Record tiles as done (call after their pixels are written to every canvas)."""
        for index in [indices] if isinstance(indices, int) else indices:
            if not 0 <= index < self.tiles:
                raise IndexError(f"tile {index} is outside the grid of {self.tiles}")
            os.pwrite(self.fd, b"\x01", index)

    def done(self) -> np.ndarray:
        """Per tile, whether it is done (a bool array of the grid's length)."""
        return ledger_flags(os.pread(self.fd, self.tiles, 0), self.tiles)

    def close(self) -> None:
        """Close the ledger file; closing twice is fine."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TileLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


REGIONS_NAME = "regions.json"


@dataclass(frozen=True)
class RegionPlan:
    """What a region worker needs besides the live plan: the tiles of each region, the chain's
    slide-wide state (measured once, before the regions) and what the chain was."""

    regions: list[list[int]]  # grid tile indices per region, in computing order
    stages: list[str]
    layers: list[str]
    models_sha256: list[str]  # the networks the chain ran: a worker with others refuses
    halo_px: int
    batch_size: int
    ranges: dict[str, dict[str, float]]  # IntensityRange per mode
    chain_state: dict[str, object]  # StainChain.slide_state()

    def save(self, folder: Path) -> None:
        """Write regions.json atomically."""
        _save_json(folder / REGIONS_NAME, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> RegionPlan:
        """Read regions.json; OSError when absent, ValueError when malformed."""
        return _load_json(cls, folder / REGIONS_NAME)


def _save_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` atomically: a reader sees all of it or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _load_json(kind: type[Plan], path: Path) -> Plan:
    """A ``kind`` from the JSON object at ``path``; OSError when absent, ValueError when not
    an object with exactly ``kind``'s fields."""
    data = json.loads(path.read_text())
    try:
        return kind(**data)
    except TypeError as exc:
        raise ValueError(f"{path} is not a {kind.__name__}: {exc}") from exc


def read_done(folder: Path, tiles: int) -> np.ndarray:
    """Per tile, whether the ledger marks it done, read without opening it for writing (the
    viewer's API may see the live folder read-only); OSError when the ledger is absent."""
    return ledger_flags((folder / LEDGER_NAME).read_bytes()[:tiles], tiles)


def ledger_flags(raw: bytes, tiles: int) -> np.ndarray:
    """The ledger's bytes as one bool per grid tile (a short file: the rest not done)."""
    flags = np.zeros(tiles, bool)
    flags[: len(raw)] = np.frombuffer(raw, np.uint8) == 1
    return flags
