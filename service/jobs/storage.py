"""The storage directory shared by the API and the workers.

    <storage_dir>/uploads/<job id>/{rcm,fcm}<suffix>   inputs, written by the API
    <results_dir>/<job id>/<lease>.tiff|.jpg           outputs, one private name per attempt
    <results_dir>/<job id>/<lease>.<layer>.tiff        extra layers (gareau, fcm, rcm), if asked

Paths are built only from validated job ids and names this module makes, never from client text.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from service.jobs.model import is_job_id

ALLOWED_SUFFIXES = frozenset({".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg"})
RESULT_SUFFIX = {"tiff": ".tiff", "ome-tiff": ".ome.tiff"}


def input_suffix(filename: str | None) -> str:
    """A safe suffix for an upload: the client's, if it is one we know, else .bin."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in ALLOWED_SUFFIXES else ".bin"


class Storage:
    def __init__(self, root: Path, results_dir: Path | None = None) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.results = results_dir or root / "results"
        self.tmp = root / "tmp"

    def create(self) -> None:
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
        return self._job_dir(self.uploads, job_id)

    def result_dir(self, job_id: str) -> Path:
        return self._job_dir(self.results, job_id)

    def input_path(self, job_id: str, name: str) -> Path:
        """``name`` is the stored file name (``rcm.tif``), recorded by the API in the job."""
        path = self.upload_dir(job_id) / name
        if path.parent != self.upload_dir(job_id) or name.startswith("."):
            raise ValueError(f"bad input name {name!r}")
        return path

    def result_path(self, job_id: str, name: str) -> Path:
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

    def remove_attempt_files(self, job_id: str, lease: str) -> None:
        """Delete what one attempt published under its private name (``<lease>.*``)."""
        if not lease.isalnum():
            raise ValueError(f"bad lease {lease!r}")
        for path in self.result_dir(job_id).glob(f"{lease}.*"):
            path.unlink(missing_ok=True)

    def temp_upload_dir(self) -> Path:
        """A private folder for a request still being received (moved in place once accepted)."""
        folder = self.tmp / f"upload-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    def adopt_upload(self, temp_dir: Path, job_id: str) -> Path:
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
        shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)

    def check_writable(self) -> None:
        """Raise OSError unless both the uploads and the results folders accept a new file."""
        for folder in (self.uploads, self.results):
            probe = folder / f".probe-{uuid.uuid4().hex}"
            with probe.open("wb") as handle:
                handle.write(b"ok")
            probe.unlink()
