"""Cross-hospital study search: ``GET /api/federated/studies`` (JSON) and
``GET /api/fhir/ImagingStudy`` (FHIR R4 searchset), for a token with a purpose of use.

Roles ``peer_hospital``, ``radiologist``, ``admin`` (treatment) and ``researcher`` (research);
the token must state its purpose (``POST /api/auth/context-token``): a missing purpose is
refused (403, audited), never taken for "any". A treatment token is bound to one patient: a
``patient`` parameter naming another is refused (403, audited). Logic, node fan-out and the
audit record: :mod:`serving.federation`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from core.audit import AuditAction, AuditEventCode
from core.db.models import Role
from core.exceptions import PatientContextError
from core.security import Principal
from core.security.principal import Purpose
from imaging.exceptions import BurnedInAnnotationError
from serving.api._dicomweb import DICOM_JSON, public_root
from serving.api._params import StudyUID
from serving.api.security import audit_request, context, request_actor, require_purpose
from serving.federation import FederatedAnswer, FederatedStudy, SearchRequest, imaging_study_bundle
from serving.federation.research import ResearchStudy

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["federated"])
Caller = Annotated[
    Principal,
    Depends(
        require_purpose(
            Purpose.TREATMENT,
            Purpose.RESEARCH,
            roles=(Role.PEER_HOSPITAL, Role.RADIOLOGIST, Role.ADMIN, Role.RESEARCHER),
        )
    ),
]
_STARTED = re.compile(r"(ge|gt|le|lt|eq)?\d{4}-\d{2}-\d{2}")
DICOM_DATE = r"^(\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8})$"
Modality = Annotated[
    str | None, Query(pattern=r"^[A-Z0-9]{1,16}$", description="ModalitiesInStudy, e.g. CT")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many studies per node")]


class NodeOut(BaseModel):
    """How one hospital's node answered."""

    hospital: str
    kind: str
    state: str
    studies: int
    elapsed_ms: float
    reason: str | None


class StudyOut(BaseModel):
    """A study, the hospitals holding it, and where to retrieve it through radcloud."""

    study_instance_uid: str
    held_by: list[str]
    retrieve_urls: dict[str, str]
    patient_key: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None
    modalities_in_study: list[str]
    number_of_study_related_series: int | None
    number_of_study_related_instances: int | None


class FederatedStudies(BaseModel):
    """The merged studies and every node's state; ``partial`` when some node did not answer."""

    purpose: str
    patient_key: str | None
    partial: bool
    nodes: list[NodeOut]
    studies: list[StudyOut]


def wado_base(request: Request, hospital: str) -> str:
    """The WADO-RS base URL through which radcloud serves ``hospital``'s studies."""
    return f"{public_root(request)}/api/federated/hospitals/{quote(hospital, safe='')}/dicom-web"


def _search(
    request: Request,
    caller: Principal,
    *,
    patient: str | None,
    modality: str | None,
    study_date: str | None,
    limit: int,
) -> FederatedAnswer:
    ctx = context(request)
    key = caller.patient_key
    if patient is not None:
        asked = patient.removeprefix("Patient/")
        if caller.purpose is Purpose.RESEARCH or asked != key:
            raise PatientContextError(caller.name, asked, key)
    request_ = SearchRequest(caller.purpose, key, modality, study_date, limit, reason=caller.reason)
    return ctx.federation.search(request_actor(request, caller), request_)


@router.get("/federated/studies")
def federated_studies(
    request: Request,
    caller: Caller,
    *,
    patient: Annotated[str | None, Query(description="The patient key (treatment)")] = None,
    modality: Modality = None,
    date: Annotated[str | None, Query(pattern=DICOM_DATE, description="StudyDate or range")] = None,
    limit: Limit = 200,
) -> FederatedStudies:
    """Studies of the token's patient (treatment) or matching the filters (research, rows
    de-identified) from every hospital's node, merged by Study Instance UID, with each node's
    state."""
    answer = _search(
        request, caller, patient=patient, modality=modality, study_date=date, limit=limit
    )
    return FederatedStudies(
        purpose=str(caller.purpose),
        patient_key=caller.patient_key,
        partial=answer.partial,
        nodes=[
            NodeOut(
                hospital=n.hospital,
                kind=str(n.kind),
                state=str(n.state),
                studies=n.studies,
                elapsed_ms=round(n.elapsed_ms, 1),
                reason=n.reason,
            )
            for n in answer.nodes
        ],
        studies=[
            StudyOut(
                study_instance_uid=s.study_instance_uid,
                held_by=list(s.held_by),
                retrieve_urls=_retrieve_urls(request, caller, s),
                patient_key=s.patient_key,
                patient_id=s.patient_id,
                issuer_of_patient_id=s.issuer_of_patient_id,
                patient_name=s.patient_name,
                patient_birth_date=s.patient_birth_date,
                study_date=s.study_date,
                accession_number=s.accession_number,
                study_description=s.study_description,
                modalities_in_study=list(s.modalities_in_study),
                number_of_study_related_series=s.number_of_study_related_series,
                number_of_study_related_instances=s.number_of_study_related_instances,
            )
            for s in answer.studies
        ],
    )


def _retrieve_urls(request: Request, caller: Principal, study: FederatedStudy) -> dict[str, str]:
    """Where to retrieve a row: per holding hospital (treatment), or by its pseudonym alone
    (research, :mod:`serving.federation.research`)."""
    if caller.purpose is Purpose.RESEARCH:
        root = public_root(request)
        return {"research": f"{root}/api/federated/research/studies/{study.study_instance_uid}"}
    return {h: f"{wado_base(request, h)}/studies/{study.study_instance_uid}" for h in study.held_by}


Researcher = Annotated[
    Principal,
    Depends(require_purpose(Purpose.RESEARCH, roles=(Role.RESEARCHER, Role.ADMIN))),
]
_PARTS_BOUNDARY = "radcloud-research-part"


def _record_research(
    request: Request, caller: Principal, found: ResearchStudy, what: str, detail: dict[str, Any]
) -> None:
    audit_request(
        request,
        AuditEventCode.INSTANCES_ACCESSED,
        principal=caller,
        action=AuditAction.READ,
        resource_type="study",
        resource_id=found.original_uid,
        detail={
            "federated": True,
            "purpose": "research",
            "deidentified_uid": found.deidentified_uid,
            "hospital": found.hospital,
            "what": what,
        }
        | detail,
    )


@router.get("/federated/research/studies/{study}/metadata")
def research_study_metadata(request: Request, caller: Researcher, study: StudyUID) -> Response:
    """A research row's study metadata (DICOM JSON), by its pseudonym, de-identified (PS3.15
    Basic Profile, modified dates); instances that may carry burned-in annotation are left out
    and counted in ``X-Radcloud-Withheld``."""
    ctx = context(request)
    found = ctx.research.resolve(study)
    datasets, withheld = ctx.research.metadata(found)
    _record_research(request, caller, found, "metadata", {"withheld": withheld})
    return Response(
        json.dumps(datasets),
        media_type=DICOM_JSON,
        headers={"X-Radcloud-Withheld": str(withheld)},
    )


@router.get("/federated/research/studies/{study}")
def research_study(request: Request, caller: Researcher, study: StudyUID) -> Response:
    """A research row's study (multipart/related; application/dicom), by its pseudonym, each
    instance de-identified as it arrives from the holding node; instances that may carry
    burned-in annotation are left out (counted in the audit record)."""
    ctx = context(request)
    found = ctx.research.resolve(study)
    withheld: list[BurnedInAnnotationError] = []
    sent = [0]

    def parts() -> Iterator[bytes]:
        for data in ctx.research.instances(found, withheld):
            sent[0] += 1
            yield (
                f"--{_PARTS_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + data
                + b"\r\n"
            )
        yield f"--{_PARTS_BOUNDARY}--\r\n".encode()

    def record() -> None:
        _record_research(
            request, caller, found, "instances", {"sent": sent[0], "withheld": len(withheld)}
        )

    media = f'multipart/related; type="application/dicom"; boundary={_PARTS_BOUNDARY}'
    return StreamingResponse(parts(), media_type=media, background=BackgroundTask(record))


def _fhir_date(started: list[str]) -> str | None:
    """FHIR ``started`` search values (``ge2025-01-01``, ``le2025-12-31``, ``2025-03-04``) as a
    DICOM date range; anything else is a validation error (422)."""
    low = high = ""
    for value in started:
        if not _STARTED.fullmatch(value):
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", "started"),
                        "msg": f'"{value[:40]}" is not ge/gt/le/lt/eq and YYYY-MM-DD',
                        "type": "value_error",
                    }
                ]
            )
        prefix, date = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
        digits = date.replace("-", "")
        if prefix in ("ge", "gt", "eq", "sa"):
            low = digits
        if prefix in ("le", "lt", "eq", "eb"):
            high = digits
    if not (low or high):
        return None
    return low if low == high else f"{low}-{high}"


@router.get("/fhir/ImagingStudy", response_class=Response)
def fhir_imaging_studies(
    request: Request,
    caller: Caller,
    *,
    patient: Annotated[str | None, Query(description="Patient/<key> (treatment)")] = None,
    modality: Annotated[
        str | None, Query(pattern=r"^([^|]*\|)?[A-Z0-9]{1,16}$", description="[system|]code")
    ] = None,
    started: Annotated[
        list[str] | None,
        Query(description="ge, le or eq and YYYY-MM-DD, e.g. ge2025-01-01 (repeatable)"),
    ] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 200,
) -> Response:
    """The same search as FHIR R4 ImagingStudy resources in a searchset Bundle, each with its
    WADO-RS Endpoint; an OperationOutcome entry when a node did not answer."""
    code = modality.split("|")[-1] if modality else None
    answer = _search(
        request,
        caller,
        patient=patient,
        modality=code,
        study_date=_fhir_date(started or []),
        limit=count,
    )
    bundle = imaging_study_bundle(
        answer, self_url=str(request.url), wado_base=lambda h: wado_base(request, h)
    )
    return Response(bundle.model_dump_json(), media_type="application/fhir+json")
