"""The labels a signed report gives training (``training/_labels.py`` reads them): a confirmed
AI finding is present with its SEG as the region; a rejected one absent; an added one present
on its image, with its rectangle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.db.models import Label
from serving.reading.manifest import AiFinding

__all__ = ["AddedFinding", "Decision", "report_labels"]


@dataclass(frozen=True)
class Decision:
    """The radiologist's decision on an AI finding."""

    result_id: int
    decision: Literal["confirmed", "rejected"]


@dataclass(frozen=True)
class AddedFinding:
    """A finding the AI missed, marked on one image (a rectangle in pixel coordinates)."""

    label: str
    series_instance_uid: str
    sop_instance_uid: str
    region: dict[str, float] = field(default_factory=dict)  # x, y, width, height


def report_labels(
    study_id: int,
    author: str,
    findings: dict[int, AiFinding],
    decisions: Sequence[Decision],
    added: Sequence[AddedFinding],
) -> list[Label]:
    """The label rows of a report: one per decision on an AI finding, one per added finding."""
    labels = []
    for decision in decisions:
        finding = findings[decision.result_id]
        confirmed = decision.decision == "confirmed"
        region: dict[str, Any] = {}
        if confirmed and finding.seg_series_instance_uid:
            region = {"seg_series_instance_uid": finding.seg_series_instance_uid}
        labels.append(
            Label(
                study_id=study_id,
                series_instance_uid=finding.series_instance_uid,
                finding=finding.label,
                present=confirmed,
                source="radiologist",
                region=region,
                inference_result_id=finding.result_id,
                author=author,
            )
        )
    labels.extend(
        Label(
            study_id=study_id,
            series_instance_uid=item.series_instance_uid,
            sop_instance_uid=item.sop_instance_uid,
            finding=item.label,
            present=True,
            source="radiologist",
            region={"sop_instance_uid": item.sop_instance_uid, **item.region},
            author=author,
        )
        for item in added
    )
    return labels
