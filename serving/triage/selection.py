"""Which series of a study a model takes: its card's ``series_selection`` against each series.

A series qualifies when its modality, body part (or a description naming it), dimensionality,
slice count, orientation, slice thickness and view position match; among several, the one with
most images wins. The reasons the others were passed over go into the failed result when none
qualifies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from models.card import SeriesSelection

__all__ = ["SeriesData", "select_series"]


@dataclass
class SeriesData:
    """One series of the study, downloaded from the image archive."""

    uid: str
    modality: str
    datasets: list[Dataset]

    @property
    def first(self) -> Dataset:
        """The series' first instance (its series-level attributes)."""
        return self.datasets[0]


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _orientation(ds: Dataset) -> str:
    values = ds.get("ImageOrientationPatient")
    if not values or len(values) != 6:
        return "unknown"
    normal = np.cross(np.asarray(values[:3], float), np.asarray(values[3:], float))
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]


def _rejection(selection: SeriesSelection, series: SeriesData) -> str | None:  # noqa: PLR0911
    """Why ``selection`` does not take ``series`` (None: it does)."""
    first = series.first
    modality = _text(first, "Modality")
    if modality not in selection.modalities:
        return f"modality {modality or '?'} not in {selection.modalities}"
    body = _text(first, "BodyPartExamined")
    described = f"{_text(first, 'StudyDescription')} {_text(first, 'SeriesDescription')}"
    if body not in selection.body_parts and not any(p in described for p in selection.body_parts):
        return f"body part {body or '?'} not in {selection.body_parts}"
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in series.datasets)
    if selection.dimensionality == "3d":
        if frames < selection.min_slices:
            return f"{frames} slices: at least {selection.min_slices} needed"
        orientation = _orientation(first)
        if selection.orientation not in {"any", orientation}:
            return f"{orientation} slices: {selection.orientation} needed"
        thickness = first.get("SliceThickness")
        limit = selection.max_slice_thickness_mm
        if limit is not None and thickness is not None and float(thickness) > limit:
            return f"slice thickness {float(thickness):g} mm > {limit:g} mm"
    elif frames != 1:
        return f"{frames} images: a single radiograph needed"
    view = _text(first, "ViewPosition")
    if selection.view_positions and view and view not in selection.view_positions:
        return f"view {view} not in {selection.view_positions}"
    return None


def select_series(
    selection: SeriesSelection, series: Iterable[SeriesData]
) -> tuple[SeriesData | None, list[str]]:
    """The series a model takes (the one with most images when several qualify), and why each
    other series was passed over."""
    chosen: SeriesData | None = None
    reasons: list[str] = []
    for candidate in series:
        why = _rejection(selection, candidate)
        if why is not None:
            reasons.append(f"{candidate.uid}: {why}")
        elif chosen is None or len(candidate.datasets) > len(chosen.datasets):
            chosen = candidate
    return chosen, reasons
