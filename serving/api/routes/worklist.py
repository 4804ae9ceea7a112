"""The radiologists' worklist: listing in priority order and reading-status transitions.

Roles ``radiologist`` and ``admin``. Listing is audited as a query (110112; the search text is
not recorded, the study UIDs shown are); each transition, and each refused one, as a patient
record update (110110, action U). Conflicts (stale version, study held by someone else) answer
409 with the item's current ``status``, ``claimed_by`` and ``version``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import ReadingStatus, Role
from core.security import Principal
from serving._rows import copy_row
from serving.api.security import audit_request, context, require_roles
from serving.worklist import (
    ReadingState,
    Worklist,
    WorklistEntry,
    WorklistError,
    WorklistQuery,
    list_worklist,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/worklist", tags=["worklist"])
Reader = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
StudyUid = Annotated[str, Path(pattern=r"^[0-9.]{1,64}$", description="StudyInstanceUID")]


class WorklistPage(BaseModel):
    """A page of the worklist, in priority order."""

    items: list[WorklistEntry]  # serving.worklist: one row each
    total: int
    limit: int
    offset: int


class TransitionIn(BaseModel):
    """The worklist item ``version`` the client last saw."""

    version: int = Field(ge=1)


class ReadingStateOut(BaseModel):
    """A study's reading state after a transition."""

    study_instance_uid: str
    status: ReadingStatus
    claimed_by: str | None
    claimed_at: dt.datetime | None
    reported_at: dt.datetime | None
    version: int


@router.get("")
def get_worklist(
    request: Request,
    reader: Reader,
    *,
    status: Annotated[list[ReadingStatus] | None, Query()] = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_]{1,16}$")] = None,
    hospital: Annotated[str | None, Query(max_length=128)] = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> WorklistPage:
    """Studies in reading priority: earliest due first (ready time + maximum wait of the
    study's priority class), then highest AI score. Default: unread and in-progress studies."""
    query = WorklistQuery(
        statuses=tuple(status) if status else WorklistQuery.statuses,
        modality=modality,
        hospital=hospital,
        date_from=date_from,
        date_to=date_to,
        q=q,
        limit=limit,
        offset=offset,
    )
    with context(request).db.session() as session:
        entries, total = list_worklist(session, query)
    audit_request(
        request,
        AuditEventCode.QUERY,
        principal=reader,
        action=AuditAction.EXECUTE,
        resource_type="worklist",
        detail={
            "filters": {
                "status": [str(s) for s in query.statuses],
                "modality": modality,
                "hospital": hospital,
                "date_from": date_from.isoformat() if date_from else None,
                "date_to": date_to.isoformat() if date_to else None,
                "search_text": q is not None,  # the text may name a patient: not recorded
            },
            "total": total,
            "study_instance_uids": [entry.study_instance_uid for entry in entries],
        },
    )
    return WorklistPage(
        items=list(entries),
        total=total,
        limit=limit,
        offset=offset,
    )


def _transition(
    request: Request, reader: Reader, uid: str, name: str, version: int
) -> ReadingStateOut:
    worklist = Worklist(context(request).db)
    is_admin = Role.ADMIN in reader.roles
    try:
        if name == "claim":
            state: ReadingState = worklist.claim(uid, user=reader.name, version=version)
        elif name == "release":
            state = worklist.release(uid, user=reader.name, version=version, is_admin=is_admin)
        else:
            state = worklist.report(uid, user=reader.name, version=version)
    except WorklistError as exc:
        _audit(
            request,
            reader,
            uid,
            patient_id=None,
            detail={"transition": name, "version": version},
            error=exc,
        )
        raise  # HTTP status by serving.api.errors
    detail = {"transition": name, "status": state.status, "version": state.version}
    _audit(request, reader, uid, patient_id=state.patient_id, detail=detail, error=None)
    return copy_row(ReadingStateOut, state)


def _audit(
    request: Request,
    reader: Principal,
    uid: str,
    *,
    patient_id: str | None,
    detail: dict[str, Any],
    error: WorklistError | None,
) -> None:
    audit_request(
        request,
        AuditEventCode.PATIENT_RECORD,
        principal=reader,
        action=AuditAction.UPDATE,
        outcome=AuditOutcome.MINOR_FAILURE if error else AuditOutcome.SUCCESS,
        resource_type="study",
        resource_id=uid,
        patient_id=patient_id,
        detail=detail | ({"reason": str(error)} if error else {}),
    )


@router.post("/{study_uid}/claim", response_model=ReadingStateOut)
def claim(
    request: Request, reader: Reader, study_uid: StudyUid, body: TransitionIn
) -> ReadingStateOut:
    """Start reading a study (``unread → in_progress``); 409 if someone else holds it."""
    return _transition(request, reader, study_uid, "claim", body.version)


@router.post("/{study_uid}/release", response_model=ReadingStateOut)
def release(
    request: Request, reader: Reader, study_uid: StudyUid, body: TransitionIn
) -> ReadingStateOut:
    """Put a claimed study back (``in_progress → unread``); by its claimant or an admin."""
    return _transition(request, reader, study_uid, "release", body.version)


@router.post("/{study_uid}/report", response_model=ReadingStateOut)
def report(
    request: Request, reader: Reader, study_uid: StudyUid, body: TransitionIn
) -> ReadingStateOut:
    """Mark a claimed study reported (``in_progress → reported``); by its claimant."""
    return _transition(request, reader, study_uid, "report", body.version)
