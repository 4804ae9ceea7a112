"""Small DICOM series built in memory for the imaging tests (SYNTHETIC, not patient data).

Voxel values are a known function of the voxel index, so a test can check that a loaded
volume holds the right value at the right place: stored value ``1000 + 40 * k + 3 * j + i``
where ``k`` is the slice's index along the normal (not its InstanceNumber).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0


def rotation(alpha_deg: float = 20.0, beta_deg: float = 15.0) -> np.ndarray:
    """An oblique rotation; its columns are the row, column and normal directions."""
    a, b = np.radians(alpha_deg), np.radians(beta_deg)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    axes: np.ndarray = about_x @ about_z
    return axes


def stored_values(slices: int, rows: int, columns: int) -> np.ndarray:
    """The stored pixel values of the whole series, in slice (normal) order."""
    k, j, i = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    return (1000 + 40 * k + 3 * j + i).astype(np.int16)


def _patient_study(ds: Dataset, study_instance_uid: str) -> None:
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "SYNTH-IMG-001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "SYNTH0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC imaging test study"
    ds.Manufacturer = "SYNTHETIC"


def _pixel_module(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype(np.int16).tobytes()


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def ct_series(
    slices: int = 12,
    rows: int = 32,
    columns: int = 24,
    *,
    slice_spacing: float = 2.5,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    origin: Sequence[float] = (-40.0, -60.5, 33.25),
    axes: np.ndarray | None = None,
    shuffle: bool = True,
    seed: int = 7,
) -> list[Dataset]:
    """Single-frame CT slices of one oblique series, file order and InstanceNumber shuffled.

    InstanceNumber deliberately disagrees with the slice positions (it runs backwards).
    """
    axes = rotation() if axes is None else axes
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    values = stored_values(slices, rows, columns)
    datasets = []
    for k in range(slices):
        ds = Dataset()
        _patient_study(ds, study)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 3
        ds.SeriesDescription = "SYNTHETIC oblique CT"
        ds.Modality = "CT"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = slices - k
        ds.ImagePositionPatient = [
            round(float(v), 6) for v in np.asarray(origin) + k * slice_spacing * axes[:, 2]
        ]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*axes[:, 0], *axes[:, 1])]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 5.0  # deliberately not the spacing
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = RESCALE_SLOPE
        ds.RescaleType = "HU"
        _pixel_module(ds, values[k])
        _file_meta(ds)
        datasets.append(ds)
    if shuffle:
        random.Random(seed).shuffle(datasets)
    return datasets


def enhanced_ct(
    frames: int = 6,
    rows: int = 16,
    columns: int = 20,
    *,
    slice_spacing: float = 3.0,
    pixel_spacing: tuple[float, float] = (0.9, 0.6),
    slope: float = 2.0,
    intercept: float = -1000.0,
    seed: int = 3,
) -> Dataset:
    """One Enhanced CT image whose frames are stored out of spatial order.

    Positions, orientation, pixel measures and rescale live in the functional groups
    (PS3.3 C.7.6.16); the frame at spatial index ``k`` holds ``stored_values(...)[k]``.
    """
    axes = rotation(10.0, -5.0)
    order = list(range(frames))
    random.Random(seed).shuffle(order)
    values = stored_values(frames, rows, columns)
    ds = Dataset()
    _patient_study(ds, generate_uid())
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 4
    ds.Modality = "CT"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.AcquisitionDateTime = "20240101120000"
    ds.NumberOfFrames = frames
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [round(float(v), 6) for v in (*axes[:, 0], *axes[:, 1])]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = slice_spacing
    shared.PixelMeasuresSequence = DicomSequence([measures])
    transform = Dataset()
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [
            round(float(v), 6)
            for v in np.array([10.0, -20.0, 5.0]) + k * slice_spacing * axes[:, 2]
        ]
        item.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        content.DimensionIndexValues = [k + 1]
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    dimension = Dataset()
    dimension.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
    dimension.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
    ds.DimensionIndexSequence = DicomSequence([dimension])
    _pixel_module(ds, values[order])
    _file_meta(ds)
    return ds


def chest_radiograph(rows: int = 40, columns: int = 30) -> Dataset:
    """A 2D DX image without ImagePositionPatient, with ImagerPixelSpacing only."""
    ds = Dataset()
    _patient_study(ds, generate_uid())
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.Modality = "DX"
    ds.InstanceNumber = 1
    ds.ImagerPixelSpacing = [0.143, 0.139]
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    _pixel_module(ds, stored_values(1, rows, columns)[0])
    _file_meta(ds)
    return ds


def assert_dcmtk_accepts(path: Path, tool: str = "dcmdump") -> str:
    """Run a dcmtk dumper on ``path``: it must exit 0 with nothing on stderr (no warnings).

    Returns the dump, for further checks.
    """
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run `make install` (apt-get install dcmtk)")
    result = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout
