"""The reading-status state machine of worklist items: claim, release, report.

``unread → in_progress`` (claim; records who and when), ``in_progress → unread`` (release, by
the claimer or an admin), ``in_progress → reported`` (by the claimer, and only with a signed
report: the transaction that reports must hold the study's ``reports`` row, which signing
writes in it, :mod:`serving.reading.signing`; a bare report is a conflict). Every transition names
the row ``version`` the client saw; the row's ``version`` column is SQLAlchemy's optimistic lock
(``version_id_col``), so a transition based on a stale view (another claim, a new AI result)
fails with :class:`~serving.exceptions.WorklistConflictError` and changes nothing. Transitions
run in :func:`core.db.write_transaction`, so two radiologists claiming one study are
serialised: exactly one wins, the other learns who holds it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from core.db import Database, write_transaction
from core.db.models import ReadingStatus, Report, Study, WorklistItem, utcnow
from serving._rows import copy_row
from serving.exceptions import NotClaimantError, StudyNotOnWorklistError, WorklistConflictError

__all__ = ["ReadingState", "Worklist"]

_LOCK_KEY = 0x5244574C  # "RDWL": PostgreSQL advisory lock serialising worklist transitions


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
            As for :meth:`release`; also :class:`WorklistConflictError` when the study has no
            signed report once ``also`` has run.
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
                before = (item.status, item.claimed_by)  # what a refusal reports: it rolls back
                now = utcnow()
                _apply(
                    uid, item, transition, user=user, version=version, is_admin=is_admin, now=now
                )
                if also is not None:
                    also(session, study)
                if transition is _Transition.REPORT and not _signed(session, study):
                    raise WorklistConflictError(
                        uid,
                        "the study has no signed report: a study is reported by signing its "
                        f"report (POST /api/studies/{uid}/sign)",
                        status=before[0],
                        claimed_by=before[1],
                        version=item.version,
                    )
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


def _signed(session: Session, study: Study) -> bool:
    """Whether the study has a signed report (in this transaction: signing adds it here)."""
    return session.scalar(select(Report.id).where(Report.study_id == study.id).limit(1)) is not None


def _state(uid: str, item: WorklistItem, study: Study) -> ReadingState:
    return copy_row(ReadingState, item, study, study_instance_uid=uid)
