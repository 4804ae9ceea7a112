"""A study's AI results, and asking for them to be computed again.

``GET /api/studies/{uid}/results`` (radiologist, ml_engineer, admin) lists every model
version's result row; ``POST /api/studies/{uid}/reprocess`` (ml_engineer, admin) queues the
study for triage again, recomputing existing results. Logic and auditing:
:mod:`serving.studies`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel

from core.db.models import Role
from core.security import Principal
from serving.api._params import StudyUID
from serving.api.security import context, request_actor, require_roles
from serving.studies import ReprocessRequest, StudyResult, request_reprocess, study_results

__all__ = ["router"]

router = APIRouter(prefix="/api/studies", tags=["studies"])
ResultsReader = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]
Engineer = Annotated[Principal, Depends(require_roles(Role.ML_ENGINEER, Role.ADMIN))]


class StudyResults(BaseModel):
    """All AI results of a study, oldest first."""

    study_instance_uid: str
    results: list[StudyResult]


@router.get("/{study_uid}/results")
def get_results(request: Request, caller: ResultsReader, study_uid: StudyUID) -> StudyResults:
    """The study's AI results: per model version its status, score, critical flag, findings,
    per-stage timings and error."""
    ctx = context(request)
    results = study_results(ctx.db, ctx.audit, study_uid, caller=request_actor(request, caller))
    return StudyResults(study_instance_uid=study_uid, results=results)


@router.post(
    "/{study_uid}/reprocess",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReprocessRequest,
)
def reprocess(request: Request, engineer: Engineer, study_uid: StudyUID) -> ReprocessRequest:
    """Queue the study for the triage pipeline again, recomputing existing results (202)."""
    ctx = context(request)
    return request_reprocess(
        ctx.db, ctx.audit, ctx.archive, study_uid, caller=request_actor(request, engineer)
    )
