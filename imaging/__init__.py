"""Imaging core: DICOM/NIfTI I/O, volumes, pixel transforms, SEG/SR writing, synthetic studies.

* :mod:`imaging.volume` - DICOM series → :class:`Volume` (sorted along the slice normal,
  geometry from the headers, rescaled to modality units, inconsistent series refused);
* :mod:`imaging.transforms` - windowing presets and the DICOM linear window, resampling;
* :mod:`imaging.nifti` - NIfTI export/import with an exact LPS ↔ RAS affine;
* :mod:`imaging.seg` / :mod:`imaging.sr` - AI results as DICOM SEG and TID 1500 SR;
* :mod:`imaging.deid` - de-identification (PS3.15 Basic Profile): :class:`Deidentifier` for
  research on any Dataset or DICOM JSON (every UID keyed, per-patient date shift, burned-in
  annotation withheld), and Orthanc's own with keyed UIDs for the training export;
* :mod:`imaging.exceptions` - the package's exception tree;
* ``imaging.synthetic`` - synthetic (SYNTHETIC-labelled) studies; import it directly.
"""

from imaging.deid import Deidentifier, OrthancDeidentifier, Pseudonymizer, local_patient_key
from imaging.exceptions import (
    BurnedInAnnotationError,
    ConformanceError,
    DeidentificationError,
    GeometryError,
    ImagingError,
    InconsistentSeriesError,
    OrthancUnavailableError,
    UnsupportedDataError,
)
from imaging.nifti import load_nifti, save_nifti
from imaging.seg import (
    AI_RESULT_NOTICE,
    HEMORRHAGE,
    AlgorithmIdentity,
    SegmentSpec,
    read_segmentation,
    write_segmentation,
)
from imaging.sr import Finding, read_findings, score_statement, write_measurement_report
from imaging.transforms import WINDOW_PRESETS, WindowPreset, apply_window, resample
from imaging.volume import (
    SeriesGeometry,
    SliceSource,
    Volume,
    load_series,
    load_series_files,
    series_geometry,
    split_by_series,
)

__all__ = [
    "AI_RESULT_NOTICE",
    "HEMORRHAGE",
    "WINDOW_PRESETS",
    "AlgorithmIdentity",
    "BurnedInAnnotationError",
    "ConformanceError",
    "DeidentificationError",
    "Deidentifier",
    "Finding",
    "GeometryError",
    "ImagingError",
    "InconsistentSeriesError",
    "OrthancDeidentifier",
    "OrthancUnavailableError",
    "Pseudonymizer",
    "SegmentSpec",
    "SeriesGeometry",
    "SliceSource",
    "UnsupportedDataError",
    "Volume",
    "WindowPreset",
    "apply_window",
    "load_nifti",
    "load_series",
    "load_series_files",
    "local_patient_key",
    "read_findings",
    "read_segmentation",
    "resample",
    "save_nifti",
    "score_statement",
    "series_geometry",
    "split_by_series",
    "write_measurement_report",
    "write_segmentation",
]
