"""The frames of DICOM instances with the header values that place them.

Single-frame images, enhanced multi-frame images (PS3.3 C.7.6.16, per-frame functional
groups), RT Dose-like multi-frames with GridFrameOffsetVector (PS3.3 C.8.8.3.2). Used by
:mod:`imaging._series`; :class:`SliceSource` is public through :mod:`imaging.volume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset

from imaging._pixels import rescale_of
from imaging.exceptions import UnsupportedDataError


@dataclass(frozen=True)
class SliceSource:
    """Where one slice of a volume comes from.

    Parameters
    ----------
    dataset_index
        Index of the instance in the sequence given to
        :func:`~imaging.volume.series_geometry`.
    sop_instance_uid
        Its SOPInstanceUID.
    frame_number
        1-based frame number within the instance (1 for single-frame instances).
    """

    dataset_index: int
    sop_instance_uid: str
    frame_number: int


@dataclass
class Frame:
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


def _floats(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def frames_of(ds: Dataset, index: int) -> list[Frame]:
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
    top_rescale = rescale_of(ds)
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
            rescale = rescale_of(transform) if transform is not None else None
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
) -> Frame:
    """A frame; pixel spacing and thickness from ``measures`` (C.7.6.16.2.1) or ``ds``."""
    spacing = None
    thickness = None
    for source_ds in (measures, ds):
        if source_ds is not None:
            spacing = spacing or _floats(source_ds.get("PixelSpacing"))
            thickness = thickness or source_ds.get("SliceThickness")
    spacing = spacing or _floats(ds.get("ImagerPixelSpacing"))
    return Frame(
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
