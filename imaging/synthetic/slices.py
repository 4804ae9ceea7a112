"""Single synthetic CT slices as Part 10 bytes, for ingest tests and benchmarks.

Unlike :func:`imaging.synthetic.generate_study` these are tiny noise images without anatomy
or ground truth; ``omit`` makes deliberately non-conformant instances.
"""

from __future__ import annotations

import io

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaging.synthetic.dicom import SYNTHETIC_LABEL

__all__ = ["ct_slice"]


def ct_slice(
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    *,
    instance_number: int = 1,
    size: int = 16,
    patient_id: str = "SYNTH-001",
    seed: int | None = None,
    omit: tuple[str, ...] = (),
    preamble: bytes = bytes(128),
) -> bytes:
    """One synthetic CT slice as DICOM Part 10 bytes.

    Parameters
    ----------
    study_instance_uid, series_instance_uid
        Fresh UIDs when ``None``.
    instance_number
        InstanceNumber; the slice sits at z = ``instance_number`` mm.
    size
        Rows and columns.
    patient_id
        PatientID (the name is always ``SYNTHETIC^PHANTOM``).
    seed
        Noise seed (deterministic pixels); defaults to ``instance_number``.
    omit
        Keywords to leave out, to make deliberately non-conformant data for tests.
    preamble
        The 128-byte preamble to write.

    Returns
    -------
    bytes
        The file (not conformant when ``omit`` is given).
    """
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.Modality = "CT"
    ds.StudyDescription = f"{SYNTHETIC_LABEL} test study"
    ds.SeriesDescription = f"{SYNTHETIC_LABEL} axial"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    rng = np.random.default_rng(instance_number if seed is None else seed)
    pixels = rng.normal(1064, 20, size=(size, size)).astype(np.int16)
    ds.PixelData = pixels.tobytes()
    for keyword in omit:
        delattr(ds, keyword)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = preamble
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=not omit)
    return buffer.getvalue()
