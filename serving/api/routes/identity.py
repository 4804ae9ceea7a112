"""Patient identity cross-reference (IHE PIXm ITI-83) and purpose-bound probes.

``GET /api/fhir/Patient/$ihe-pix`` answers FHIR R4 (``application/fhir+json``): a
``Parameters`` of the patient's identifiers in other domains, an empty one for an unknown
patient of a known domain, or an ``OperationOutcome``: 404 ``not-found`` for an unknown
``sourceIdentifier`` domain, 403 ``code-invalid`` for an unknown ``targetSystem``, 403
``forbidden`` for a ``peer_hospital`` caller without a treatment token, 400 ``invalid`` for a
malformed parameter (:mod:`core.identity.pixm`). Every query is audited (110112 Query).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import Role
from core.exceptions import PurposeRequiredError, UnknownIdentifierDomainError
from core.identity import PatientIdentity, operation_outcome, pix_query
from core.security import Principal
from serving.api.security import audit_request, context, require_roles

router = APIRouter(prefix="/api/fhir", tags=["identity"])

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
