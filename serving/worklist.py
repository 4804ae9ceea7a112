"""The radiologists' worklist: priority policy, reading-status transitions, listing.

Priority rule
-------------
Each study gets a *priority class* from its AI outcome, and each class a maximum wait
(settings ``worklist_max_wait_<class>_min``):

============  ============================================================  ============
class         when                                                          maximum wait
============  ============================================================  ============
``critical``  the model flagged a critical finding (score ≥ its threshold)  30 min
``urgent``    score ≥ ``worklist_urgent_score_fraction`` x threshold          120 min
``routine``   everything else, including AI pending and AI failed           480 min
============  ============================================================  ============

A study is *due* at ``ready time + maximum wait of its class``. The worklist is ordered by due
time, earliest first (earliest-deadline-first), then by AI score (highest first; no score last),
then by ready time (oldest first). :func:`priority_key` is the one definition of that order; the
SQL ``ORDER BY`` of :func:`list_worklist` and the simulator in ``benchmarks/worklist.py`` use
it.

Why: strict "AI-flagged first" ordering reads flagged studies sooner but lets unflagged ones
starve whenever flags keep arriving (a published evaluation of AI-prioritised chest radiograph
reading cut the mean pneumothorax report time from 80 to 36 minutes but raised the worst case
from 890 to 1,293 minutes). Ordering by deadline keeps AI urgency (a critical study is due 450
minutes before a routine study that became ready at the same time, so it jumps the queue) while
a routine study can only be overtaken by studies that become due before it: once a study has
waited its class's maximum wait, nothing newer goes ahead of it. Its wait is thereby bounded by
its maximum wait whenever the readers keep up with the due studies, and it degrades gracefully
(like FIFO among overdue studies) when they do not. ``benchmarks/worklist.py`` measures it
against FIFO.

Reading status
--------------
``unread → in_progress`` (claim; records who and when), ``in_progress → unread`` (release, by
the claimer or an admin), ``in_progress → reported`` (by the claimer). Every transition names
the row ``version`` the client saw; the row's ``version`` column is SQLAlchemy's optimistic lock
(``version_id_col``), so a transition based on a stale view (another claim, a new AI result)
fails with :class:`WorklistConflictError` and changes nothing. Transitions run in
:func:`core.db.write_transaction`, so two radiologists claiming one study are serialised:
exactly one wins, the other learns who holds it.

Errors::

    WorklistError (RadcloudError)
    ├── StudyNotOnWorklistError(study_instance_uid)      -> HTTP 404 (a NotFoundError)
    ├── WorklistConflictError(study_instance_uid, reason, status, claimed_by, version) -> 409
    └── NotClaimantError(study_instance_uid, user, claimed_by)                        -> 403
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from core.db import Database, write_transaction
from core.db.models import Hospital, ReadingStatus, Study, WorklistItem, utcnow
from core.exceptions import ConfigError, NotFoundError, RadcloudError

if TYPE_CHECKING:
    from core.config import Settings

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
    "classify",
    "ensure_worklist_item",
    "list_worklist",
    "priority_key",
    "record_ai_outcome",
]

_LOCK_KEY = 0x5244574C  # "RDWL": PostgreSQL advisory lock serialising worklist transitions
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


class PriorityClass(StrEnum):
    """How soon a study must be read (see the module docstring)."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"


class AiStatus(StrEnum):
    """Whether the AI outcome is known: pending, succeeded, or failed (read unaided)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# -- errors ------------------------------------------------------------------------------------


class WorklistError(RadcloudError):
    """Root of the worklist's errors."""


class StudyNotOnWorklistError(WorklistError, NotFoundError):
    """No worklist item exists for the study (unknown, or not ready yet)."""

    def __init__(self, study_instance_uid: str) -> None:
        self.study_instance_uid = study_instance_uid
        NotFoundError.__init__(self, "worklist study", study_instance_uid)


class WorklistConflictError(WorklistError):
    """The transition does not apply to the item as it is now (stale version, wrong status)."""

    def __init__(
        self,
        study_instance_uid: str,
        reason: str,
        *,
        status: ReadingStatus,
        claimed_by: str | None,
        version: int,
    ) -> None:
        self.study_instance_uid, self.reason = study_instance_uid, reason
        self.status, self.claimed_by, self.version = status, claimed_by, version
        held = f"; claimed by {claimed_by}" if claimed_by else ""
        super().__init__(
            f'study "{study_instance_uid}": {reason} (status {status}, version {version}{held})'
        )


class NotClaimantError(WorklistError):
    """Only the radiologist who claimed the study (or an admin, for release) may do this."""

    def __init__(self, study_instance_uid: str, user: str, claimed_by: str | None) -> None:
        self.study_instance_uid, self.user, self.claimed_by = study_instance_uid, user, claimed_by
        super().__init__(
            f'study "{study_instance_uid}" is claimed by {claimed_by}, not by {user}: '
            "only the claimant may do this"
        )


# -- policy and order --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistPolicy:
    """Maximum waits per class and the urgent score band.

    Parameters
    ----------
    max_wait_critical, max_wait_urgent, max_wait_routine
        Maximum wait of each class; critical ≤ urgent ≤ routine.
    urgent_score_fraction
        A score at or above this fraction of ``threshold`` (but not critical) is urgent.
    threshold
        The model's operating threshold; use :meth:`for_threshold` with the model card's.
    """

    max_wait_critical: dt.timedelta = dt.timedelta(minutes=30)
    max_wait_urgent: dt.timedelta = dt.timedelta(minutes=120)
    max_wait_routine: dt.timedelta = dt.timedelta(minutes=480)
    urgent_score_fraction: float = 0.6
    threshold: float = 0.5

    def __post_init__(self) -> None:
        waits = (self.max_wait_critical, self.max_wait_urgent, self.max_wait_routine)
        if min(waits) <= dt.timedelta(0) or list(waits) != sorted(waits):
            raise ConfigError(
                "RADCLOUD_WORKLIST_MAX_WAIT_*_MIN",
                [int(w.total_seconds() // 60) for w in waits],
                "positive minutes with critical ≤ urgent ≤ routine",
            )
        if not 0 < self.urgent_score_fraction <= 1:
            raise ConfigError(
                "RADCLOUD_WORKLIST_URGENT_SCORE_FRACTION",
                self.urgent_score_fraction,
                "a fraction in (0, 1]",
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> WorklistPolicy:
        """The policy configured by the ``worklist_*`` settings."""
        return cls(
            max_wait_critical=dt.timedelta(minutes=settings.worklist_max_wait_critical_min),
            max_wait_urgent=dt.timedelta(minutes=settings.worklist_max_wait_urgent_min),
            max_wait_routine=dt.timedelta(minutes=settings.worklist_max_wait_routine_min),
            urgent_score_fraction=settings.worklist_urgent_score_fraction,
            threshold=settings.worklist_default_threshold,
        )

    def for_threshold(self, threshold: float) -> WorklistPolicy:
        """This policy for a model whose operating threshold is ``threshold``."""
        return replace(self, threshold=threshold)

    @property
    def urgent_min_score(self) -> float:
        """The lowest score that makes a study urgent."""
        return self.urgent_score_fraction * self.threshold

    def max_wait(self, priority_class: PriorityClass | str) -> dt.timedelta:
        """The maximum wait of ``priority_class``."""
        return {
            PriorityClass.CRITICAL: self.max_wait_critical,
            PriorityClass.URGENT: self.max_wait_urgent,
            PriorityClass.ROUTINE: self.max_wait_routine,
        }[PriorityClass(priority_class)]

    def max_wait_minutes(self, priority_class: PriorityClass | str) -> float:
        """The maximum wait of ``priority_class`` in minutes."""
        return self.max_wait(priority_class).total_seconds() / 60


def classify(
    score: float | None, *, critical: bool, failed: bool, policy: WorklistPolicy
) -> PriorityClass:
    """The priority class of an AI outcome (a failed or missing outcome is routine)."""
    if failed:
        return PriorityClass.ROUTINE
    if critical:
        return PriorityClass.CRITICAL
    if score is not None and score >= policy.urgent_min_score:
        return PriorityClass.URGENT
    return PriorityClass.ROUTINE


_T = TypeVar("_T", dt.datetime, float)


def priority_key(due_at: _T, ai_score: float | None, ready_at: _T) -> tuple[_T, int, float, _T]:
    """Sort key of the worklist: earliest due first, then highest AI score, then oldest.

    Times are datetimes (the database) or minutes (the simulator); a study without a score
    sorts after those with one at the same due time.
    """
    return (due_at, int(ai_score is None), -(ai_score or 0.0), ready_at)


def _order_by() -> tuple[ColumnElement[Any], ...]:
    """:func:`priority_key` in SQL (plus the row id, so pages are stable)."""
    return (
        WorklistItem.due_at.asc().nulls_last(),
        WorklistItem.ai_score.desc().nulls_last(),
        Study.ready_at.asc().nulls_last(),
        WorklistItem.id.asc(),
    )


# -- what the triage pipeline calls -------------------------------------------------------------


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
    """
    item = ensure_worklist_item(session, study, policy)
    priority_class = classify(score, critical=critical, failed=failed, policy=policy)
    item.priority_class = priority_class.value
    item.ai_score = None if failed else score
    item.ai_status = (AiStatus.FAILED if failed else AiStatus.SUCCEEDED).value
    item.due_at = _ready_time(study) + policy.max_wait(priority_class)
    session.flush()
    return item


# -- reading status transitions -----------------------------------------------------------------


@dataclass(frozen=True)
class ReadingState:
    """A worklist item's reading state after a transition."""

    study_instance_uid: str
    patient_id: str | None
    status: ReadingStatus
    claimed_by: str | None
    claimed_at: dt.datetime | None
    reported_at: dt.datetime | None
    version: int


class _Transition(StrEnum):
    CLAIM = "claim"
    RELEASE = "release"
    REPORT = "report"


def _conflict(uid: str, item: WorklistItem, reason: str) -> WorklistConflictError:
    return WorklistConflictError(
        uid, reason, status=item.status, claimed_by=item.claimed_by, version=item.version
    )


def _apply(
    uid: str,
    item: WorklistItem,
    transition: _Transition,
    *,
    user: str,
    version: int,
    is_admin: bool,
    now: dt.datetime,
) -> None:
    """Check and apply ``transition`` to ``item`` in memory."""
    if item.version != version:
        raise _conflict(uid, item, f"version {version} is stale: the item changed since")
    if transition is _Transition.CLAIM:
        if item.status is not ReadingStatus.UNREAD:
            raise _conflict(uid, item, f"cannot claim a study that is {item.status}")
        item.status, item.claimed_by, item.claimed_at = ReadingStatus.IN_PROGRESS, user, now
        return
    if item.status is not ReadingStatus.IN_PROGRESS:
        raise _conflict(uid, item, f"cannot {transition} a study that is {item.status}")
    if item.claimed_by != user and not (transition is _Transition.RELEASE and is_admin):
        raise NotClaimantError(uid, user, item.claimed_by)
    if transition is _Transition.RELEASE:
        item.status, item.claimed_by, item.claimed_at = ReadingStatus.UNREAD, None, None
    else:
        item.status, item.reported_at = ReadingStatus.REPORTED, now


class Worklist:
    """Reading-status transitions, each in its own serialised write transaction.

    Parameters
    ----------
    db
        The application database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, study_instance_uid: str, *, user: str, version: int) -> ReadingState:
        """``unread → in_progress`` for ``user``.

        Raises
        ------
        StudyNotOnWorklistError
            The study has no worklist item.
        WorklistConflictError
            ``version`` is stale, or the study is not unread (``claimed_by`` says who has it).
        """
        return self._transition(study_instance_uid, _Transition.CLAIM, user, version)

    def release(
        self, study_instance_uid: str, *, user: str, version: int, is_admin: bool = False
    ) -> ReadingState:
        """``in_progress → unread``, by the claimant or an admin.

        Raises
        ------
        StudyNotOnWorklistError, WorklistConflictError
            As for :meth:`claim`.
        NotClaimantError
            ``user`` is neither the claimant nor an admin.
        """
        return self._transition(
            study_instance_uid, _Transition.RELEASE, user, version, is_admin=is_admin
        )

    def report(
        self,
        study_instance_uid: str,
        *,
        user: str,
        version: int,
        also: Callable[[Session, Study], None] | None = None,
    ) -> ReadingState:
        """``in_progress → reported``, by the claimant; ``also`` writes what goes with it
        (the signed report, its labels) in the same transaction.

        Raises
        ------
        StudyNotOnWorklistError, WorklistConflictError, NotClaimantError
            As for :meth:`release`.
        """
        return self._transition(study_instance_uid, _Transition.REPORT, user, version, also=also)

    def state(self, study_instance_uid: str) -> ReadingState:
        """The study's reading state now.

        Raises
        ------
        StudyNotOnWorklistError
            The study has no worklist item.
        """
        with self._db.session() as session:
            item, study = self._load(session, study_instance_uid)
            return _state(study_instance_uid, item, study)

    def _transition(
        self,
        uid: str,
        transition: _Transition,
        user: str,
        version: int,
        *,
        is_admin: bool = False,
        also: Callable[[Session, Study], None] | None = None,
    ) -> ReadingState:
        try:
            with write_transaction(self._db, _LOCK_KEY) as session:
                item, study = self._load(session, uid)
                now = utcnow()
                _apply(
                    uid, item, transition, user=user, version=version, is_admin=is_admin, now=now
                )
                if also is not None:
                    also(session, study)
                session.flush()  # UPDATE ... WHERE version = <seen>: StaleDataError if it moved
                return _state(uid, item, study)
        except StaleDataError as exc:  # a writer outside this lock (the pipeline) changed it
            with self._db.session() as session:
                current, _ = self._load(session, uid)
                raise _conflict(uid, current, "the item changed meanwhile") from exc

    @staticmethod
    def _load(session: Session, uid: str) -> tuple[WorklistItem, Study]:
        row = session.execute(
            select(WorklistItem, Study)
            .join(Study, Study.id == WorklistItem.study_id)
            .where(Study.study_instance_uid == uid)
        ).one_or_none()
        if row is None:
            raise StudyNotOnWorklistError(uid)
        item, study = row
        return item, study


def _state(uid: str, item: WorklistItem, study: Study) -> ReadingState:
    return ReadingState(
        study_instance_uid=uid,
        patient_id=study.patient_id,
        status=item.status,
        claimed_by=item.claimed_by,
        claimed_at=item.claimed_at,
        reported_at=item.reported_at,
        version=item.version,
    )


# -- listing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistQuery:
    """Filters and page of a worklist listing (all optional).

    ``statuses`` defaults to unread and in progress; ``date_from``/``date_to`` (inclusive) match
    the study date, or the ready date for studies without one; ``q`` matches every word in the
    patient name or ID, accession number or study description (case-insensitive).
    """

    statuses: Sequence[ReadingStatus] = (ReadingStatus.UNREAD, ReadingStatus.IN_PROGRESS)
    modality: str | None = None
    hospital: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    q: str | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.modality is not None and not _MODALITY.match(self.modality.upper()):
            raise ValueError(f'modality "{self.modality}" is not a DICOM modality code')


@dataclass(frozen=True)
class WorklistEntry:
    """One row of the worklist: the study, its AI triage and its reading state."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_description: str | None
    study_date: str | None
    modalities: str | None
    hospital: str | None
    ready_at: dt.datetime | None
    waiting_minutes: float | None
    due_at: dt.datetime | None
    priority_class: str
    ai_score: float | None
    ai_status: str
    critical: bool
    status: ReadingStatus
    claimed_by: str | None
    version: int


def _like(value: str) -> str:
    escaped = value.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


def _filters(query: WorklistQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [WorklistItem.status.in_(list(query.statuses))]
    if query.modality:
        code = query.modality.upper()
        # ``studies.modalities`` is a backslash-separated value list, e.g. "CT\SR".
        conditions.append(
            or_(
                Study.modalities == code,
                Study.modalities.like(f"{code}\\%", escape="/"),
                Study.modalities.like(f"%\\{code}", escape="/"),
                Study.modalities.like(f"%\\{code}\\%", escape="/"),
            )
        )
    if query.hospital:
        conditions.append(Hospital.name == query.hospital)
    if query.date_from or query.date_to:
        low, high = query.date_from or dt.date.min, query.date_to or dt.date.max
        start = dt.datetime.combine(low, dt.time.min, dt.UTC)
        end = dt.datetime.combine(high, dt.time.max, dt.UTC)
        conditions.append(
            or_(
                Study.study_date.between(low.strftime("%Y%m%d"), high.strftime("%Y%m%d")),
                and_(Study.study_date.is_(None), Study.ready_at.between(start, end)),
            )
        )
    for word in (query.q or "").split():
        pattern = _like(word)
        conditions.append(
            or_(
                *(
                    column.ilike(pattern, escape="/")
                    for column in (
                        Study.patient_name,
                        Study.patient_id,
                        Study.accession_number,
                        Study.study_description,
                    )
                )
            )
        )
    return conditions


def _base(query: WorklistQuery) -> Select[WorklistItem, Study, str]:
    return (
        select(WorklistItem, Study, Hospital.name)
        .join(Study, Study.id == WorklistItem.study_id)
        .outerjoin(Hospital, Hospital.id == Study.hospital_id)
        .where(*_filters(query))
    )


def _waiting_minutes(item: WorklistItem, study: Study, now: dt.datetime) -> float | None:
    ready = study.ready_at
    if ready is None:
        return None
    until = now if item.status is ReadingStatus.UNREAD else (item.claimed_at or now)
    return round(max((until - ready).total_seconds(), 0.0) / 60, 1)


def list_worklist(
    session: Session, query: WorklistQuery, now: dt.datetime | None = None
) -> tuple[list[WorklistEntry], int]:
    """The page of the worklist ``query`` asks for, in priority order, and the total count.

    ``waiting_minutes`` is the time since the study became ready (until it was claimed, for
    claimed and reported studies).
    """
    now = now or utcnow()
    total = session.scalar(select(func.count()).select_from(_base(query).subquery())) or 0
    rows = session.execute(
        _base(query).order_by(*_order_by()).limit(query.limit).offset(query.offset)
    )
    entries = [
        WorklistEntry(
            study_instance_uid=study.study_instance_uid,
            patient_id=study.patient_id,
            patient_name=study.patient_name,
            accession_number=study.accession_number,
            study_description=study.study_description,
            study_date=study.study_date,
            modalities=study.modalities,
            hospital=hospital,
            ready_at=study.ready_at,
            waiting_minutes=_waiting_minutes(item, study, now),
            due_at=item.due_at,
            priority_class=item.priority_class,
            ai_score=item.ai_score,
            ai_status=item.ai_status,
            critical=item.priority_class == PriorityClass.CRITICAL,
            status=item.status,
            claimed_by=item.claimed_by,
            version=item.version,
        )
        for item, study, hospital in rows
    ]
    return entries, total
