"""A slide while it is being stained, as other processes see it: the live folder.

A worker that stains a job's slide keeps, in the attempt's live folder on shared storage:

    plan.json            the grid (LivePlan): sizes, tile size, tile count, the canvases
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

import numpy as np

PLAN_NAME = "plan.json"
LEDGER_NAME = "tiles.done"


def canvas_name(output: str) -> str:
    """The canvas file of one output ("stain", "gareau", "fcm", "rcm") in a live folder."""
    return f"{output}.canvas.tif"


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
        tmp = folder / f".{PLAN_NAME}.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, folder / PLAN_NAME)

    @classmethod
    def load(cls, folder: Path) -> LivePlan:
        """Read plan.json; OSError when absent, ValueError when malformed."""
        data = json.loads((folder / PLAN_NAME).read_text())
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad live plan in {folder}: {exc}") from exc


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
        raw = os.pread(self.fd, self.tiles, 0)
        flags = np.zeros(self.tiles, bool)
        flags[: len(raw)] = np.frombuffer(raw, np.uint8) == 1
        return flags

    def close(self) -> None:
        """Close the ledger file; closing twice is fine."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TileLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
