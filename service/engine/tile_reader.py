"""TileReader: tile blocks (tile + halo) read and normalised ahead of inference, on a thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from service.core.grid import Tile
from service.core.normalize import IntensityRange, normalize
from service.slide import OpenedMode

READ_QUEUE_BATCHES = 2
_DONE = object()


class TileReader:
    """Reads and normalises tile blocks (tile + halo) on a background thread, ahead of inference."""

    def __init__(
        self,
        fcm: OpenedMode,
        rcm: OpenedMode,
        ranges: dict[str, IntensityRange],
        tile_px: int,
        halo_px: int,
    ) -> None:
        self.fcm, self.rcm, self.ranges = fcm, rcm, ranges
        self.side_px, self.halo_px = tile_px + 2 * halo_px, halo_px
        self.busy_s = 0.0
        self._stop = threading.Event()

    def read(self, tile: Tile, crop_px: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A normalised block of the grid's tile size (or ``crop_px``) plus the halo on every
        side, with its top-left corner at the tile's."""
        started = time.perf_counter()
        side = self.side_px if crop_px is None else crop_px + 2 * self.halo_px
        x, y = tile.l0_x - self.halo_px, tile.l0_y - self.halo_px
        fcm = normalize(self.fcm.read_padded(x, y, side, side), self.ranges["fcm"])
        rcm = normalize(self.rcm.read_padded(x, y, side, side), self.ranges["rcm"])
        self.busy_s += time.perf_counter() - started
        return fcm, rcm

    def stop(self) -> None:
        """Tell the reading thread to stop at its next tile."""
        self._stop.set()

    def batches(
        self, tiles: list[Tile], batch_size: int
    ) -> Iterator[list[tuple[Tile, np.ndarray, np.ndarray]]]:
        """Batches of (tile, fcm block, rcm block), read by a thread; errors re-raised here."""
        blocks: queue.Queue[Any] = queue.Queue(maxsize=READ_QUEUE_BATCHES * batch_size)
        finished = threading.Event()  # this call's consumer is gone; stop() stops every call

        def stopped() -> bool:
            """Whether the producer should stop: the consumer left, or stop() was called."""
            return finished.is_set() or self._stop.is_set()

        def produce() -> None:
            """Read the tiles into the queue until done or stopped; an exception is queued for the
            consumer."""
            try:
                for tile in tiles:
                    item = (tile, *self.read(tile))
                    while not stopped():
                        try:
                            blocks.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stopped():
                        return
                blocks.put(_DONE)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                blocks.put(exc)

        thread = threading.Thread(target=produce, name="dscm-tile-reader", daemon=True)
        thread.start()
        batch: list[tuple[Tile, np.ndarray, np.ndarray]] = []
        try:
            while True:
                item = blocks.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            finished.set()
            thread.join(timeout=5)
