"""The triage pipeline's side of the outbox: leasing study events, retries, stale leases.

Serving is the only consumer of ``study.ready``, ``study.updated``, ``study.reprocess`` and
``study.catch_up`` (:mod:`core.events`; one consumer per database); catch-up events wait while
a live one is due. A worker claims the oldest due event by moving
its ``available_at`` a lease ahead, so a second worker leaves it alone; an event whose
processing failed for a platform reason is due again after an exponential back-off with jitter
(at most 5 minutes).
"""

from __future__ import annotations

import datetime as dt
import logging
import random

from sqlalchemy import case, or_, select

from core.db import Database
from core.db.models import OutboxEvent, utcnow
from core.events import StudyEventType

__all__ = ["CATCH_UP", "LEASE", "TOPICS", "claim_next", "release_claims", "retry_later"]

logger = logging.getLogger(__name__)

TOPICS = tuple(topic.value for topic in StudyEventType)
CATCH_UP = StudyEventType.CATCH_UP.value
LEASE = dt.timedelta(minutes=5)


def release_claims(db: Database) -> int:
    """Make every pending study event due now; return how many were held.

    Serving calls this as it starts, before any triage worker runs: serving is the outbox's only
    consumer (one per database), so a lease still in the future belongs to a worker of a serving
    that has stopped (killed mid-event, or claiming while it shut down) and would otherwise keep
    its study from triage for up to 5 minutes. Events waiting out a retry back-off are retried
    at once too: whatever was down may be back.
    """
    with db.session() as session:
        released = (
            session.query(OutboxEvent)
            .filter(
                OutboxEvent.topic.in_(TOPICS),
                OutboxEvent.processed_at.is_(None),
                OutboxEvent.available_at > utcnow(),
            )
            .update({OutboxEvent.available_at: None}, synchronize_session=False)
        )
    if released:
        logger.info("%d study event(s) held by a stopped triage worker are due again", released)
    return int(released)


def claim_next(db: Database, lease: dt.timedelta = LEASE) -> OutboxEvent | None:
    """Take the oldest due study event (``available_at`` moves ``lease`` ahead: a worker that
    dies holding it leaves it due again then; ``triage_lease_s``, by default :data:`LEASE`); a
    ``study.catch_up`` event only when no live one (ready, updated, reprocess) is due.

    Returns
    -------
    OutboxEvent or None
        The claimed event (detached from its session), or None when none is due or another
        worker claimed it first.
    """
    now = utcnow()
    with db.write_session() as session:
        event = session.scalars(
            select(OutboxEvent)
            .where(
                OutboxEvent.topic.in_(TOPICS),
                OutboxEvent.processed_at.is_(None),
                or_(OutboxEvent.available_at.is_(None), OutboxEvent.available_at <= now),
            )
            .order_by(case((OutboxEvent.topic == CATCH_UP, 1), else_=0), OutboxEvent.id)
            .limit(1)
        ).first()
        if event is None:
            return None
        claimed = (
            session.query(OutboxEvent)
            .filter(
                OutboxEvent.id == event.id,
                or_(OutboxEvent.available_at.is_(None), OutboxEvent.available_at <= now),
            )
            .update({OutboxEvent.available_at: now + lease}, synchronize_session=False)
        )
        if claimed != 1:
            return None
        session.expunge(event)
        return event


def retry_later(db: Database, event: OutboxEvent, error: str) -> None:
    """Count a failed attempt at ``event`` and make it due again after a back-off."""
    with db.write_session() as session:
        row = session.get(OutboxEvent, event.id)
        if row is None or row.processed_at is not None:
            return
        row.attempts += 1
        backoff = min(300.0, 2.0 ** min(row.attempts, 8)) * random.uniform(0.8, 1.2)  # noqa: S311
        row.available_at = utcnow() + dt.timedelta(seconds=backoff)
        row.last_error = error[:2000]
    logger.warning("study event %s (%s) will be retried: %s", event.id, event.key, error)
