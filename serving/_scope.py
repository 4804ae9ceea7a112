"""The hospital boundary of serving: every path that names a study checks it here, in the
application database, before anything of the study is read from the image archive
(:mod:`core.tenancy`).

A study outside the caller's hospitals raises the same :class:`~core.exceptions.NotFoundError`
as a study that does not exist (HTTP 404); only the audit trail tells them apart, with a
110113 Security Alert naming the caller, so UID guessing across hospitals is visible to the
platform's auditors and to nobody else.
"""

from __future__ import annotations

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database
from core.exceptions import NotFoundError
from core.security import Actor
from core.tenancy import HospitalScope, study_in_scope

__all__ = ["require_study_in_scope"]


def require_study_in_scope(
    db: Database, audit: AuditTrail, study_instance_uid: str, *, caller: Actor
) -> None:
    """Pass if the study exists and is of one of ``caller``'s hospitals.

    Raises
    ------
    NotFoundError
        No such study, or a study of another hospital (then audited as a security alert).
    """
    with db.session() as session:
        if study_in_scope(session, study_instance_uid, caller.scope):
            return
        exists = study_in_scope(session, study_instance_uid, HospitalScope.platform())
    if exists:
        audit.record(
            AuditEventCode.SECURITY_ALERT,
            actor=caller,
            action=AuditAction.READ,
            outcome=AuditOutcome.MINOR_FAILURE,
            resource_type="study",
            resource_id=study_instance_uid,
            detail={
                "reason": "study of a hospital outside the caller's scope: answered not found",
                "scope": caller.scope.describe(),
            },
        )
    raise NotFoundError("study", study_instance_uid)
