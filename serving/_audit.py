"""Audit records of serving's domain services: the acting :class:`core.security.Actor` (who
asked, through which door) is recorded by the service that performs the action."""

from __future__ import annotations

from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.security import Actor

__all__ = ["record_study"]


def record_study(
    audit: AuditTrail,
    actor: Actor,
    study_instance_uid: str,
    action: AuditAction,
    *,
    patient_id: str | None,
    detail: dict[str, Any],
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
) -> int:
    """Record a patient record event (110110) by ``actor`` on study ``study_instance_uid``;
    return its sequence number."""
    return audit.record(
        AuditEventCode.PATIENT_RECORD,
        actor=actor,
        action=action,
        outcome=outcome,
        resource_type="study",
        resource_id=study_instance_uid,
        patient_id=patient_id,
        detail=detail,
    )
