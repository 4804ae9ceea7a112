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
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from imaging.exceptions import GeometryError, InconsistentSeriesError, UnsupportedDataError

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

UNIFORMITY_TOLERANCE = 1e-3
"""Direction cosines (and pixel spacings in mm) that agree to this are the same."""
DUPLICATE_TOLERANCE_MM = 1e-2
"""Slices closer than this along the normal are duplicates."""
GAP_FACTOR = 1.5
"""A step larger than this times the median slice spacing is a missing slice."""
TILT_TOLERANCE_DEG = 0.01


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


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume comes from.

    Parameters
    ----------
    dataset_index
        Index of the instance in the sequence given to :func:`series_geometry`.
    sop_instance_uid
        Its SOPInstanceUID.
    frame_number
        1-based frame number within the instance (1 for single-frame instances).
    """

    dataset_index: int
    sop_instance_uid: str
    frame_number: int


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """The geometry of a series, from the headers alone (no pixel data needed).

    ``slices`` are in volume order; the other fields are those of :class:`Volume`.
    """

    slices: tuple[SliceSource, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str
    series_instance_uid: str
    is_2d: bool

    def volume(self, array: np.ndarray) -> Volume:
        """``array`` (shape :attr:`shape`, volume order) as a :class:`Volume`.

        Raises
        ------
        GeometryError
            If ``array``'s shape is not :attr:`shape`.
        """
        if tuple(array.shape) != self.shape:
            raise GeometryError(f"array has shape {array.shape}: expected {self.shape}")
        return Volume(
            array=array,
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            modality=self.modality,
            series_instance_uid=self.series_instance_uid,
            sop_instance_uids=tuple(s.sop_instance_uid for s in self.slices),
            frame_numbers=tuple(s.frame_number for s in self.slices),
            is_2d=self.is_2d,
        )


@dataclass
class _Frame:
    """One frame of one instance with the header values that place it."""

    source: SliceSource
    rows: int
    columns: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rescale: tuple[float, float] | None  # None: the instance's own Modality LUT applies

    @property
    def label(self) -> str:
        uid = self.source.sop_instance_uid
        return uid if self.source.frame_number == 1 else f"{uid} frame {self.source.frame_number}"


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
    return _plan(datasets)[0]


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
    geometry, frames = _plan(datasets)
    array = np.empty(geometry.shape, dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    for k, frame in enumerate(frames):
        index = frame.source.dataset_index
        if index not in decoded:
            decoded[index] = _decode(datasets[index])
        raw = decoded[index][frame.source.frame_number - 1]
        if frame.rescale is None:
            array[k] = apply_modality_lut(raw, datasets[index])
        else:
            slope, intercept = frame.rescale
            array[k] = raw.astype(np.float64) * slope + intercept
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


def _plan(datasets: Sequence[Dataset]) -> tuple[SeriesGeometry, list[_Frame]]:
    if not datasets:
        raise InconsistentSeriesError("empty series: expected at least one instance", [])
    _require_uniform(
        [(str(ds.get("SOPInstanceUID", f"<dataset {i}>")), ds) for i, ds in enumerate(datasets)],
        _series_uid,
        "SeriesInstanceUID",
        _series_uid,
    )
    frames = [frame for index, ds in enumerate(datasets) for frame in _frames_of(ds, index)]
    labelled = [(f.source.sop_instance_uid, f) for f in frames]
    _require_uniform(
        labelled, lambda f: (f.rows, f.columns), "Rows/Columns", lambda f: f"{f.rows}x{f.columns}"
    )
    first = datasets[0]
    common = {
        "modality": str(first.get("Modality", "")),
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
    }
    shape = (len(frames), frames[0].rows, frames[0].columns)
    if len(frames) == 1 and (frames[0].position is None or frames[0].orientation is None):
        return _projection_geometry(first, frames[0], shape, common), frames

    missing = [f for f in frames if f.position is None or f.orientation is None]
    if missing:
        raise InconsistentSeriesError(
            f"ImagePositionPatient/ImageOrientationPatient missing on {len(missing)} of "
            f"{len(frames)} frames: every frame of a multi-slice series needs both",
            [f.source.sop_instance_uid for f in missing],
        )
    _require_uniform(
        labelled,
        lambda f: _rounded(f.orientation),
        "ImageOrientationPatient",
        lambda f: str(f.orientation.round(4).tolist()),
    )
    _require_uniform(
        labelled,
        lambda f: _rounded(f.pixel_spacing),
        "PixelSpacing",
        lambda f: str(f.pixel_spacing),
    )
    row, column, normal = _orientation_axes(frames[0])
    pixel_spacing = frames[0].pixel_spacing
    if pixel_spacing is None:
        logger.warning("series %s has no PixelSpacing: using 1 mm", common["series_instance_uid"])
        pixel_spacing = (1.0, 1.0)
    if len(frames) == 1:
        nominal = first.get("SpacingBetweenSlices") or frames[0].slice_thickness or 1.0
        slice_spacing, slice_axis, ordered = float(nominal), normal, frames
    else:
        ordered, slice_spacing, slice_axis = _sort_along_normal(frames, normal, pixel_spacing)
    origin = _position(ordered[0])
    geometry = SeriesGeometry(
        slices=tuple(f.source for f in ordered),
        shape=shape,
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=np.column_stack([row, column, slice_axis]),
        is_2d=len(frames) == 1,
        **common,
    )
    return geometry, ordered


def _series_uid(ds: Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", ""))


def _position(frame: _Frame) -> np.ndarray:
    if frame.position is None:
        raise InconsistentSeriesError(
            f"{frame.label} has no ImagePositionPatient", [frame.source.sop_instance_uid]
        )
    return frame.position


def _sort_along_normal(
    frames: list[_Frame], normal: np.ndarray, pixel_spacing: tuple[float, float]
) -> tuple[list[_Frame], float, np.ndarray]:
    """Order frames by position · normal; check duplicates, gaps and collinearity."""
    positions = np.array([_position(f) for f in frames], dtype=np.float64)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    ordered = [frames[i] for i in order]
    positions, distance = positions[order], distance[order]
    steps = np.diff(distance)
    for k in np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM):
        pair = ordered[k], ordered[k + 1]
        raise InconsistentSeriesError(
            f"duplicate slice position {positions[k].round(3).tolist()} (along the normal "
            f"{steps[k]:.4f} mm apart, expected at least {DUPLICATE_TOLERANCE_MM} mm)",
            [f.source.sop_instance_uid for f in pair],
            {f.source.sop_instance_uid: str(_position(f).tolist()) for f in pair},
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        pairs = [(ordered[k], ordered[k + 1]) for k in gaps]
        described = ", ".join(f"{steps[k]:.3f} mm after slice {k}" for k in gaps)
        raise InconsistentSeriesError(
            f"missing slices: step {described}, expected at most {GAP_FACTOR} x the median "
            f"spacing {median:.3f} mm",
            [f.source.sop_instance_uid for pair in pairs for f in pair],
            {f.source.sop_instance_uid: str(_position(f).tolist()) for p in pairs for f in p},
        )
    if np.any(np.abs(steps - median) > max(0.01 * median, 0.01)):
        logger.warning(
            "irregular slice spacing %.3f-%.3f mm: using the median %.3f mm",
            steps.min(),
            steps.max(),
            median,
        )
    axis = positions[-1] - positions[0]
    axis /= np.linalg.norm(axis)
    cos_tilt = float(np.clip(axis @ normal, -1.0, 1.0))
    tilt = float(np.degrees(np.arccos(cos_tilt)))
    slice_axis = normal if tilt <= TILT_TOLERANCE_DEG else axis
    expected = positions[0] + np.outer((distance - distance[0]) / (slice_axis @ normal), slice_axis)
    off_line = np.linalg.norm(positions - expected, axis=1)
    tolerance = max(0.1 * min(pixel_spacing), 0.01)
    stray = np.flatnonzero(off_line > tolerance)
    if stray.size:
        raise InconsistentSeriesError(
            f"slice positions are not on one line: up to {off_line.max():.3f} mm off "
            f"(expected within {tolerance:.3f} mm)",
            [ordered[k].source.sop_instance_uid for k in stray],
            {ordered[k].source.sop_instance_uid: f"{off_line[k]:.3f} mm" for k in stray},
        )
    if slice_axis is axis:
        logger.warning(
            "slice positions are %.2f° off the normal (gantry tilt): the volume is sheared",
            tilt,
        )
    return ordered, median / float(slice_axis @ normal), slice_axis


def _projection_geometry(
    ds: Dataset, frame: _Frame, shape: tuple[int, int, int], common: dict[str, str]
) -> SeriesGeometry:
    """A 2D image without patient position (DX, CR, secondary capture) as one slice."""
    spacing = frame.pixel_spacing
    if spacing is None:
        logger.warning(
            "image %s has neither PixelSpacing nor ImagerPixelSpacing: using 1 mm", frame.label
        )
        spacing = (1.0, 1.0)
    return SeriesGeometry(
        slices=(frame.source,),
        shape=shape,
        spacing=(1.0, spacing[0], spacing[1]),
        origin=(0.0, 0.0, 0.0),
        direction=_patient_orientation_axes(ds),
        is_2d=True,
        **common,
    )


_LETTER_AXES = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}


def _patient_orientation_axes(ds: Dataset) -> np.ndarray:
    """Nominal axes of a projection image from PatientOrientation (PS3.3 C.7.6.1.1.1).

    The main (first) letter of each value gives the row and column directions; without a
    usable PatientOrientation the identity is returned.
    """
    value = ds.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        row = _LETTER_AXES.get(str(value[0])[:1])
        column = _LETTER_AXES.get(str(value[1])[:1])
        if row is not None and column is not None and np.dot(row, column) == 0:
            return np.column_stack([row, column, np.cross(row, column)])
    return np.eye(3)


def _orientation_axes(frame: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = frame.orientation
    if orientation is None:
        raise InconsistentSeriesError(
            f"{frame.label} has no ImageOrientationPatient", [frame.source.sop_instance_uid]
        )
    row, column = orientation[:3], orientation[3:]
    if min(np.linalg.norm(row), np.linalg.norm(column)) < 0.5:
        raise GeometryError(
            f"ImageOrientationPatient {orientation.tolist()} of {frame.label}: expected two "
            "unit vectors"
        )
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    if abs(row @ column) > 1e-2:
        raise GeometryError(
            f"ImageOrientationPatient {orientation.tolist()} of {frame.label}: row and "
            f"column directions are not orthogonal (dot product {row @ column:.4f})"
        )
    return row, column, np.cross(row, column)


def _rounded(value: np.ndarray | tuple[float, ...] | None) -> tuple[float, ...] | None:
    """A hashable value, equal for values that agree to ``UNIFORMITY_TOLERANCE``."""
    if value is None:
        return None
    return tuple(float(round(float(v) / UNIFORMITY_TOLERANCE)) for v in value)


def _require_uniform(
    items: Sequence[tuple[str, Any]],
    key: Callable[[Any], Hashable],
    what: str,
    shown: Callable[[Any], str] = str,
) -> None:
    """Raise naming the instances whose ``key`` differs from the most common one.

    ``items`` are (SOPInstanceUID, item) pairs; ``shown`` renders an item's value.
    """
    keys = [key(item) for _, item in items]
    expected, _ = Counter(keys).most_common(1)[0]
    offenders = {
        uid: shown(item) for (uid, item), k in zip(items, keys, strict=True) if k != expected
    }
    if offenders:
        example = next(
            shown(item) for (_, item), k in zip(items, keys, strict=True) if k == expected
        )
        odd = sum(k != expected for k in keys)
        raise InconsistentSeriesError(
            f"mixed {what}: {odd} of {len(items)} frames differ from the {len(items) - odd} "
            f"with {example}",
            list(offenders),
            offenders,
        )


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _frames_of(ds: Dataset, index: int) -> list[_Frame]:
    """The frames of one instance with the header values that place them."""
    uid = str(ds.get("SOPInstanceUID", f"<dataset {index}>"))
    if "Rows" not in ds or "Columns" not in ds:
        raise UnsupportedDataError(f"instance {uid} has no Rows/Columns: expected an image")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise UnsupportedDataError(
            f"instance {uid} has SamplesPerPixel {samples} "
            f"({ds.get('PhotometricInterpretation')}): expected 1 (grayscale)"
        )
    frame_count = int(ds.get("NumberOfFrames", 1) or 1)
    top_rescale = _rescale(ds)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if len(per_frame) != frame_count:
            raise UnsupportedDataError(
                f"instance {uid} has {len(per_frame)} PerFrameFunctionalGroupsSequence items: "
                f"expected NumberOfFrames = {frame_count}"
            )
        frames = []
        for number, item in enumerate(per_frame, start=1):
            groups = (item, shared[0])
            position = _group(groups, "PlanePositionSequence") or Dataset()
            orientation = _group(groups, "PlaneOrientationSequence") or Dataset()
            transform = _group(groups, "PixelValueTransformationSequence")
            rescale = _rescale(transform) if transform is not None else None
            frames.append(
                _make_frame(
                    ds,
                    SliceSource(index, uid, number),
                    position.get("ImagePositionPatient"),
                    orientation.get("ImageOrientationPatient"),
                    _group(groups, "PixelMeasuresSequence"),
                    rescale or top_rescale or (1.0, 0.0),
                )
            )
        return frames
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if frame_count > 1 and "GridFrameOffsetVector" in ds and position is not None:
        # PS3.3 C.8.8.3.2: offsets along the normal, relative (first value 0) or absolute
        # z; either way frame 1 lies at ImagePositionPatient.
        iop = np.array(orientation if orientation is not None else [1, 0, 0, 0, 1, 0], float)
        normal = np.cross(iop[:3], iop[3:])
        offsets = np.array(ds.GridFrameOffsetVector, dtype=np.float64)
        if offsets.size != frame_count:
            raise UnsupportedDataError(
                f"instance {uid} has {offsets.size} GridFrameOffsetVector values: expected "
                f"NumberOfFrames = {frame_count}"
            )
        scaling = ds.get("DoseGridScaling")
        rescale = (float(scaling), 0.0) if scaling is not None else top_rescale or (1.0, 0.0)
        start = np.array(position, dtype=np.float64)
        return [
            _make_frame(
                ds,
                SliceSource(index, uid, n + 1),
                start + (offset - offsets[0]) * normal,
                iop,
                None,
                rescale,
            )
            for n, offset in enumerate(offsets)
        ]
    if frame_count > 1:
        raise UnsupportedDataError(
            f"multi-frame instance {uid} ({frame_count} frames) has neither "
            "PerFrameFunctionalGroupsSequence nor GridFrameOffsetVector: frame positions unknown"
        )
    return [_make_frame(ds, SliceSource(index, uid, 1), position, orientation, None, None)]


def _make_frame(  # noqa: PLR0917  (private: the frame's fields, in order)
    ds: Dataset,
    source: SliceSource,
    position: Any,
    orientation: Any,
    measures: Dataset | None,
    rescale: tuple[float, float] | None,
) -> _Frame:
    """A frame; pixel spacing and thickness from ``measures`` (C.7.6.16.2.1) or ``ds``."""
    spacing = None
    thickness = None
    for source_ds in (measures, ds):
        if source_ds is not None:
            spacing = spacing or _floats(source_ds.get("PixelSpacing"))
            thickness = thickness or source_ds.get("SliceThickness")
    spacing = spacing or _floats(ds.get("ImagerPixelSpacing"))
    return _Frame(
        source=source,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        position=None if position is None else np.array(position, dtype=np.float64),
        orientation=None if orientation is None else np.array(orientation, dtype=np.float64),
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness=None if thickness is None else float(thickness),
        rescale=rescale,
    )


def _group(groups: Sequence[Dataset], keyword: str) -> Dataset | None:
    """The first item of a functional group macro, per-frame before shared (C.7.6.16)."""
    for group in groups:
        sequence = group.get(keyword)
        if sequence:
            item: Dataset = sequence[0]
            return item
    return None


def _rescale(ds: Dataset) -> tuple[float, float] | None:
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    return None


def _decode(ds: Dataset) -> np.ndarray:
    """All frames of an instance as a (frames, rows, columns) array of stored values."""
    uid = ds.get("SOPInstanceUID", "<unknown>")
    if "PixelData" not in ds:
        raise UnsupportedDataError(
            f"instance {uid} has no PixelData: expected it read without stop_before_pixels"
        )
    file_meta = getattr(ds, "file_meta", None)
    value = None if file_meta is None else file_meta.get("TransferSyntaxUID")
    if value is None:
        logger.warning("instance %s has no TransferSyntaxUID: assuming Explicit VR LE", uid)
        value = ExplicitVRLittleEndian
    syntax = UID(value)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedDataError(
            f'transfer syntax "{syntax}" ({syntax.name}) of instance {uid} has no pixel '
            "data decoder in pydicom",
            transfer_syntax_uid=syntax,
        ) from exc
    missing = list(decoder.missing_dependencies)
    if not decoder.is_available:
        raise UnsupportedDataError(
            f'cannot decode transfer syntax "{syntax}" ({syntax.name}) of instance {uid}: '
            f"no decoder plugin installed ({'; '.join(missing)})",
            transfer_syntax_uid=syntax,
            missing_plugins=missing,
        )
    try:
        array, _ = decoder.as_array(ds)
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise UnsupportedDataError(
            f'could not decode pixel data of instance {uid} ("{syntax}", {syntax.name}): {exc}',
            transfer_syntax_uid=syntax,
            missing_plugins=missing,
        ) from exc
    return array if array.ndim == 3 else array[np.newaxis]
