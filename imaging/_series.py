"""The geometry of a DICOM series, and the checks that its frames form one volume.

Implementation of :func:`imaging.volume.series_geometry` (conventions in :mod:`imaging.volume`):
the frames of a series (from :mod:`imaging._frames`, or a lone projection image) sorted along
the slice normal and checked for mixed headers, duplicates, gaps and off-line positions.
:class:`SeriesGeometry` is public through :mod:`imaging.volume`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset

from imaging._frames import Frame, SliceSource, frames_of
from imaging.exceptions import GeometryError, InconsistentSeriesError

if TYPE_CHECKING:
    from imaging.volume import Volume

logger = logging.getLogger(__name__)

UNIFORMITY_TOLERANCE = 1e-3
"""Direction cosines (and pixel spacings in mm) that agree to this are the same."""
DUPLICATE_TOLERANCE_MM = 1e-2
"""Slices closer than this along the normal are duplicates."""
GAP_FACTOR = 1.5
"""A step larger than this times the median slice spacing is a missing slice."""
TILT_TOLERANCE_DEG = 0.01


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """The geometry of a series, from the headers alone (no pixel data needed).

    ``slices`` are in volume order; the other fields are those of
    :class:`~imaging.volume.Volume`.
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
        """``array`` (shape :attr:`shape`, volume order) as a :class:`~imaging.volume.Volume`.

        Raises
        ------
        GeometryError
            If ``array``'s shape is not :attr:`shape`.
        """
        from imaging.volume import Volume  # here: imaging.volume imports this module

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


def plan_series(datasets: Sequence[Dataset]) -> tuple[SeriesGeometry, list[Frame]]:
    """The geometry of a series and its frames in volume order (see ``series_geometry``)."""
    if not datasets:
        raise InconsistentSeriesError("empty series: expected at least one instance", [])
    _require_uniform(
        [(str(ds.get("SOPInstanceUID", f"<dataset {i}>")), ds) for i, ds in enumerate(datasets)],
        _series_uid,
        "SeriesInstanceUID",
        _series_uid,
    )
    frames = [frame for index, ds in enumerate(datasets) for frame in frames_of(ds, index)]
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


def _position(frame: Frame) -> np.ndarray:
    if frame.position is None:
        raise InconsistentSeriesError(
            f"{frame.label} has no ImagePositionPatient", [frame.source.sop_instance_uid]
        )
    return frame.position


def _sort_along_normal(
    frames: list[Frame], normal: np.ndarray, pixel_spacing: tuple[float, float]
) -> tuple[list[Frame], float, np.ndarray]:
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
    ds: Dataset, frame: Frame, shape: tuple[int, int, int], common: dict[str, str]
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


def _orientation_axes(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
