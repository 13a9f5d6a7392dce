"""The storage directory shared by the API and the workers.

    <storage_dir>/uploads/<job id>/{rcm,fcm}<suffix>   inputs, written by the API
    <results_dir>/<job id>/<lease>.tiff|.jpg           outputs, one private name per attempt
    <results_dir>/<job id>/<lease>.<layer>.tiff        extra layers (gareau, fcm, rcm), if asked
    <results_dir>/<job id>/<lease>.dcm/level-<n>.dcm   a DICOM series; its pyramid <lease>.dcm.tiff
    <results_dir>/<job id>/<lease>.live/               while staining: canvases, tile ledger
    <storage_dir>/tmp/upload-<uuid>/                    uploads still being received

Paths are built only from validated job ids and names this module makes, never from client text.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

from service.jobs.job import is_job_id

ALLOWED_SUFFIXES = frozenset({".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg"})
TEMP_UPLOAD_PREFIX = "upload-"


def input_suffix(filename: str | None) -> str:
    """A safe suffix for an upload: the client's, if it is one we know, else .bin."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in ALLOWED_SUFFIXES else ".bin"


class JobFiles:
    def __init__(self, root: Path, results_dir: Path | None = None) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.results = results_dir or root / "results"
        self.tmp = root / "tmp"

    def create(self) -> None:
        """Make the storage folders; an unusable results folder is left for readyz and the job to
        report rather than stopping start-up."""
        for folder in (self.root, self.uploads, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        # An unusable results folder is reported by readyz and by the job that needs it.
        with contextlib.suppress(OSError):
            self.results.mkdir(parents=True, exist_ok=True)

    def _job_dir(self, base: Path, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return base / job_id

    def upload_dir(self, job_id: str) -> Path:
        """The job's upload folder; ValueError for a string that is not a job id (no path
        tricks)."""
        return self._job_dir(self.uploads, job_id)

    def result_dir(self, job_id: str) -> Path:
        """The job's result folder; ValueError for a string that is not a job id."""
        return self._job_dir(self.results, job_id)

    def input_path(self, job_id: str, name: str) -> Path:
        """``name`` is the stored file name (``rcm.tif``), recorded by the API in the job."""
        path = self.upload_dir(job_id) / name
        if path.parent != self.upload_dir(job_id) or name.startswith("."):
            raise ValueError(f"bad input name {name!r}")
        return path

    def result_path(self, job_id: str, name: str) -> Path:
        """A file in the job's result folder; ValueError for a name that leaves the folder or is
        hidden (temporaries start with '.')."""
        path = self.result_dir(job_id) / name
        if path.parent != self.result_dir(job_id) or name.startswith("."):
            raise ValueError(f"bad result name {name!r}")
        return path

    def published_file(self, job_id: str, name: str) -> Path:
        """A file published in the job's result folder, never anything outside it.

        ``name`` comes from the job record (written by the runner); a name with a separator, a
        leading dot, or a symlink that leads elsewhere is refused with ValueError.
        """
        path = self.result_path(job_id, name)
        if path.resolve().parent != self.result_dir(job_id).resolve():
            raise ValueError(f"{name!r} is outside the job's result folder")
        return path

    def live_dir(self, job_id: str, lease: str) -> Path:
        """An attempt's live folder (service.slide.live): its canvases and tile ledger while it
        stains, read by the viewer and written by region workers; removed with the attempt."""
        if not lease.isalnum():
            raise ValueError(f"bad lease {lease!r}")
        return self.result_dir(job_id) / f"{lease}.live"

    def remove_attempt_files(self, job_id: str, lease: str) -> None:
        """Delete what one attempt published under its private name (``<lease>.*``), and the
        job's result folder if that leaves it empty (a cancel may have purged it meanwhile and
        the attempt made it again)."""
        if not lease.isalnum():
            raise ValueError(f"bad lease {lease!r}")
        folder = self.result_dir(job_id)
        for path in folder.glob(f"{lease}.*"):
            if path.is_dir() and not path.is_symlink():  # a DICOM series
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another attempt's or published files
            folder.rmdir()

    def temp_upload_dir(self) -> Path:
        """A private folder for a request still being received (moved in place once accepted)."""
        folder = self.tmp / f"{TEMP_UPLOAD_PREFIX}{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    def remove_stale_uploads(self, untouched_s: float) -> list[Path]:
        """Delete unfinished uploads nothing wrote to for ``untouched_s``: their API process
        died mid-upload. A live upload writes at least every DSCM_UPLOAD_IDLE_TIMEOUT_S (or is
        refused), so ``untouched_s`` above that never takes one still being received."""
        cutoff_s = time.time() - untouched_s
        removed = []
        for folder in self.tmp.glob(f"{TEMP_UPLOAD_PREFIX}*"):
            if folder.is_dir() and last_write_s(folder) < cutoff_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def adopt_upload(self, temp_dir: Path, job_id: str) -> Path:
        """Move a finished upload folder into place as the job's inputs (one rename); returns it."""
        target = self.upload_dir(job_id)
        os.replace(temp_dir, target)
        return target

    def purge(self, job_id: str) -> None:
        """Remove every file of a job; missing files are fine."""
        shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
        shutil.rmtree(self.result_dir(job_id), ignore_errors=True)

    def clear_results(self, job_id: str) -> Path:
        """An empty result folder for a new attempt: a killed attempt may have left temp files."""
        folder = self.result_dir(job_id)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def purge_inputs(self, job_id: str) -> None:
        """Remove the job's uploaded inputs, keeping its results; missing files are fine."""
        shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)

    def check_writable(self) -> str:
        """Raise OSError (naming the folder, not its path) unless both the uploads and the
        results folders accept a new file; returns the free space for uploads."""
        for folder in (self.uploads, self.results):
            probe = folder / f".probe-{uuid.uuid4().hex}"
            try:
                with probe.open("wb") as handle:
                    handle.write(b"ok")
            except OSError as exc:
                raise OSError(exc.errno, f"{folder.name}: {exc.strerror}") from exc
            finally:
                probe.unlink(missing_ok=True)
        free_bytes = shutil.disk_usage(self.tmp).free
        return f"{free_bytes / 2**30:.1f} GiB free for uploads"


def series_files(folder: Path) -> list[Path]:
    """The instances of a published DICOM series, level 0 first (``level-<n>.dcm``)."""
    return sorted(folder.glob("*.dcm"), key=lambda p: (len(p.name), p.name))


def last_write_s(folder: Path) -> float:
    """The newest mtime of a folder and the files in it; +inf once it is gone (not stale)."""
    try:
        return max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
    except FileNotFoundError:  # finished, adopted or removed meanwhile
        return float("inf")
