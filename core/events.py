"""The outbox contract of studies: the event types and the one payload they carry.

The gateway writes ``study.ready`` (first complete) and ``study.updated`` (new instances after
an earlier event) when a study is complete; serving writes ``study.reprocess`` when an engineer
asks for a study again, and ``study.catch_up`` (the payload of the study's last arrival event)
for a study that arrived while its model had no production version, once one is promoted; the
triage pipeline consumes all four, ``study.catch_up`` only when no other is due. The gateway
and serving never import each other, so the contract lives here, in the core. Consumers are
idempotent per study; the payload is all they need::

    {"study_instance_uid", "hospital", "orthanc_study_id", "instance_count",
     "first_received_at", "last_received_at", "ready_at",
     "series": [{"series_instance_uid", "modality", "body_part_examined",
                 "series_description", "instance_count", "orthanc_series_id"}],
     "force", "requested_by"}          # the last two in study.reprocess only

``orthanc_study_id`` and ``orthanc_series_id`` are the archive's keys
(:data:`~core.archive.ArchiveId`) of the study and its series; they keep their first names so
that events already in the outbox stay readable. Patient identity is not in the payload:
consumers read it from the archive.

Instances radcloud writes into a study itself (AI results, reports: SEG and SR series with
Manufacturer :data:`DERIVED_MANUFACTURER`, as :mod:`imaging.seg` and :mod:`imaging.sr` write them;
:func:`is_derived_series`) are not arrivals: they never reopen a study nor give a
``study.updated`` (else every result would trigger its own triage). The Manufacturer alone does
not tell: radcloud's synthetic demo images carry it too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select

from core.archive import ArchiveId, ImageArchive
from core.db import Database
from core.db.models import OutboxEvent, utcnow

__all__ = [
    "DERIVED_MANUFACTURER",
    "STUDY_CATCH_UP",
    "STUDY_READY",
    "STUDY_REPROCESS",
    "STUDY_UPDATED",
    "Backlog",
    "StudyEventType",
    "catch_up_backlog",
    "is_derived_series",
    "study_payload",
    "study_series",
]


class StudyEventType(StrEnum):
    """Topics of the study events in the outbox."""

    READY = "study.ready"
    UPDATED = "study.updated"
    REPROCESS = "study.reprocess"
    CATCH_UP = "study.catch_up"


STUDY_READY = StudyEventType.READY
STUDY_UPDATED = StudyEventType.UPDATED
STUDY_REPROCESS = StudyEventType.REPROCESS
STUDY_CATCH_UP = StudyEventType.CATCH_UP

DERIVED_MANUFACTURER = "radcloud"
"""(0008,0070) Manufacturer of the series radcloud itself writes (see the module docstring)."""
_DERIVED_MODALITIES = frozenset({"SEG", "SR"})


def is_derived_series(modality: str | None, manufacturer: str | None) -> bool:
    """Whether a series is one radcloud wrote itself (an AI result or a report), not an
    arrival: SEG or SR with Manufacturer :data:`DERIVED_MANUFACTURER`."""
    return manufacturer == DERIVED_MANUFACTURER and modality in _DERIVED_MODALITIES


def study_series(archive: ImageArchive, study: ArchiveId) -> list[dict[str, Any]]:
    """The study's series as the payload lists them (by Series Instance UID), read from the
    archive.

    Parameters
    ----------
    archive
        Where the study is.
    study
        The archive's key of the study.

    Returns
    -------
    list of dict
        One entry per series (see the module docstring).

    Raises
    ------
    ArchiveNotFoundError
        The archive has no such study.
    ArchiveUnavailableError
        The archive cannot answer now.
    """
    series = [
        {
            "series_instance_uid": item.series_instance_uid,
            "modality": item.modality,
            "body_part_examined": item.get("BodyPartExamined"),
            "series_description": item.get("SeriesDescription"),
            "instance_count": len(item.children),
            "orthanc_series_id": item.archive_id,
        }
        for item in archive.get_study_series(study)
    ]
    return sorted(series, key=lambda s: s["series_instance_uid"] or "")


def study_payload(
    *,
    study_instance_uid: str,
    hospital: str | None,
    study_archive_id: ArchiveId,
    series: list[dict[str, Any]],
    first_received_at: dt.datetime,
    last_received_at: dt.datetime,
    ready_at: dt.datetime,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """The payload of a study event (see the module docstring).

    Parameters
    ----------
    study_instance_uid, hospital
        The study and the hospital that sent it.
    study_archive_id
        The archive's key of the study.
    series
        Its series, from :func:`study_series`.
    first_received_at, last_received_at, ready_at
        When its first and last instances arrived, and when it became complete.
    requested_by
        Who asked for a ``study.reprocess`` (which then recomputes existing results:
        ``force``); ``None`` for ``study.ready`` and ``study.updated``.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    payload: dict[str, Any] = {
        "study_instance_uid": study_instance_uid,
        "hospital": hospital,
        "orthanc_study_id": study_archive_id,
        "instance_count": sum(s["instance_count"] for s in series),
        "first_received_at": first_received_at.isoformat(),
        "last_received_at": last_received_at.isoformat(),
        "ready_at": ready_at.isoformat(),
        "series": series,
    }
    if requested_by is not None:
        payload |= {"force": True, "requested_by": requested_by}
    return payload


@dataclass
class Backlog:
    """Catch-up events waiting: how many, and the age of the oldest (seconds)."""

    pending: int
    oldest_age_s: float | None


def catch_up_backlog(db: Database) -> Backlog:
    """The ``study.catch_up`` events not processed yet (``radcloud status``)."""
    with db.session() as session:
        count, first = session.execute(
            select(func.count(), func.min(OutboxEvent.created_at)).where(
                OutboxEvent.topic == STUDY_CATCH_UP.value, OutboxEvent.processed_at.is_(None)
            )
        ).one()
    age = None if first is None else max(0.0, (utcnow() - first).total_seconds())
    return Backlog(pending=int(count), oldest_age_s=age)
