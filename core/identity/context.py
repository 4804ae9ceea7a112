"""Purpose-bound context tokens (SMART patient context, imaging access): who may have a
token of which purpose, for which patient, and the audit of each.

==========  ================================  ==========================================
Purpose     Roles                             Bound to
==========  ================================  ==========================================
treatment   peer_hospital, radiologist,       one patient (its radcloud key); the caller's
            admin                             own hospitals must hold an identifier of it
                                              (the care relationship), otherwise only with
                                              a break-glass ``reason``
research    the same, and researcher          no patient; de-identified data only (the data
                                              paths enforce it)
==========  ================================  ==========================================

Audit: every token issued is 110114 User Authentication (E) naming the purpose and patient
key; a break-glass token is, in addition, its own 110113 Security Alert (E) with
``detail.break_glass`` and the reason; a refusal is 110113 with outcome 4.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.config import Settings
from core.db.models import Role
from core.exceptions import NoCareRelationshipError, NotFoundError, PermissionDeniedError
from core.identity.service import PatientIdentity
from core.security.principal import Actor, Principal, Purpose
from core.security.tokens import TokenService

__all__ = ["PURPOSE_ROLES", "ContextToken", "issue_context_token"]

#: The roles that may hold a token of each purpose.
PURPOSE_ROLES: dict[Purpose, frozenset[Role]] = {
    Purpose.TREATMENT: frozenset({Role.PEER_HOSPITAL, Role.RADIOLOGIST, Role.ADMIN}),
    Purpose.RESEARCH: frozenset(
        {Role.PEER_HOSPITAL, Role.RADIOLOGIST, Role.ADMIN, Role.RESEARCHER}
    ),
}

_MAX_REASON = 512


@dataclass(frozen=True, repr=False)
class ContextToken:
    """A context token and what it states."""

    token: str
    purpose: Purpose
    patient_key: str | None
    break_glass: bool
    expires_in: int  # seconds

    def __repr__(self) -> str:
        return (
            f"ContextToken(purpose={self.purpose!r}, patient_key={self.patient_key!r}, "
            f"break_glass={self.break_glass}, token=<redacted>)"
        )


def issue_context_token(
    principal: Principal,
    purpose: Purpose | str,
    *,
    identity: PatientIdentity,
    tokens: TokenService,
    audit: AuditTrail,
    settings: Settings,
    actor: Actor,
    patient_key: str | None = None,
    reason: str | None = None,
) -> ContextToken:
    """Issue a short-lived token of ``purpose`` for ``principal`` (``context_token_ttl_minutes``).

    Parameters
    ----------
    principal
        The authenticated caller (its roles and hospital scope decide).
    purpose
        ``treatment`` or ``research``.
    identity, tokens, audit, settings
        The cross-reference, the signer, the audit trail and the token lifetime.
    actor
        The caller as audited (address, door).
    patient_key
        The patient a treatment token is bound to (a key merged since is resolved to the
        patient's key now); none for research.
    reason
        The break-glass reason, needed where the caller has no care relationship.

    Raises
    ------
    PermissionDeniedError
        No role of the caller may hold a token of ``purpose``.
    NotFoundError
        ``patient_key`` is not a patient radcloud knows.
    NoCareRelationshipError
        Treatment of a patient none of the caller's hospitals holds, without a reason.
    ValueError
        A treatment purpose without a patient, a research purpose with one, or an unknown
        purpose.
    """
    stated = Purpose(purpose)
    reason = (reason or "").strip()[:_MAX_REASON] or None
    detail: dict[str, object] = {"purpose": stated.value, "patient_key": patient_key}
    try:
        allowed = PURPOSE_ROLES[stated]
        if not principal.roles & allowed:
            raise PermissionDeniedError(principal.role, sorted(allowed))
        break_glass = False
        current: str | None = None
        if stated is Purpose.TREATMENT:
            if not patient_key:
                raise ValueError("a treatment token needs a patient key")
            current = identity.current_key(patient_key)
            if current is None:
                raise NotFoundError("patient", patient_key)
            detail["patient_key"] = current
            if not identity.has_care_relationship(current, principal.scope):
                if reason is None:
                    raise NoCareRelationshipError(principal.name, current)
                break_glass = True
        elif patient_key is not None:
            raise ValueError("a research token is bound to no patient: give no patient key")
    except (PermissionDeniedError, NotFoundError, ValueError) as exc:
        audit.record(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            outcome=AuditOutcome.MINOR_FAILURE,
            resource_type="patient" if patient_key else "token",
            resource_id=patient_key,
            detail=detail | {"change": "context token refused", "reason": str(exc)},
        )
        raise
    ttl = dt.timedelta(minutes=settings.context_token_ttl_minutes)
    token = tokens.issue(
        principal.name,
        principal.roles,
        ttl,
        purpose=stated,
        patient_key=current,
        reason=reason if break_glass else None,
    )
    if break_glass:
        audit.record(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=AuditAction.EXECUTE,
            resource_type="patient",
            resource_id=current,
            detail=detail | {"break_glass": True, "reason": reason},
        )
    audit.record(
        AuditEventCode.USER_AUTHENTICATION,
        actor=actor,
        resource_type="patient" if current else "token",
        resource_id=current,
        detail=detail | {"method": "context token issued", "break_glass": break_glass},
    )
    return ContextToken(token, stated, current, break_glass, int(ttl.total_seconds()))
