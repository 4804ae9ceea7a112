"""A study's AI results, and asking for them to be computed again.

``GET /api/studies/{uid}/results`` (radiologist, ml_engineer, admin) lists every model
version's result row; ``POST /api/studies/{uid}/reprocess`` (ml_engineer, admin) writes a
durable ``study.reprocess`` outbox event with the ``study.ready`` payload (see
``dicom_gateway.completeness``) plus ``"force": true``, which tells the triage pipeline to
recompute even where a result for the model version exists. Both are audited as patient record
events (110110: read, update).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Path, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select

from core.audit import AuditAction, AuditEventCode
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Role
from core.exceptions import NotFoundError
from core.security import Principal
from serving.api.security import audit_request, context, require_roles
from serving.studies import study_by_uid

__all__ = ["STUDY_REPROCESS", "router"]

STUDY_REPROCESS = "study.reprocess"

router = APIRouter(prefix="/api/studies", tags=["studies"])
ResultsReader = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]
Engineer = Annotated[Principal, Depends(require_roles(Role.ML_ENGINEER, Role.ADMIN))]
StudyUid = Annotated[str, Path(pattern=r"^[0-9.]{1,64}$", description="StudyInstanceUID")]


class ResultOut(BaseModel):
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


class StudyResults(BaseModel):
    """All AI results of a study, oldest first."""

    study_instance_uid: str
    results: list[ResultOut]


class ReprocessAccepted(BaseModel):
    """The queued reprocess event."""

    study_instance_uid: str
    event_id: int
    topic: str


@router.get("/{study_uid}/results")
def get_results(request: Request, caller: ResultsReader, study_uid: StudyUid) -> StudyResults:
    """The study's AI results: per model version its status, score, critical flag, findings,
    per-stage timings and error."""
    with context(request).db.session() as session:
        study = study_by_uid(session, study_uid)
        rows = session.scalars(
            select(InferenceResult)
            .where(InferenceResult.study_id == study.id)
            .order_by(InferenceResult.created_at, InferenceResult.id)
        ).all()
        results = [
            ResultOut(
                model_name=row.model_name,
                model_version=row.model_version,
                status=row.status,
                score=row.score,
                critical=row.critical,
                findings=row.findings,
                timings=row.timings,
                error=row.error,
                created_at=row.created_at,
            )
            for row in rows
        ]
        patient_id = study.patient_id
    audit_request(
        request,
        AuditEventCode.PATIENT_RECORD,
        principal=caller,
        action=AuditAction.READ,
        resource_type="study",
        resource_id=study_uid,
        patient_id=patient_id,
        detail={"what": "inference results", "count": len(results)},
    )
    return StudyResults(study_instance_uid=study_uid, results=results)


def _series(orthanc: Any, orthanc_id: str) -> list[dict[str, Any]]:
    """The study's series as the ``study.ready`` payload lists them, read from Orthanc."""
    series = [
        {
            "series_instance_uid": tags.get("SeriesInstanceUID"),
            "modality": tags.get("Modality"),
            "body_part_examined": tags.get("BodyPartExamined"),
            "series_description": tags.get("SeriesDescription"),
            "instance_count": len(item.get("Instances", [])),
            "orthanc_series_id": item.get("ID"),
        }
        for item in orthanc.get_studies_id_series(orthanc_id)
        for tags in [item.get("MainDicomTags", {})]
    ]
    return sorted(series, key=lambda s: s["series_instance_uid"] or "")


def _unavailable(uid: str, reason: str, code: int) -> JSONResponse:
    error = "conflict" if code == status.HTTP_409_CONFLICT else "unavailable"
    return JSONResponse({"error": error, "detail": f'study "{uid}": {reason}'}, code)


@router.post(
    "/{study_uid}/reprocess",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReprocessAccepted,
)
def reprocess(
    request: Request, engineer: Engineer, study_uid: StudyUid
) -> ReprocessAccepted | JSONResponse:
    """Queue the study for the triage pipeline again, recomputing existing results (202)."""
    ctx = context(request)
    with ctx.db.session() as session:
        study = study_by_uid(session, study_uid)
        ready_at, orthanc_id = study.ready_at, study.orthanc_id
        first, last = study.first_received_at, study.last_received_at
        hospital = study.hospital.name if study.hospital else None
        patient_id = study.patient_id
    if ready_at is None or orthanc_id is None:
        return _unavailable(study_uid, "is not complete yet: it is processed when ready", 409)
    try:
        series = _series(ctx.orthanc, orthanc_id)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == status.HTTP_404_NOT_FOUND:
            raise NotFoundError("study in Orthanc", study_uid) from exc
        return _unavailable(study_uid, f"Orthanc answered {exc.response.status_code}", 503)
    except httpx.HTTPError as exc:
        return _unavailable(study_uid, f"Orthanc cannot be reached ({exc})", 503)
    payload = {
        "study_instance_uid": study_uid,
        "hospital": hospital,
        "orthanc_study_id": orthanc_id,
        "instance_count": sum(s["instance_count"] for s in series),
        "first_received_at": first.isoformat(),
        "last_received_at": last.isoformat(),
        "ready_at": ready_at.isoformat(),
        "series": series,
        "force": True,
        "requested_by": engineer.name,
    }
    with ctx.db.session() as session:
        event = OutboxEvent(topic=STUDY_REPROCESS, key=study_uid, payload=payload)
        session.add(event)
        session.flush()
        event_id = event.id
    audit_request(
        request,
        AuditEventCode.PATIENT_RECORD,
        principal=engineer,
        action=AuditAction.UPDATE,
        resource_type="study",
        resource_id=study_uid,
        patient_id=patient_id,
        detail={"what": "reprocess requested", "event_id": event_id, "topic": STUDY_REPROCESS},
    )
    return ReprocessAccepted(study_instance_uid=study_uid, event_id=event_id, topic=STUDY_REPROCESS)
