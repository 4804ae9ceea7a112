"""The PIX query (IHE PIXm ITI-83, FHIR ``Patient/$ihe-pix``) as FHIR R4 resources built with
``fhir.resources`` (its R4B package, whose ``Parameters`` and ``OperationOutcome`` are R4's).

Who may ask (checked here, before any lookup):

- an ``admin``: about an identifier of a hospital in its scope (another hospital's domain is
  answered as unknown, 404); the answer holds the identifiers of its own hospitals' domains
  and of authorities, other hospitals' local IDs only to a platform operator or with a
  treatment token of that patient (the tenancy rule: an admin sees its hospitals' identifiers);
- a ``peer_hospital`` user: only with a treatment token (:mod:`core.identity.context`), and
  only about the patient the token is bound to (another patient's identifier is answered
  with an empty ``Parameters``, as an unknown patient is).

The answer lists every identifier of the patient in every hospital domain (the point of the
cross-reference: the hospitals that hold the patient, under their local IDs), each in its
system (:mod:`core.identity.identifiers`), and an issuer registered as an authority also in
the authority's own system; ``targetSystem`` narrows it. ``targetId`` references
``Patient/<patient key>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters

from core.db.models import Role
from core.exceptions import PurposeRequiredError, UnknownIdentifierDomainError
from core.identity.identifiers import authority_system, parse_system
from core.identity.service import PatientIdentity
from core.security.principal import Principal, Purpose

__all__ = ["PixAnswer", "operation_outcome", "pix_query"]


@dataclass(frozen=True)
class PixAnswer:
    """What ``$ihe-pix`` found: the patient (``None``: no such patient visible to the caller)
    and its identifiers other than the source, as (system, value)."""

    patient_key: str | None
    targets: list[tuple[str, str]] = field(default_factory=list)
    refused: str | None = None  # why a visible source was withheld (for the audit record)

    def parameters(self) -> Parameters:
        """The FHIR ``Parameters`` answer (empty when no patient)."""
        entries: list[dict[str, object]] = [
            {"name": "targetIdentifier", "valueIdentifier": {"system": s, "value": v}}
            for s, v in self.targets
        ]
        if self.patient_key is not None:
            entries.append(
                {"name": "targetId", "valueReference": {"reference": f"Patient/{self.patient_key}"}}
            )
        return Parameters(parameter=entries or None)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> OperationOutcome:
    """A one-issue FHIR ``OperationOutcome`` (``code`` from the IssueType value set)."""
    return OperationOutcome(
        issue=[{"severity": severity, "code": code, "diagnostics": diagnostics}]
    )


def _visible(identity: PatientIdentity, principal: Principal, key: str) -> str | None:
    """Why ``principal`` may not see patient ``key`` (``None``: it may)."""
    if Role.ADMIN in principal.roles:
        if any(principal.scope.covers(i.hospital) for i in identity.identifiers(key)):
            return None
        return "no identifier of the patient in the admin's scope"
    if identity.current_key(principal.patient_key or "") != key:
        return "not the patient of the treatment token"
    return None


def pix_query(
    identity: PatientIdentity,
    principal: Principal,
    source_system: str,
    source_value: str,
    *,
    target_systems: Sequence[str] = (),
) -> PixAnswer:
    """Answer ``$ihe-pix?sourceIdentifier=<source_system>|<source_value>``.

    Raises
    ------
    PurposeRequiredError
        A ``peer_hospital`` caller (not an admin) without a treatment token.
    UnknownIdentifierDomainError
        ``parameter="sourceIdentifier"``: the source's domain is unknown, or a hospital
        outside an admin's scope; ``parameter="targetSystem"``: a target domain is unknown.
    """
    admin = Role.ADMIN in principal.roles
    if not admin and principal.purpose is not Purpose.TREATMENT:
        raise PurposeRequiredError(principal.purpose, [Purpose.TREATMENT.value])
    domain = parse_system(source_system)
    if (
        domain is None
        or not identity.domain_known(*domain)
        or (admin and domain[0] is not None and not principal.scope.covers(domain[0]))
    ):
        raise UnknownIdentifierDomainError("sourceIdentifier", source_system)
    for system in target_systems:
        target = parse_system(system)
        if target is None or not identity.domain_known(*target):
            raise UnknownIdentifierDomainError("targetSystem", system)
    key = identity.key_in_domain(domain[0], domain[1], source_value)
    if key is None:
        return PixAnswer(None)
    refused = _visible(identity, principal, key)
    if refused is not None:
        return PixAnswer(None, refused=refused)
    authorities = {rule.issuer_of_patient_id for rule in identity.authorities()}
    treating = (
        principal.purpose is Purpose.TREATMENT
        and identity.current_key(principal.patient_key or "") == key
    )
    targets: list[tuple[str, str]] = []
    for i in identity.identifiers(key):
        if admin and not treating and not principal.scope.covers(i.hospital):
            if i.issuer_of_patient_id in authorities:
                targets.append((authority_system(i.issuer_of_patient_id), i.patient_id))
            continue
        targets.append((i.system, i.patient_id))
        if i.issuer_of_patient_id in authorities:
            targets.append((authority_system(i.issuer_of_patient_id), i.patient_id))
    same = {(source_system, source_value)}
    if domain[1] in authorities:  # the source again, in its authority's system
        same.add((authority_system(domain[1] or ""), source_value))
    unique = [t for t in dict.fromkeys(targets) if t not in same]
    if target_systems:
        unique = [t for t in unique if t[0] in target_systems]
    return PixAnswer(key, unique)
