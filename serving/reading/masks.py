"""AI segmentations for the viewer's overlay: a SEG's frames per source image, bit-packed."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset

from core.archive import ArchiveId
from core.db import Database
from core.db.models import InferenceResult
from core.exceptions import NotFoundError
from serving.reading._archive import ReadingArchive
from serving.reading.series import viewer_series
from serving.studies import study_by_uid

__all__ = ["FindingMask", "finding_mask", "frames_by_source"]


@dataclass(frozen=True)
class FindingMask:
    """A finding's segmentation: per source instance, the frame's bits (numpy packbits,
    row-major, big bit order) in base64."""

    series_instance_uid: str
    rows: int
    columns: int
    frames: list[dict[str, Any]]  # {"index", "sop_instance_uid", "bits"}


def finding_mask(
    db: Database, archive: ReadingArchive, study_instance_uid: str, result_id: int
) -> FindingMask:
    """The SEG of ``result_id`` (a result of this study) as bit-packed frames, each with its
    source image's index in display order.

    Raises
    ------
    NotFoundError
        No such result of this study, or it has no segmentation.
    """
    with db.session() as session:
        study = study_by_uid(session, study_instance_uid)
        result = session.get(InferenceResult, result_id)
        if result is None or result.study_id != study.id:
            raise NotFoundError("result", str(result_id))
        seg_uid = dict(result.findings).get("seg_series_instance_uid")
        orthanc_id = study.orthanc_id
    if not seg_uid:
        raise NotFoundError("segmentation of result", str(result_id))
    seg = archive.first_of_series(seg_uid)
    order = {
        i["sop_instance_uid"]: k
        for s in viewer_series(archive, ArchiveId(orthanc_id or ""))
        for k, i in enumerate(s.instances)
    }
    packed = [
        {
            "index": order[uid],
            "sop_instance_uid": uid,
            "bits": base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode("ascii"),
        }
        for uid, mask in frames_by_source(seg).items()
        if uid in order and mask.any()
    ]
    return FindingMask(
        series_instance_uid=str(_source_series(seg) or ""),
        rows=int(seg.Rows),
        columns=int(seg.Columns),
        frames=sorted(packed, key=lambda f: f["index"]),
    )


def frames_by_source(seg: Dataset) -> dict[str, np.ndarray]:
    """The SEG's frames OR-ed per referenced source instance (every segment together)."""
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    fractional = seg.get("SegmentationType") == "FRACTIONAL"
    limit = float(seg.get("MaximumFractionalValue", 1)) / 2 if fractional else 0
    out: dict[str, np.ndarray] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = _frame_source(item)
        if source is None:
            continue
        frame = pixels[index] > limit
        out[source] = out[source] | frame if source in out else frame
    return out


def _frame_source(item: Dataset) -> str | None:
    for derivation in item.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            return str(source.ReferencedSOPInstanceUID)
    return None


def _source_series(seg: Dataset) -> str | None:
    for reference in seg.get("ReferencedSeriesSequence") or []:
        return str(reference.SeriesInstanceUID)
    return None
