"""Test DICOM data made here or taken by name from pydicom's bundled test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def pydicom_file(name: str) -> bytes:
    """A pydicom test file's bytes."""
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def synthetic_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    *,
    instance: int = 1,
    patient_id: str = "SYNTH-001",
    drop: tuple[str, ...] = (),
    preamble: bytes = bytes(128),
) -> bytes:
    """A small synthetic CT slice (labelled SYNTHETIC) as Part 10 bytes."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.Modality = "CT"
    ds.StudyDescription = "SYNTHETIC test study"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0, 0, float(instance)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.arange(256, dtype=np.int16) * instance).tobytes()
    for keyword in drop:
        delattr(ds, keyword)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = preamble
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=not drop)
    return buffer.getvalue()
