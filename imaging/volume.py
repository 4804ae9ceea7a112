"""DICOM series → volume, with the geometry taken from the headers.

Index convention (the one highdicom's ``Volume`` uses): ``Volume.array`` is indexed
``[k, j, i]`` = (slice, row, column) = (z, y, x), and ``Volume.affine_lps()`` maps the
homogeneous index ``(k, j, i, 1)`` - in that order, the array's own axis order - to patient
coordinates in millimetres, DICOM LPS (PS3.3 C.7.6.2.1.1)::

    position = origin + k * spacing[0] * direction[:, 2]
                      + j * spacing[1] * direction[:, 1]
                      + i * spacing[2] * direction[:, 0]

``direction``'s columns are the row direction (increasing column index ``i``, the first
three values of ImageOrientationPatient), the column direction (increasing row index ``j``)
and the slice direction. ``spacing`` is (slice spacing, PixelSpacing[0] = spacing between
rows, PixelSpacing[1] = spacing between columns).

Slices are ordered by ImagePositionPatient projected on the slice normal (row x column
direction), never by InstanceNumber; the slice spacing comes from the sorted positions,
never from SliceThickness. Series whose slices do not form one regular grid raise
:class:`~imaging.exceptions.InconsistentSeriesError`. A gantry-tilted series (positions
on a line that is not the normal) is kept exact: the third direction column then follows
the slice positions and the affine is sheared (a warning is logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from imaging._frames import SliceSource
from imaging._pixels import decode, modality_values
from imaging._series import (  # noqa: F401  (the tolerances stay importable from here)
    DUPLICATE_TOLERANCE_MM,
    GAP_FACTOR,
    TILT_TOLERANCE_DEG,
    UNIFORMITY_TOLERANCE,
    SeriesGeometry,
    plan_series,
)
from imaging.exceptions import GeometryError, UnsupportedDataError

__all__ = [
    "LPS_TO_RAS",
    "SeriesGeometry",
    "SliceSource",
    "Volume",
    "load_series",
    "load_series_files",
    "series_geometry",
    "split_by_series",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Homogeneous matrix turning DICOM LPS coordinates into NIfTI RAS (and back)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image with its patient geometry (see the module docstring for conventions).

    Parameters
    ----------
    array
        Voxels indexed ``[k, j, i]`` (z, y, x); float32 modality values (e.g. HU) for
        images, an integer dtype for label maps.
    spacing
        (slice, row, column) spacing in mm, all positive.
    origin
        LPS position in mm of the centre of voxel ``[0, 0, 0]``.
    direction
        3x3; columns are the unit row direction, column direction and slice direction (LPS).
    modality
        DICOM Modality of the source ("" when unknown).
    series_instance_uid
        SeriesInstanceUID of the source ("" when unknown).
    sop_instance_uids
        SOPInstanceUID of the instance each slice came from, in array order (empty when the
        slices have no DICOM source, e.g. after resampling).
    frame_numbers
        1-based frame number within that instance per slice (1 for single-frame instances).
    is_2d
        The volume is a single image plane (a projection radiograph or one slice): its
        through-plane spacing is nominal.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str = ""
    series_instance_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    frame_numbers: tuple[int, ...] = ()
    is_2d: bool = False

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(f"array has shape {self.array.shape}: expected 3 axes (z, y, x)")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise GeometryError(f"direction has shape {direction.shape}: expected (3, 3)")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise GeometryError(f"spacing {self.spacing}: expected three positive values (mm)")
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3:
            raise GeometryError(f"origin {self.origin}: expected three values (mm)")
        slices = self.array.shape[0]
        for name in ("sop_instance_uids", "frame_numbers"):
            count = len(getattr(self, name))
            if count not in (0, slices):
                raise GeometryError(f"{name} has {count} entries: expected one per slice")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "sop_instance_uids", tuple(self.sop_instance_uids))
        object.__setattr__(self, "frame_numbers", tuple(int(n) for n in self.frame_numbers))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping ``(k, j, i, 1)`` to LPS millimetres (PS3.3 C.7.6.2.1.1)."""
        affine = np.eye(4)
        affine[:3, 0] = self.direction[:, 2] * self.spacing[0]
        affine[:3, 1] = self.direction[:, 1] * self.spacing[1]
        affine[:3, 2] = self.direction[:, 0] * self.spacing[2]
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """4x4 matrix mapping ``(k, j, i, 1)`` to RAS millimetres (NIfTI's world)."""
        affine: np.ndarray = LPS_TO_RAS @ self.affine_lps()
        return affine

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry and provenance around another array of the same shape.

        Raises
        ------
        GeometryError
            If ``array``'s shape differs from this volume's.
        """
        if tuple(array.shape) != self.shape:
            raise GeometryError(f"array has shape {array.shape}: expected {self.shape}")
        return replace(self, array=array)

    @classmethod
    def from_affine_lps(cls, array: np.ndarray, affine: np.ndarray, **metadata: Any) -> Volume:
        """A volume whose geometry is ``affine`` (``(k, j, i, 1)`` → LPS mm).

        Parameters
        ----------
        array
            Voxels ``[k, j, i]``.
        affine
            4x4 affine in this module's convention.
        **metadata
            The other fields of :class:`Volume` (modality, series_instance_uid, ...).

        Raises
        ------
        GeometryError
            If an axis of the affine has zero length.
        """
        affine = np.asarray(affine, dtype=np.float64)
        columns = affine[:3, :3]
        lengths = np.linalg.norm(columns, axis=0)
        if np.any(lengths <= 0):
            raise GeometryError(f"affine {affine.tolist()} has a zero-length axis")
        unit = columns / lengths
        direction = np.column_stack([unit[:, 2], unit[:, 1], unit[:, 0]])
        spacing = (float(lengths[0]), float(lengths[1]), float(lengths[2]))
        origin = (float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3]))
        return cls(array=array, spacing=spacing, origin=origin, direction=direction, **metadata)


def split_by_series(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    """Group instances by SeriesInstanceUID, in the order the series first appear.

    Instances without a SeriesInstanceUID are grouped under ``""`` (and a warning is
    logged).
    """
    series: dict[str, list[Dataset]] = {}
    for ds in datasets:
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            logger.warning("instance %s has no SeriesInstanceUID", ds.get("SOPInstanceUID"))
        series.setdefault(uid, []).append(ds)
    return series


def series_geometry(datasets: Sequence[Dataset]) -> SeriesGeometry:
    """Sort a series' frames along the slice normal and check that they form a volume.

    Works on headers only (datasets read with ``stop_before_pixels=True`` are enough).

    Parameters
    ----------
    datasets
        The instances of one series, in any order: single-frame images, enhanced
        multi-frame images (PS3.3 C.7.6.16, positions in the PerFrameFunctionalGroupsSequence
        PlanePositionSequence), RT Dose-like multi-frames with GridFrameOffsetVector
        (PS3.3 C.8.8.3.2), or one 2D image without ImagePositionPatient (DX, CR).

    Returns
    -------
    SeriesGeometry

    Raises
    ------
    InconsistentSeriesError
        Mixed SeriesInstanceUID, Rows/Columns, orientation or pixel spacing; missing
        positions; duplicate positions; a gap larger than ``GAP_FACTOR`` x the median
        spacing; positions that are not on one line.
    UnsupportedDataError
        Colour images, or multi-frame instances without per-frame positions.
    """
    return plan_series(datasets)[0]


def load_series(datasets: Sequence[Dataset]) -> Volume:
    """Build the volume of one series: sorted, checked and rescaled to modality units.

    Pixel data in any transfer syntax pydicom can decode with the installed plugins
    (pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls) is accepted. Values go through the
    Modality LUT (RescaleSlope/RescaleIntercept or ModalityLUTSequence, PS3.3 C.11.1;
    for enhanced images the PixelValueTransformationSequence of each frame,
    C.7.6.16.2.9), so CT comes out in HU. MONOCHROME1 values are modality values too:
    they are not inverted (that is a display step).

    Parameters
    ----------
    datasets
        The instances of one series (see :func:`series_geometry`), with pixel data.

    Returns
    -------
    Volume
        float32 array in volume order.

    Raises
    ------
    InconsistentSeriesError
        See :func:`series_geometry`.
    UnsupportedDataError
        Pixel data that cannot be decoded: names the transfer syntax and missing plugins.
    """
    geometry, frames = plan_series(datasets)
    array = np.empty(geometry.shape, dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    for k, frame in enumerate(frames):
        index = frame.source.dataset_index
        if index not in decoded:
            decoded[index] = decode(datasets[index])
        raw = decoded[index][frame.source.frame_number - 1]
        array[k] = modality_values(raw, datasets[index], frame.rescale)
    return geometry.volume(array)


def load_series_files(paths: Sequence[Path | str]) -> Volume:
    """Read DICOM files and build their volume with :func:`load_series`.

    Raises
    ------
    UnsupportedDataError
        A file that is not DICOM or cannot be read (names the path), or see
        :func:`load_series`.
    InconsistentSeriesError
        See :func:`series_geometry` (files of several series raise it too).
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError) as exc:
            raise UnsupportedDataError(f"cannot read {path} as DICOM: {exc}") from exc
    return load_series(datasets)
