"""Research cohorts (issue 15): ``POST /api/cohorts`` defines, runs and stores a cohort,
``GET /api/cohorts/{id}`` shows it, ``POST /api/cohorts/{id}/run`` runs it again,
``GET /api/cohorts`` lists the caller's.

Only a ``researcher`` or ``admin`` with a **research** context token
(``POST /api/auth/context-token {"purpose": "research"}``) is admitted; any other token, a
token without a purpose and an API key are refused (403, audited 110113). Answers are
de-identified (:mod:`serving.cohorts`): counts per hospital with small cells suppressed, and
a study list of keyed UIDs, pseudonyms and shifted dates that names no hospital.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from core.db.models import Role
from core.secrets import load_secrets
from core.security import Principal, Purpose
from serving.api.security import context, request_actor, require_purpose
from serving.cohorts import (
    AiFinding,
    CohortAnswer,
    CohortQuery,
    CohortService,
    InvalidCohortQueryError,
    LabelFinding,
)

router = APIRouter(prefix="/api/cohorts", tags=["cohorts"])
Researcher = Annotated[
    Principal, Depends(require_purpose(Purpose.RESEARCH, roles=(Role.RESEARCHER, Role.ADMIN)))
]
CohortId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the cohort's ID")]


class AiFindingIO(BaseModel):
    """An AI result: model name, critical flag, score at or above ``min_score``."""

    model: str | None = Field(None, max_length=128)
    critical: bool | None = None
    min_score: float | None = Field(None, ge=0.0, le=1.0)


class LabelIO(BaseModel):
    """A radiologist's label: the finding, present or absent."""

    finding: str = Field(min_length=1, max_length=128)
    present: bool = True


class CohortIn(BaseModel):
    """A cohort's query (every criterion given must hold)."""

    name: str | None = Field(None, max_length=128)
    modality: str | None = Field(None, max_length=16)
    body_part: str | None = Field(None, max_length=16)
    study_date_from: dt.date | None = None
    study_date_to: dt.date | None = None
    ai_finding: AiFindingIO | None = None
    label: LabelIO | None = None

    def query(self) -> CohortQuery:
        """The domain query (raises :class:`InvalidCohortQueryError`)."""
        return CohortQuery(
            modality=self.modality,
            body_part=self.body_part,
            study_date_from=self.study_date_from,
            study_date_to=self.study_date_to,
            ai_finding=AiFinding(**self.ai_finding.model_dump()) if self.ai_finding else None,
            label=LabelFinding(**self.label.model_dump()) if self.label else None,
        )


def _service(request: Request) -> CohortService:
    ctx = context(request)
    return CohortService(
        db=ctx.db,
        audit=ctx.audit,
        archive=ctx.archive,
        deid_key=load_secrets(ctx.settings).deid_hmac_key,
        min_cell_size=ctx.settings.cohort_min_cell_size,
    )


def cohort_json(answer: CohortAnswer) -> dict[str, Any]:
    """The JSON of a cohort: what a researcher may see, nothing more."""
    return {
        "id": answer.cohort_id,
        "name": answer.name,
        "query": answer.query.to_json(),
        "created_by": answer.created_by,
        "created_at": answer.created_at.isoformat(),
        "run_at": answer.run_at.isoformat(),
        "runs": answer.runs,
        "min_cell_size": answer.min_cell_size,
        "hospitals": [
            {"hospital": h.hospital, "count": h.count, "shown": h.shown, "suppressed": h.suppressed}
            for h in answer.hospitals
        ],
        "total": answer.total,
        "total_shown": answer.total_shown,
        "studies": [
            {
                "study_instance_uid": s.study_instance_uid,
                "patient_pseudonym": s.patient_pseudonym,
                "study_date": s.study_date,
                "modality": s.modality,
                "body_part": s.body_part,
                "finding": s.finding,
            }
            for s in answer.studies
        ],
        "list_withheld": answer.list_withheld,
    }


@router.post("", status_code=status.HTTP_201_CREATED)
def create_cohort(request: Request, principal: Researcher, body: CohortIn) -> dict[str, Any]:
    """Define, run and store a research cohort; its counts and de-identified study list."""
    try:
        query = body.query()
    except InvalidCohortQueryError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.reason) from exc
    answer = _service(request).create(request_actor(request, principal), query, name=body.name)
    return cohort_json(answer)


@router.get("")
def list_cohorts(request: Request, principal: Researcher) -> list[dict[str, Any]]:
    """The caller's cohorts (an admin's: all), without their study lists."""
    answers = _service(request).cohorts(request_actor(request, principal))
    return [cohort_json(answer) for answer in answers]


@router.get("/{cohort_id}")
def get_cohort(request: Request, principal: Researcher, cohort_id: CohortId) -> dict[str, Any]:
    """A stored cohort: counts per hospital and the de-identified study list."""
    return cohort_json(_service(request).get(request_actor(request, principal), cohort_id))


@router.post("/{cohort_id}/run")
def rerun_cohort(request: Request, principal: Researcher, cohort_id: CohortId) -> dict[str, Any]:
    """Run a stored cohort's query again and store the new answer."""
    return cohort_json(_service(request).rerun(request_actor(request, principal), cohort_id))
