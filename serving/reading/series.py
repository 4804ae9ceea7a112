"""A study's image series as the viewer shows them: instances in display order.

CT and MR instances are ordered along the slice normal (position · normal ascending, as
:func:`imaging.volume.load_series` stacks them) when every one has a position and an
orientation; else by instance number. Non-image series (SEG, SR, KO, PR, RTSTRUCT, DOC) are
left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.archive import ArchivedResource, ArchiveId
from serving.reading._archive import ReadingArchive

__all__ = ["NON_IMAGE_MODALITIES", "ViewerSeries", "viewer_series"]

NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC"})


@dataclass(frozen=True)
class ViewerSeries:
    """An image series as the viewer shows it; instances in display order."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    series_number: int | None
    instances: list[dict[str, Any]]  # {"sop_instance_uid", "instance_number"}


def viewer_series(archive: ReadingArchive, study: ArchiveId) -> list[ViewerSeries]:
    """The study's image series by series number, their instances in display order.

    Raises
    ------
    NotFoundError
        The archive has no such study.
    """
    series = []
    for item in archive.study_series(study):
        tags = item.attributes
        if str(tags.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
            continue
        series.append(
            ViewerSeries(
                series_instance_uid=str(tags.get("SeriesInstanceUID")),
                modality=tags.get("Modality"),
                series_description=tags.get("SeriesDescription"),
                series_number=_int(tags.get("SeriesNumber")),
                instances=_display_order(archive.series_instances(item.archive_id)),
            )
        )
    return sorted(series, key=lambda s: (s.series_number or 0, s.series_instance_uid))


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _floats(value: Any) -> list[float] | None:
    try:
        return [float(v) for v in str(value).split("\\")]
    except (TypeError, ValueError):
        return None


def _display_order(instances: list[ArchivedResource]) -> list[dict[str, Any]]:
    """Instances along the slice normal when every one has a position and an orientation;
    else by instance number."""
    rows = []
    for item in instances:
        tags = item.attributes
        rows.append(
            (
                str(tags.get("SOPInstanceUID")),
                _int(tags.get("InstanceNumber")),
                _floats(tags.get("ImagePositionPatient")),
                _floats(tags.get("ImageOrientationPatient")),
            )
        )
    oriented = all(p and len(p) == 3 and o and len(o) == 6 for _, _, p, o in rows)
    if oriented and len(rows) > 1:
        orientation = np.asarray(rows[0][3], dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        rows.sort(key=lambda r: (float(np.dot(np.asarray(r[2]), normal)), r[1] or 0, r[0]))
    else:
        rows.sort(key=lambda r: (r[1] if r[1] is not None else 1 << 30, r[0]))
    return [{"sop_instance_uid": uid, "instance_number": number} for uid, number, _, _ in rows]
