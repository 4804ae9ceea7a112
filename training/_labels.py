"""What the ``labels`` table says for training: a study's label for a task and where its
mask is (the semantics are described in :mod:`training.orthanc_source`)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from core.db import Database
from core.db.models import Hospital, Label, Study
from training.exceptions import DataSourceError
from training.tasks import Task

__all__ = [
    "SEGMENT_NUMBERS_KEY",
    "SEG_SERIES_KEY",
    "TASK_FINDINGS",
    "SegRegion",
    "StudyLabel",
    "labelled_studies",
    "normalise_finding",
    "study_label",
]

logger = logging.getLogger(__name__)

SEG_SERIES_KEY = "seg_series_instance_uid"
"""Key of ``labels.region`` naming the SeriesInstanceUID of a DICOM SEG series in Orthanc."""
SEGMENT_NUMBERS_KEY = "segment_numbers"
"""Optional key of ``labels.region``: the SEG's segments that outline the finding."""
TASK_FINDINGS: dict[Task, frozenset[str]] = {
    Task.HEAD_CT: frozenset(
        {
            "haemorrhage",
            "hemorrhage",
            "intracranial_haemorrhage",
            "intracranial_hemorrhage",
            "subdural",
            "subarachnoid",
        }
    ),
    Task.CHEST_XR: frozenset({"nodule", "opacity", "pneumothorax"}),
}
"""Findings (normalised ``labels.finding`` values) that make a study positive for a task."""


@dataclass(frozen=True)
class SegRegion:
    """A SEG series outlining a finding, from a label's ``region``."""

    series_instance_uid: str
    segment_numbers: tuple[int, ...] = ()  # empty: every segment


@dataclass(frozen=True)
class StudyLabel:
    """What a study's label rows say for one task (:func:`study_label`)."""

    label: int | None  # None: not exported
    findings: tuple[str, ...] = ()
    regions: tuple[SegRegion, ...] = ()
    series_instance_uid: str | None = None


def normalise_finding(name: str) -> str:
    """``"Intracranial Hemorrhage"`` → ``"intracranial_hemorrhage"``."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def _regions(label: Label) -> list[SegRegion]:
    region = label.region or {}
    uid = region.get(SEG_SERIES_KEY)
    if not uid:
        return []
    numbers = region.get(SEGMENT_NUMBERS_KEY) or []
    if not isinstance(uid, str) or not all(isinstance(n, int) and n > 0 for n in numbers):
        logger.warning(
            "label %s: region %s=%r, %s=%r: expected a UID and positive segment numbers",
            label.id,
            SEG_SERIES_KEY,
            uid,
            SEGMENT_NUMBERS_KEY,
            numbers,
        )
        return []
    return [SegRegion(uid, tuple(sorted(set(numbers))))]


def study_label(rows: Iterable[Label], findings: Collection[str]) -> StudyLabel:
    """A study's label for a task from its label rows (semantics in the module docstring).

    Parameters
    ----------
    rows
        The study's rows of the ``labels`` table.
    findings
        Normalised finding names that count for the task (see :data:`TASK_FINDINGS`).
    """
    rows = sorted(rows, key=lambda row: row.id or 0)
    relevant = [row for row in rows if normalise_finding(row.finding) in findings]
    present = [row for row in relevant if row.present]
    if present:
        named = [row.series_instance_uid for row in present if row.series_instance_uid]
        return StudyLabel(
            label=1,
            findings=tuple(sorted({normalise_finding(row.finding) for row in present})),
            regions=tuple(dict.fromkeys(r for row in present for r in _regions(row))),
            series_instance_uid=named[0] if named else None,
        )
    if rows and not any(row.present for row in rows):
        named = [row.series_instance_uid for row in relevant or rows if row.series_instance_uid]
        return StudyLabel(label=0, series_instance_uid=named[0] if named else None)
    return StudyLabel(label=None)


def labelled_studies(
    database: Database, hospitals: Sequence[str]
) -> tuple[list[tuple[Study, str, list[Label]]], int]:
    """Studies with label rows (in StudyInstanceUID order) with their hospital's name and
    their rows, and how many studies of those hospitals have no label row.

    Parameters
    ----------
    database
        The application database.
    hospitals
        Hospital names; every hospital (and studies of none) when empty.

    Raises
    ------
    DataSourceError
        A hospital that is not registered.
    """
    with database.session() as session:
        known = set(session.scalars(select(Hospital.name)))
        unknown = sorted(set(hospitals) - known)
        if unknown:
            raise DataSourceError(
                "labels table",
                f"hospital(s) {', '.join(map(repr, unknown))} not registered; "
                f"known: {', '.join(sorted(known)) or 'none'}",
            )
        query = select(Study, Hospital.name).outerjoin(Hospital, Study.hospital_id == Hospital.id)
        if hospitals:
            query = query.where(Hospital.name.in_(hospitals))
        studies = {
            study.id: (study, name or "")
            for study, name in session.execute(query.order_by(Study.study_instance_uid))
        }
        rows: dict[int, list[Label]] = {}
        labels = select(Label).join(Study, Label.study_id == Study.id)
        if hospitals:
            labels = labels.join(Hospital, Study.hospital_id == Hospital.id).where(
                Hospital.name.in_(hospitals)
            )
        for label in session.scalars(labels.order_by(Label.id)):
            rows.setdefault(label.study_id, []).append(label)
    labelled = [(study, name, rows[key]) for key, (study, name) in studies.items() if key in rows]
    return labelled, len(studies) - len(labelled)
