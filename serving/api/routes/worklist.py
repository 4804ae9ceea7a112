"""The radiologists' worklist: listing in priority order and reading-status transitions.

Roles ``radiologist`` and ``admin``; logic and auditing in
:class:`serving.worklist.WorklistService`. Conflicts (stale version, study held by someone else)
answer 409 with the item's current ``status``, ``claimed_by`` and ``version``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from core.db.models import ReadingStatus, Role
from core.security import Principal
from serving._rows import copy_row
from serving.api._params import StudyUID
from serving.api.security import context, request_actor, require_roles
from serving.worklist import WorklistEntry, WorklistQuery, WorklistService

__all__ = ["router"]

router = APIRouter(prefix="/api/worklist", tags=["worklist"])
Reader = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]


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
    entries, total = _service(request).list(query, caller=request_actor(request, reader))
    return WorklistPage(
        items=list(entries),
        total=total,
        limit=limit,
        offset=offset,
    )


def _service(request: Request) -> WorklistService:
    ctx = context(request)
    return WorklistService(ctx.db, ctx.audit)


@router.post("/{study_uid}/claim", response_model=ReadingStateOut)
def claim(
    request: Request, reader: Reader, study_uid: StudyUID, body: TransitionIn
) -> ReadingStateOut:
    """Start reading a study (``unread → in_progress``); 409 if someone else holds it."""
    caller = request_actor(request, reader)
    state = _service(request).claim(study_uid, caller=caller, version=body.version)
    return copy_row(ReadingStateOut, state)


@router.post("/{study_uid}/release", response_model=ReadingStateOut)
def release(
    request: Request, reader: Reader, study_uid: StudyUID, body: TransitionIn
) -> ReadingStateOut:
    """Put a claimed study back (``in_progress → unread``); by its claimant or an admin."""
    caller = request_actor(request, reader)
    is_admin = Role.ADMIN in reader.roles
    state = _service(request).release(
        study_uid, caller=caller, version=body.version, is_admin=is_admin
    )
    return copy_row(ReadingStateOut, state)


@router.post("/{study_uid}/report", response_model=ReadingStateOut)
def report(
    request: Request, reader: Reader, study_uid: StudyUID, body: TransitionIn
) -> ReadingStateOut:
    """Mark a claimed study reported (``in_progress → reported``); by its claimant, and only
    with a signed report: signing (``POST /api/studies/{uid}/sign``) reports the study itself,
    so without one this answers 409."""
    caller = request_actor(request, reader)
    state = _service(request).report(study_uid, caller=caller, version=body.version)
    return copy_row(ReadingStateOut, state)
