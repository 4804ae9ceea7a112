"""Studies as the API sees them: the lookup by UID, their AI results, asking for a reprocess.

A reprocess writes a durable ``study.reprocess`` outbox event with the ``study.ready`` payload
(one contract: :mod:`core.events`) plus ``"force": true``, which tells the triage pipeline to
recompute even where a result for the model version exists. Reading the results and asking for
a reprocess are audited as patient record events (110110: read, update). A study of a hospital
outside the caller's scope is not found (:mod:`core.tenancy`), checked before the archive is
asked anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.archive import (
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
    ImageArchive,
)
from core.audit import AuditAction, AuditTrail
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study
from core.events import STUDY_REPROCESS, study_payload, study_series
from core.exceptions import NotFoundError
from core.security import Actor
from core.tenancy import require_study
from serving._audit import record_study
from serving._rows import copy_row
from serving._scope import require_study_in_scope
from serving.exceptions import PlatformUnavailableError, StudyNotReadyError

__all__ = [
    "STUDY_REPROCESS",
    "ReprocessRequest",
    "StudyResult",
    "request_reprocess",
    "study_by_uid",
    "study_results",
]


@dataclass(frozen=True)
class StudyResult:
    """One model version's result on the study."""

    model_name: str
    model_version: str
    status: InferenceStatus
    score: float | None
    critical: bool
    findings: dict[str, Any]
    timings: dict[str, Any]
    error: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class ReprocessRequest:
    """The queued reprocess event."""

    study_instance_uid: str
    event_id: int
    topic: str


def study_by_uid(session: Session, uid: str) -> Study:
    """The study ``uid`` of the application database.

    Raises
    ------
    NotFoundError
        No such study.
    """
    study: Study | None = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        raise NotFoundError("study", uid)
    return study


def study_results(
    db: Database, audit: AuditTrail, study_instance_uid: str, *, caller: Actor
) -> list[StudyResult]:
    """The study's AI results, oldest first: per model version its status, score, critical
    flag, findings, per-stage timings and error (audited: 110110 read).

    Raises
    ------
    NotFoundError
        No such study, or not of the caller's hospitals.
    """
    require_study_in_scope(db, audit, study_instance_uid, caller=caller)
    with db.session() as session:
        study = require_study(session, study_instance_uid, caller.scope)
        rows = session.scalars(
            select(InferenceResult)
            .where(InferenceResult.study_id == study.id)
            .order_by(InferenceResult.created_at, InferenceResult.id)
        ).all()
        results = [copy_row(StudyResult, row) for row in rows]
        patient_id = study.patient_id
    record_study(
        audit,
        caller,
        study_instance_uid,
        AuditAction.READ,
        patient_id=patient_id,
        detail={"what": "inference results", "count": len(results)},
    )
    return results


def request_reprocess(
    db: Database,
    audit: AuditTrail,
    archive: ImageArchive,
    study_instance_uid: str,
    *,
    caller: Actor,
) -> ReprocessRequest:
    """Queue the study for the triage pipeline again, recomputing existing results (audited:
    110110 update).

    Raises
    ------
    NotFoundError
        No such study, not of the caller's hospitals, or no longer in the image archive.
    StudyNotReadyError
        The study is still arriving: it is processed when ready.
    PlatformUnavailableError
        The image archive did not answer, or failed.
    """
    uid, topic = study_instance_uid, STUDY_REPROCESS.value
    require_study_in_scope(db, audit, uid, caller=caller)
    with db.session() as session:
        study = require_study(session, uid, caller.scope)
        ready_at, orthanc_id = study.ready_at, study.orthanc_id
        first, last = study.first_received_at, study.last_received_at
        hospital = study.hospital.name if study.hospital else None
        patient_id = study.patient_id
    if ready_at is None or orthanc_id is None:
        raise StudyNotReadyError(uid)
    try:
        series = study_series(archive, ArchiveId(orthanc_id))
    except ArchiveNotFoundError as exc:
        raise NotFoundError("study in Orthanc", uid) from exc
    except ArchiveError as exc:
        raise PlatformUnavailableError(f'study "{uid}": {_archive_failure(exc)}') from exc
    payload = study_payload(
        study_instance_uid=uid,
        hospital=hospital,
        study_archive_id=ArchiveId(orthanc_id),
        series=series,
        first_received_at=first,
        last_received_at=last,
        ready_at=ready_at,
        requested_by=caller.name,
    )
    with db.session() as session:
        event = OutboxEvent(topic=topic, key=uid, payload=payload)
        session.add(event)
        session.flush()
        event_id = event.id
    record_study(
        audit,
        caller,
        uid,
        AuditAction.UPDATE,
        patient_id=patient_id,
        detail={"what": "reprocess requested", "event_id": event_id, "topic": topic},
    )
    return ReprocessRequest(study_instance_uid=uid, event_id=event_id, topic=topic)


def _archive_failure(exc: ArchiveError) -> str:
    """Why the archive could not list the study's series, for the 503's detail."""
    status = (
        exc.status_code if isinstance(exc, ArchiveUnavailableError | ArchiveRejectedError) else None
    )
    if status is not None:
        return f"Orthanc answered {status}"
    return f"Orthanc cannot be reached ({exc})"
