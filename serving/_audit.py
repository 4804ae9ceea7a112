"""Who asked for an audited action: serving's domain services record it themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.security import Actor, Door, Principal

__all__ = ["Caller"]


@dataclass(frozen=True)
class Caller:
    """An authenticated user or service account and the network address it called from.

    Parameters
    ----------
    principal
        Who asks.
    address
        The calling network address (None where there is none, e.g. a test).
    door
        How the request came in (recorded as the audit record's ``via``, as
        :class:`core.security.Actor` does for the platform's services).
    """

    principal: Principal
    address: str | None = None
    door: Door = Door.HTTP

    @property
    def actor(self) -> Actor:
        """The caller as the audit trail's active participant."""
        return Actor.from_principal(self.principal, self.door, self.address)

    @property
    def name(self) -> str:
        """The user or service account name."""
        return self.principal.name

    def record(
        self,
        audit: AuditTrail,
        event_code: AuditEventCode,
        *,
        action: AuditAction,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patient_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Record an audit event with this caller as the active participant; return its
        sequence number."""
        return audit.record(
            event_code,
            action=action,
            outcome=outcome,
            actor=self.actor,
            resource_type=resource_type,
            resource_id=resource_id,
            patient_id=patient_id,
            detail=detail,
        )

    def record_study(
        self,
        audit: AuditTrail,
        study_instance_uid: str,
        action: AuditAction,
        *,
        patient_id: str | None,
        detail: dict[str, Any],
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
    ) -> int:
        """Record a patient record event (110110) on study ``study_instance_uid``."""
        return self.record(
            audit,
            AuditEventCode.PATIENT_RECORD,
            action=action,
            outcome=outcome,
            resource_type="study",
            resource_id=study_instance_uid,
            patient_id=patient_id,
            detail=detail,
        )
