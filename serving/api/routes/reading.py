"""The reading web app's API: viewer settings, a study opened for reading, AI masks, signing,
amending a signed report.

Contract: ``docs/reading-app.md``; logic: :mod:`serving.reading`. Roles ``radiologist`` and
``admin`` read; only a ``radiologist`` signs. Every study opened, mask read and report signed
(or refused) is audited by :class:`serving.reading.ReadingService`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from core.config import WindowPreset
from core.db.models import ReadingStatus, Role
from core.security import Principal
from core.uids import SAFE_UID_PATTERN, UID_MAX_LENGTH
from serving.api._params import StudyUID
from serving.api.security import context, request_actor, require_roles
from serving.reading import AddedFinding, Decision, ReadingService

__all__ = ["router"]

router = APIRouter(tags=["reading"])
Reader = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ADMIN))]
Radiologist = Annotated[Principal, Depends(require_roles(Role.RADIOLOGIST))]


class ViewerConfig(BaseModel):
    """The site's name, window/level presets and worklist refresh interval."""

    site: str
    presets: list[WindowPreset]
    refresh_seconds: int


class DecisionIn(BaseModel):
    """The radiologist's decision on one AI finding."""

    result_id: int
    decision: Literal["confirmed", "rejected"]


class RegionIn(BaseModel):
    """A rectangle in image pixel coordinates."""

    x: float = Field(ge=0)
    y: float = Field(ge=0)
    width: float = Field(gt=0)
    height: float = Field(gt=0)


class AddedIn(BaseModel):
    """A finding the AI missed, on one image."""

    label: str = Field(min_length=1, max_length=128)
    series_instance_uid: str = Field(pattern=SAFE_UID_PATTERN, max_length=UID_MAX_LENGTH)
    sop_instance_uid: str = Field(pattern=SAFE_UID_PATTERN, max_length=UID_MAX_LENGTH)
    region: RegionIn | None = None


class SignIn(BaseModel):
    """A report to sign: the worklist version last seen, the text, a decision per AI finding,
    and findings the AI missed."""

    version: int = Field(ge=1)
    text: str = Field(max_length=20_000)
    decisions: list[DecisionIn] = Field(default_factory=list)
    added: list[AddedIn] = Field(default_factory=list, max_length=100)


class AmendIn(BaseModel):
    """The amended report's full text."""

    text: str = Field(max_length=20_000)


class AmendOut(BaseModel):
    """What amending stored: the new SR, and the SR it amends (which stays unchanged)."""

    study_instance_uid: str
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    amends_sr_sop_instance_uid: str


class SignOut(BaseModel):
    """What signing stored."""

    study_instance_uid: str
    status: ReadingStatus
    version: int
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    labels: int


def _service(request: Request) -> ReadingService:
    ctx = context(request)
    return ReadingService(ctx.db, ctx.audit, ctx.archive, ctx.settings.site_name)


@router.get("/api/viewer/config")
def viewer_config(request: Request, _reader: Reader) -> ViewerConfig:
    """The viewer's window/level presets (per site: ``RADCLOUD_VIEWER_PRESETS``)."""
    settings = context(request).settings
    return ViewerConfig(
        site=settings.site_name,
        presets=settings.viewer_presets,
        refresh_seconds=settings.viewer_refresh_seconds,
    )


@router.get("/api/studies/{study_uid}/viewer")
def open_study(request: Request, reader: Reader, study_uid: StudyUID) -> Any:
    """Everything the viewer needs to open a study: series and instances in display order,
    AI findings (not verified until signed), the reading state and the signed report."""
    manifest = _service(request).manifest(study_uid, caller=request_actor(request, reader))
    body = dataclasses.asdict(manifest)
    body["can_sign"] = Role.RADIOLOGIST in reader.roles
    return body


@router.get("/api/studies/{study_uid}/findings/{result_id}/mask")
def finding_mask(request: Request, reader: Reader, study_uid: StudyUID, result_id: int) -> Any:
    """An AI finding's segmentation, bit-packed per source image (for the viewer's overlay)."""
    mask = _service(request).mask(study_uid, result_id, caller=request_actor(request, reader))
    return dataclasses.asdict(mask)


@router.post("/api/studies/{study_uid}/sign", response_model=SignOut)
def sign(request: Request, radiologist: Radiologist, study_uid: StudyUID, body: SignIn) -> SignOut:
    """Sign the report: a verified DICOM SR in Orthanc, the study ``reported``, the labels
    training uses. 422: text empty, a decision missing or unknown; 409: the study is not the
    caller's in progress, or ``version`` is stale."""
    decisions = [Decision(d.result_id, d.decision) for d in body.decisions]
    added = [
        AddedFinding(
            a.label,
            a.series_instance_uid,
            a.sop_instance_uid,
            a.region.model_dump() if a.region else {},
        )
        for a in body.added
    ]
    outcome = _service(request).sign(
        study_uid,
        caller=request_actor(request, radiologist),
        version=body.version,
        text=body.text,
        decisions=decisions,
        added=added,
    )
    return SignOut(
        study_instance_uid=study_uid,
        status=outcome.state.status,
        version=outcome.state.version,
        sr_sop_instance_uid=outcome.sr_sop_instance_uid,
        sr_series_instance_uid=outcome.sr_series_instance_uid,
        labels=outcome.labels,
    )


@router.post("/api/studies/{study_uid}/amend", response_model=AmendOut)
def amend(
    request: Request, radiologist: Radiologist, study_uid: StudyUID, body: AmendIn
) -> AmendOut:
    """Amend a signed report: a new verified SR that references the one it amends (PS3.3
    C.17.2.3); a signed report is never altered. 422: text empty; 409: the study has no signed
    report, or it was amended meanwhile."""
    outcome = _service(request).amend(
        study_uid, caller=request_actor(request, radiologist), text=body.text
    )
    return AmendOut(
        study_instance_uid=study_uid,
        sr_sop_instance_uid=outcome.sr_sop_instance_uid,
        sr_series_instance_uid=outcome.sr_series_instance_uid,
        amends_sr_sop_instance_uid=outcome.amends_sr_sop_instance_uid,
    )
