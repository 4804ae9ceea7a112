"""Audit records of serving's domain services: the acting :class:`core.security.Actor` (who
asked, through which door) is recorded by the service that performs the action."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database
from core.db.models import Study
from core.security import Actor

__all__ = ["record_study", "returned_studies", "study_patient_ids"]


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


def study_patient_ids(db: Database, study_instance_uids: Iterable[str]) -> dict[str, str | None]:
    """The Patient ID recorded at ingest of each study (``None``: unknown study or no ID)."""
    wanted = list(dict.fromkeys(study_instance_uids))
    found: dict[str, str | None] = dict.fromkeys(wanted)
    with db.session() as session:
        for start in range(0, len(wanted), 500):  # bounded IN lists
            chunk = wanted[start : start + 500]
            rows = session.execute(
                select(Study.study_instance_uid, Study.patient_id).where(
                    Study.study_instance_uid.in_(chunk)
                )
            )
            found.update({uid: patient_id for uid, patient_id in rows})
    return found


def returned_studies(
    audit: AuditTrail, studies: Iterable[tuple[str, str | None]]
) -> list[dict[str, str | None]]:
    """``detail["returned"]`` of a search or listing: each study it answered with the keyed
    hash of its patient's ID (never the ID), so the trail says which patients were shown."""
    return [
        {
            "study_instance_uid": uid,
            "patient_id_hash": audit.patient_id_hash(patient_id) if patient_id else None,
        }
        for uid, patient_id in studies
    ]
