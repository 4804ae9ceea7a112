"""The worklist as radiologists use it: a listing and reading-status transitions, each audited.

A listing is audited as a query (110112; the search text is not recorded, the studies shown
are, each with the keyed hash of its patient's ID); each transition, and each refused one, as a
patient record update (110110, action U). The listing holds only studies of the caller's
hospitals, its total counts only those, and a transition on a study of another hospital is not
found (:mod:`core.tenancy`).
"""

from __future__ import annotations

from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database
from core.security import Actor
from serving._audit import record_study, returned_studies
from serving._scope import require_study_in_scope
from serving.exceptions import WorklistError
from serving.worklist.listing import WorklistEntry, WorklistQuery, list_worklist
from serving.worklist.state import ReadingState, Worklist

__all__ = ["WorklistService"]


class WorklistService:
    """Listing and transitions on behalf of a caller.

    Parameters
    ----------
    db, audit
        The application database and audit trail.
    """

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit
        self._worklist = Worklist(db)

    def list(self, query: WorklistQuery, *, caller: Actor) -> tuple[list[WorklistEntry], int]:
        """The page ``query`` asks for and the total count
        (:func:`~serving.worklist.listing.list_worklist`)."""
        with self._db.session() as session:
            entries, total = list_worklist(session, query, scope=caller.scope)
        self._audit.record(
            AuditEventCode.QUERY,
            actor=caller,
            action=AuditAction.EXECUTE,
            resource_type="worklist",
            detail={
                "filters": {
                    "status": [str(s) for s in query.statuses],
                    "modality": query.modality,
                    "hospital": query.hospital,
                    "date_from": query.date_from.isoformat() if query.date_from else None,
                    "date_to": query.date_to.isoformat() if query.date_to else None,
                    "search_text": query.q is not None,  # may name a patient: not recorded
                },
                "total": total,
                "returned": returned_studies(
                    self._audit, ((e.study_instance_uid, e.patient_id) for e in entries)
                ),
            },
        )
        return entries, total

    def claim(self, study_instance_uid: str, *, caller: Actor, version: int) -> ReadingState:
        """:meth:`Worklist.claim <serving.worklist.state.Worklist.claim>` for ``caller``."""
        return self._transition(study_instance_uid, "claim", caller, version)

    def release(
        self, study_instance_uid: str, *, caller: Actor, version: int, is_admin: bool = False
    ) -> ReadingState:
        """:meth:`Worklist.release <serving.worklist.state.Worklist.release>` for ``caller``."""
        return self._transition(study_instance_uid, "release", caller, version, is_admin=is_admin)

    def report(self, study_instance_uid: str, *, caller: Actor, version: int) -> ReadingState:
        """:meth:`Worklist.report <serving.worklist.state.Worklist.report>` for ``caller``."""
        return self._transition(study_instance_uid, "report", caller, version)

    def _transition(
        self, uid: str, name: str, caller: Actor, version: int, *, is_admin: bool = False
    ) -> ReadingState:
        require_study_in_scope(self._db, self._audit, uid, caller=caller)
        user = caller.name
        try:
            if name == "claim":
                state = self._worklist.claim(uid, user=user, version=version)
            elif name == "release":
                state = self._worklist.release(uid, user=user, version=version, is_admin=is_admin)
            else:
                state = self._worklist.report(uid, user=user, version=version)
        except WorklistError as exc:
            detail: dict[str, Any] = {"transition": name, "version": version}
            self._record(caller, uid, None, detail, exc)
            raise
        detail = {"transition": name, "status": state.status, "version": state.version}
        self._record(caller, uid, state.patient_id, detail, None)
        return state

    def _record(
        self,
        caller: Actor,
        uid: str,
        patient_id: str | None,
        detail: dict[str, Any],
        error: WorklistError | None,
    ) -> None:
        record_study(
            self._audit,
            caller,
            uid,
            AuditAction.UPDATE,
            patient_id=patient_id,
            detail=detail | ({"reason": str(error)} if error else {}),
            outcome=AuditOutcome.MINOR_FAILURE if error else AuditOutcome.SUCCESS,
        )
