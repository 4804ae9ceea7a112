"""The radiologists' worklist: priority policy, reading-status transitions, listing.

Roles: :mod:`~serving.worklist.policy` (priority classes, maximum waits, the sort order),
:mod:`~serving.worklist.outcomes` (what the triage pipeline calls), :mod:`~serving.worklist.state`
(the claim/release/report state machine), :mod:`~serving.worklist.listing` (the listing query).

Errors (:mod:`serving.exceptions`)::

    WorklistError (ServingError)
    ├── StudyNotOnWorklistError(study_instance_uid)      -> HTTP 404 (a NotFoundError)
    ├── WorklistConflictError(study_instance_uid, reason, status, claimed_by, version) -> 409
    └── NotClaimantError(study_instance_uid, user, claimed_by)                        -> 403
"""

from serving.exceptions import (
    NotClaimantError,
    StudyNotOnWorklistError,
    WorklistConflictError,
    WorklistError,
)
from serving.worklist.listing import WorklistEntry, WorklistQuery, list_worklist
from serving.worklist.outcomes import ensure_worklist_item, record_ai_outcome
from serving.worklist.policy import (
    AiStatus,
    PriorityClass,
    WorklistPolicy,
    classify,
    priority_key,
)
from serving.worklist.service import WorklistService
from serving.worklist.state import ReadingState, Worklist

__all__ = [
    "AiStatus",
    "NotClaimantError",
    "PriorityClass",
    "ReadingState",
    "StudyNotOnWorklistError",
    "Worklist",
    "WorklistConflictError",
    "WorklistEntry",
    "WorklistError",
    "WorklistPolicy",
    "WorklistQuery",
    "WorklistService",
    "classify",
    "ensure_worklist_item",
    "list_worklist",
    "priority_key",
    "record_ai_outcome",
]
