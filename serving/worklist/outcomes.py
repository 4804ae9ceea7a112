"""What the triage pipeline calls: a study onto the worklist, and its AI outcome recorded.

Both run in the caller's transaction (the triage's result transaction), so the worklist never
shows an AI outcome that was not recorded.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ReadingStatus, Study, WorklistItem
from serving.worklist.policy import AiStatus, PriorityClass, WorklistPolicy, classify

__all__ = ["ensure_worklist_item", "record_ai_outcome"]


def _ready_time(study: Study) -> dt.datetime:
    return study.ready_at or study.last_received_at


def _item_of(session: Session, study: Study) -> WorklistItem | None:
    return session.scalar(select(WorklistItem).where(WorklistItem.study_id == study.id))


def ensure_worklist_item(session: Session, study: Study, policy: WorklistPolicy) -> WorklistItem:
    """The study's worklist item, created as routine with AI pending if it has none.

    Idempotent: an existing item is returned unchanged. Call it in the caller's transaction when
    a study becomes ready, before its models run.

    Parameters
    ----------
    session
        The caller's session (its transaction commits the item).
    study
        A ready study (flushed: it has an id).
    policy
        Gives the routine maximum wait, hence ``due_at``.
    """
    item = _item_of(session, study)
    if item is None:
        item = WorklistItem(
            study_id=study.id,
            status=ReadingStatus.UNREAD,
            priority_class=PriorityClass.ROUTINE.value,
            ai_status=AiStatus.PENDING.value,
            due_at=_ready_time(study) + policy.max_wait(PriorityClass.ROUTINE),
        )
        session.add(item)
        session.flush()
    return item


def record_ai_outcome(
    session: Session,
    study: Study,
    *,
    score: float | None,
    critical: bool,
    failed: bool,
    policy: WorklistPolicy,
    threshold: float | None = None,
    calibrated: bool | None = None,
) -> WorklistItem:
    """Set the study's priority class, AI score, AI status and due time from its AI outcome.

    Creates the item if needed; never changes the reading status (a reported study stays
    reported). Pass the study's combined outcome over the models that apply to it (highest
    score, critical if any model says so, failed only when none succeeded): the class is
    recomputed from it, so a reprocessed study may move down as well as up.

    Parameters
    ----------
    session
        The caller's session.
    study
        The study (flushed).
    score
        The triage score, or ``None`` when there is none.
    critical
        The model's critical flag at its operating threshold.
    failed
        The AI could not process the study: it is read unaided, as routine.
    policy
        The worklist policy, with the model's threshold (:meth:`WorklistPolicy.for_threshold`).
    threshold, calibrated
        The lead model's operating threshold and whether ``score`` is a calibrated probability:
        shown beside the score, so that a reader sees it relative to the model's threshold.
    """
    item = ensure_worklist_item(session, study, policy)
    priority_class = classify(score, critical=critical, failed=failed, policy=policy)
    item.priority_class = priority_class.value
    item.ai_score = None if failed else score
    item.ai_threshold = None if failed else threshold
    item.ai_calibrated = None if failed else calibrated
    item.ai_status = (AiStatus.FAILED if failed else AiStatus.SUCCEEDED).value
    item.due_at = _ready_time(study) + policy.max_wait(priority_class)
    session.flush()
    return item
