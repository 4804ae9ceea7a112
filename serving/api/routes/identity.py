"""Patient identity cross-reference: FHIR PIXm ITI-83 and its administration (``admin``).

``GET /api/fhir/Patient/$ihe-pix`` answers FHIR R4 (``application/fhir+json``): a
``Parameters`` of the patient's identifiers in other domains, an empty one for an unknown
patient of a known domain, or an ``OperationOutcome``: 404 ``not-found`` for an unknown
``sourceIdentifier`` domain, 403 ``code-invalid`` for an unknown ``targetSystem``, 403
``forbidden`` for a ``peer_hospital`` caller without a treatment token, 400 ``invalid`` for a
malformed parameter (:mod:`core.identity.pixm`). Every query is audited (110112 Query).

``/api/patients`` (role ``admin``): list patients, show one, link two identifiers by hand,
unlink one, retract a link a hospital's study asserted (list and lift retractions), and the
authority rules (a platform operator's). A hospital's admin sees and changes its hospitals'
identifiers only (:class:`core.identity.PatientIdentity`,
:class:`core.identity.AssertionRetractions`); every change is audited there.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, Field

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import PatientIdAuthorityKind, Role
from core.exceptions import NotFoundError, PurposeRequiredError, UnknownIdentifierDomainError
from core.identity import (
    AssertionRetractions,
    PatientIdentifier,
    PatientIdentity,
    operation_outcome,
    pix_query,
)
from core.security import Principal
from serving.api.security import audit_request, context, request_actor, require_roles

router = APIRouter(prefix="/api/fhir", tags=["identity"])
patients_router = APIRouter(prefix="/api/patients", tags=["identity"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
PatientKey = Annotated[str, Path(pattern=r"^rcp-[0-9a-f]{32}$", description="radcloud patient key")]

FHIR_JSON = "application/fhir+json"


def _fhir(resource_json: str, status_code: int = 200) -> Response:
    return Response(resource_json, status_code, media_type=FHIR_JSON)


@router.get("/Patient/$ihe-pix")
def ihe_pix(
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.PEER_HOSPITAL))],
    source_identifier: Annotated[
        str, Query(alias="sourceIdentifier", max_length=400, description="system|value")
    ],
    target_system: Annotated[list[str] | None, Query(alias="targetSystem")] = None,
) -> Response:
    """PIXm: the identifiers of the patient of ``sourceIdentifier`` in other domains (FHIR)."""
    ctx = context(request)
    system, bar, value = source_identifier.partition("|")
    targets = [s for given in target_system or [] for s in given.split(",") if s]
    detail: dict[str, object] = {"source_system": system, "target_systems": targets}

    def refused(status_code: int, code: str, why: str) -> Response:
        audit_request(
            request,
            AuditEventCode.QUERY,
            principal=principal,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            resource_type="Patient",
            resource_id="$ihe-pix",
            patient_id=value or None,
            detail=detail | {"reason": why},
        )
        return _fhir(operation_outcome(code, why).model_dump_json(), status_code)

    if not bar or not system or not value:
        return refused(400, "invalid", "sourceIdentifier must read system|value")
    try:
        answer = pix_query(
            PatientIdentity(ctx.db, ctx.audit),
            principal,
            system,
            value,
            target_systems=targets,
        )
    except PurposeRequiredError as exc:
        return refused(403, "forbidden", str(exc))
    except UnknownIdentifierDomainError as exc:
        if exc.parameter == "targetSystem":
            return refused(403, "code-invalid", str(exc))
        return refused(404, "not-found", str(exc))
    audit_request(
        request,
        AuditEventCode.QUERY,
        principal=principal,
        action=AuditAction.EXECUTE,
        outcome=AuditOutcome.SUCCESS if answer.refused is None else AuditOutcome.MINOR_FAILURE,
        resource_type="Patient",
        resource_id=answer.patient_key or "$ihe-pix",
        patient_id=value,
        detail=detail
        | {
            "targets": len(answer.targets),
            "purpose": principal.purpose,
            "token_patient_key": principal.patient_key,
        }
        | ({"reason": answer.refused} if answer.refused else {}),
    )
    return _fhir(answer.parameters().model_dump_json())


class IdentifierIO(BaseModel):
    """A hospital's patient identifier (PatientID within IssuerOfPatientID)."""

    hospital: str = Field(min_length=1, max_length=128)
    patient_id: str = Field(min_length=1, max_length=64)
    issuer_of_patient_id: str | None = Field(None, max_length=64)
    system: str | None = None  # the FHIR identifier system (answers only)

    def identifier(self) -> PatientIdentifier:
        """The domain form."""
        return PatientIdentifier(self.hospital, self.patient_id, self.issuer_of_patient_id)

    @classmethod
    def of(cls, identifier: PatientIdentifier) -> IdentifierIO:
        """The answer form."""
        return cls(
            hospital=identifier.hospital,
            patient_id=identifier.patient_id,
            issuer_of_patient_id=identifier.issuer_of_patient_id,
            system=identifier.system,
        )


class PatientOut(BaseModel):
    """A patient: its key and the identifiers the caller may see."""

    patient_key: str
    identifiers: list[IdentifierIO]


class LinkIn(BaseModel):
    """Two identifiers to link by hand, and why."""

    a: IdentifierIO
    b: IdentifierIO
    reason: str = Field(min_length=1, max_length=1000)


class UnlinkIn(BaseModel):
    """An identifier whose manual links to undo, and why."""

    identifier: IdentifierIO
    reason: str = Field(min_length=1, max_length=1000)


class LinkOut(BaseModel):
    """An explicit link (``asserted`` by a hospital's study, or ``manual``)."""

    id: int
    a: IdentifierIO
    b: IdentifierIO
    kind: str
    reason: str | None
    created_by: str | None


class PatientDetail(PatientOut):
    """A patient with its links."""

    links: list[LinkOut]


class RetractionIn(BaseModel):
    """A link of two identifiers that their hospital's study asserted, and why it is retracted
    (or why the retraction is lifted)."""

    identifier: IdentifierIO
    other: IdentifierIO
    reason: str = Field(min_length=1, max_length=1000)


class RetractionOut(BaseModel):
    """A retraction in force: who retracted whose assertion, when and why, and how many later
    studies asserted it again (``withheld``)."""

    identifier: IdentifierIO
    other: IdentifierIO
    reason: str
    created_by: str
    created_at: dt.datetime
    asserted_by: str | None
    asserted_at: dt.datetime
    withheld: int


class RetractedOut(BaseModel):
    """The patient keys of the two identifiers after a retraction (one key when another rule
    still joins them)."""

    patient_key: str
    other_patient_key: str


class AuthorityIO(BaseModel):
    """An assigning authority whose IDs are valid across hospitals."""

    issuer_of_patient_id: str = Field(min_length=1, max_length=64)
    kind: PatientIdAuthorityKind


def _identity(request: Request) -> PatientIdentity:
    ctx = context(request)
    return PatientIdentity(ctx.db, ctx.audit)


def _retractions(request: Request) -> AssertionRetractions:
    ctx = context(request)
    return AssertionRetractions(ctx.db, ctx.audit)


def _unprocessable(exc: ValueError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@patients_router.get("")
def list_patients(
    request: Request,
    principal: Admin,
    hospital: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PatientOut]:
    """Patients with identifiers in the caller's hospitals, most recently registered first."""
    found = _identity(request).patients(
        principal.scope,
        hospital=hospital,
        limit=limit,
        actor=request_actor(request, principal),
    )
    return [
        PatientOut(patient_key=key, identifiers=[IdentifierIO.of(i) for i in identifiers])
        for key, identifiers in found
    ]


@patients_router.get("/authorities")
def list_authorities(request: Request, _principal: Admin) -> list[AuthorityIO]:
    """The assigning authorities registered as enterprise-wide or national."""
    return [
        AuthorityIO(issuer_of_patient_id=rule.issuer_of_patient_id, kind=rule.kind)
        for rule in _identity(request).authorities()
    ]


@patients_router.post("/authorities")
def add_authority(request: Request, principal: Admin, body: AuthorityIO) -> AuthorityIO:
    """Register an assigning authority (platform operators only)."""
    try:
        _identity(request).add_authority(
            body.issuer_of_patient_id, body.kind, actor=request_actor(request, principal)
        )
    except ValueError as exc:
        raise _unprocessable(exc) from exc
    return body


@patients_router.get("/retractions")
def list_retractions(request: Request, principal: Admin) -> list[RetractionOut]:
    """Retracted assertions of identifiers of the caller's hospitals, oldest first."""
    return [
        RetractionOut(
            identifier=IdentifierIO.of(r.a),
            other=IdentifierIO.of(r.b),
            reason=r.reason,
            created_by=r.created_by,
            created_at=r.created_at,
            asserted_by=r.asserted_by,
            asserted_at=r.asserted_at,
            withheld=r.withheld,
        )
        for r in _retractions(request).retractions(principal.scope)
    ]


@patients_router.post("/retractions")
def retract_assertion(request: Request, principal: Admin, body: RetractionIn) -> RetractedOut:
    """Retract a link a hospital's study asserted: later studies do not make it again."""
    try:
        key, other_key = _retractions(request).retract(
            body.identifier.identifier(),
            body.other.identifier(),
            body.reason,
            actor=request_actor(request, principal),
        )
    except ValueError as exc:
        raise _unprocessable(exc) from exc
    return RetractedOut(patient_key=key, other_patient_key=other_key)


@patients_router.post("/retractions/lift")
def lift_retraction(request: Request, principal: Admin, body: RetractionIn) -> PatientOut:
    """Lift a retraction: the hospital's asserted link is restored."""
    try:
        key = _retractions(request).lift(
            body.identifier.identifier(),
            body.other.identifier(),
            body.reason,
            actor=request_actor(request, principal),
        )
    except ValueError as exc:
        raise _unprocessable(exc) from exc
    identifiers = _identity(request).identifiers(key, principal.scope)
    return PatientOut(patient_key=key, identifiers=[IdentifierIO.of(i) for i in identifiers])


@patients_router.get("/{patient_key}")
def show_patient(request: Request, principal: Admin, patient_key: PatientKey) -> PatientDetail:
    """A patient's identifiers in the caller's hospitals, and their links."""
    identity = _identity(request)
    current = identity.current_key(patient_key) or patient_key
    identifiers = identity.identifiers(current, principal.scope)
    if not identifiers:
        raise NotFoundError("patient", patient_key)
    links = identity.links(principal.scope, patient_key=current)
    audit_request(
        request,
        AuditEventCode.PATIENT_RECORD,
        principal=principal,
        action=AuditAction.READ,
        resource_type="patient",
        resource_id=current,
        detail={"identifiers": len(identifiers)},
    )
    return PatientDetail(
        patient_key=current,
        identifiers=[IdentifierIO.of(i) for i in identifiers],
        links=[
            LinkOut(
                id=link.id,
                a=IdentifierIO.of(link.a),
                b=IdentifierIO.of(link.b),
                kind=link.kind,
                reason=link.reason,
                created_by=link.created_by,
            )
            for link in links
            if principal.scope.covers(link.a.hospital) and principal.scope.covers(link.b.hospital)
        ],
    )


@patients_router.post("/links")
def link_identifiers(request: Request, principal: Admin, body: LinkIn) -> PatientOut:
    """Link two identifiers as one patient by hand (both of the caller's hospitals)."""
    identity = _identity(request)
    try:
        key = identity.link(
            body.a.identifier(),
            body.b.identifier(),
            body.reason,
            actor=request_actor(request, principal),
        )
    except ValueError as exc:
        raise _unprocessable(exc) from exc
    identifiers = identity.identifiers(key, principal.scope)
    return PatientOut(patient_key=key, identifiers=[IdentifierIO.of(i) for i in identifiers])


@patients_router.post("/unlink")
def unlink_identifier(request: Request, principal: Admin, body: UnlinkIn) -> PatientOut:
    """Undo an identifier's manual links: it gets its own patient key back."""
    identity = _identity(request)
    try:
        key = identity.unlink(
            body.identifier.identifier(), body.reason, actor=request_actor(request, principal)
        )
    except ValueError as exc:
        raise _unprocessable(exc) from exc
    identifiers = identity.identifiers(key, principal.scope)
    return PatientOut(patient_key=key, identifiers=[IdentifierIO.of(i) for i in identifiers])
