"""Deep Zoom for the viewer: which file a job's layer is, and its DZI and tiles (cached).

A layer is one of a fixed set of names, never a path: ``stain`` is the job's result, the others
are the extra outputs the runner recorded (by file name) in the job's report. Every file is
looked up inside the job's own result folder. pyvips (through service.slide.deepzoom) is imported
on the first tile, so an API process that never serves one never loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.api.layers import layer_file_name
from service.api.live_tiles import LiveGone, LiveTiles, check_live_layer, is_live
from service.api.problems import ApiError
from service.api.published import published_path
from service.jobs.files import JobFiles
from service.jobs.job import Job, JobState
from service.vocabulary.options import ViewLayer

if TYPE_CHECKING:
    from service.slide.deepzoom import DeepZoomCache

MAX_OPEN_SLIDES = 16
MAX_CACHED_TILES = 4096  # tiles of real tissue are 20-30 kB: at most about 120 MB


@dataclass(frozen=True)
class ServedTile:
    """A Deep Zoom tile as the route sends it: its JPEG and whether it is final (the
    published pyramid's, or a running job's tile whose grid tiles are all stained) or will
    change (a running job's tile with parts still to come: never cached)."""

    jpeg: bytes
    final: bool
    live: bool


class TileService:
    """The DZI and tiles of jobs' layers: a finished job's from its published pyramid through
    one shared DeepZoomCache, a running job's from its live folder (service.api.live_tiles)."""

    def __init__(
        self,
        files: JobFiles,
        max_slides: int = MAX_OPEN_SLIDES,
        max_tiles: int = MAX_CACHED_TILES,
        reload: Callable[[str], Job | None] | None = None,
    ) -> None:
        """``reload``: the job record by id, read again when a running job's attempt ends while
        one of its tiles is read (the store's ``get``)."""
        self.files = files
        self.live = LiveTiles(files)
        self.reload = reload
        self._sizes = (max_slides, max_tiles)
        self._cache: DeepZoomCache | None = None
        self._lock = threading.Lock()
        self._opened: set[Path] = set()  # pyramids the cache may hold open

    def cache(self) -> DeepZoomCache:
        """The shared Deep Zoom cache, made on first use (pyvips is imported only then)."""
        with self._lock:
            if self._cache is None:
                from service.slide.deepzoom import DeepZoomCache

                self._cache = DeepZoomCache(*self._sizes)
            return self._cache

    def layer_path(self, job: Job, layer: ViewLayer) -> Path:
        """The file behind ``layer``: 409/410 as for the result, 404 for a layer not kept."""
        what = "result" if layer == "stain" else f"{layer} layer"
        name = layer_file_name(job, layer)
        kept = job.state == JobState.SUCCEEDED and job.purged_at is None
        if name is None and layer != "stain" and kept:
            raise ApiError(
                404, "layer_not_found", f"the job has no {layer} layer (submit with layers={layer})"
            )
        return published_path(self.files, job, name, what)

    def forget(self, job: Job) -> None:
        """Close the job's open pyramids (before its files are deleted) and drop its tiles."""
        if self._cache is None:
            return
        for layer in ("stain", "gareau", "fcm", "rcm"):
            name = layer_file_name(job, layer)
            if name is None:
                continue
            try:
                self._evict(self.files.published_file(job.id, name))
            except ValueError:  # a record naming something outside the job's folder
                continue

    def prune(self) -> int:
        """Close the pyramids whose files were deleted elsewhere (the sweeper's retention
        purge, another API process's DELETE), so no deleted file stays open here; forget the
        live views of attempts that ended."""
        with self._lock:
            gone = [path for path in self._opened if not path.exists()]
        for path in gone:
            self._evict(path)
        return len(gone) + self.live.prune()

    def _evict(self, path: Path) -> None:
        with self._lock:
            self._opened.discard(path)
            cache = self._cache
        if cache is not None:
            cache.evict(path)

    def _opening(self, path: Path) -> DeepZoomCache:
        cache = self.cache()
        with self._lock:
            self._opened.add(path)
        return cache

    def dzi(self, job: Job, layer: ViewLayer) -> str:
        """The DZI of a job's layer; 410 purged when the file went away after the checks. A
        running job's is its final pyramid's (the size of its inputs)."""
        if is_live(job):
            from service.slide.deepzoom import dzi_xml

            check_live_layer(job, layer)
            return dzi_xml(job.inputs.width_px, job.inputs.height_px)
        self.live.drop(job.id)
        path = self.layer_path(job, layer)
        try:
            return self._opening(path).slide(path).dzi_xml()
        except FileNotFoundError as exc:  # purged between the check and the read
            self._evict(path)
            raise ApiError(410, "purged", "the result was deleted") from exc

    def tile(self, job: Job, layer: ViewLayer, level: int, column: int, row: int) -> ServedTile:
        """One JPEG tile; TileNotFound (404) for a level, column or row outside the pyramid.
        A running job's comes from its live folder; when its attempt ends meanwhile, the job is
        read again and served as it is now (published, 409, or the next attempt's)."""
        if is_live(job):
            try:
                live = self.live.tile(job, layer, level, column, row)
                return ServedTile(live.jpeg, final=live.complete, live=True)
            except LiveGone:
                now = self.reload(job.id) if self.reload is not None else None
                if now is None or (now.state == job.state and now.lease == job.lease):
                    raise ApiError(
                        409, "job_not_finished", "the job's attempt is ending; try again"
                    ) from None
                return self.tile(now, layer, level, column, row)
        self.live.drop(job.id)
        return ServedTile(self.published_tile(job, layer, level, column, row), True, False)

    def published_tile(
        self, job: Job, layer: ViewLayer, level: int, column: int, row: int
    ) -> bytes:
        """One JPEG tile of a finished job's published layer (409/410 as for the result)."""
        path = self.layer_path(job, layer)
        try:
            return self._opening(path).tile(path, level, column, row)
        except FileNotFoundError as exc:
            self._evict(path)
            raise ApiError(410, "purged", "the result was deleted") from exc
