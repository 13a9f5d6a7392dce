"""A small real DICOM series written with pydicom (stand-in for a dscm DICOM result in the
delivery tests): one study, one series, ``count`` instances with random pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Series:
    folder: Path
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


def write_series(folder: Path, count: int = 3, side_px: int = 64, seed: int = 0) -> Series:
    """``count`` RGB instances of ``side_px`` squared pixels (3 x side_px^2 bytes each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid = generate_uid(), generate_uid()
    sops = []
    for number in range(1, count + 1):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{number:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName = "TEST-0001", "Test^Delivery"
        ds.Modality, ds.InstanceNumber, ds.SeriesNumber = "OT", number, 1
        ds.Rows = ds.Columns = side_px
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        pixels = rng.integers(0, 256, (side_px, side_px, 3), dtype=np.uint8)
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        sops.append(sop_uid)
    return Series(folder, study_uid, series_uid, tuple(sops))
