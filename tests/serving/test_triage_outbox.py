"""Serving's start releases study events held by the triage workers of a serving that stopped."""

from __future__ import annotations

import datetime as dt

from core.db import Database, upgrade
from core.db.models import OutboxEvent, utcnow
from serving.triage import release_claims


def test_start_releases_leases_and_backoffs_of_pending_study_events(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    later = utcnow() + dt.timedelta(minutes=5)
    rows = {
        "leased": OutboxEvent(topic="study.ready", key="1.1", payload={}, available_at=later),
        "backing off": OutboxEvent(
            topic="study.updated", key="1.2", payload={}, available_at=later, attempts=3
        ),
        "due": OutboxEvent(topic="study.ready", key="1.3", payload={}),
        "done": OutboxEvent(
            topic="study.ready", key="1.4", payload={}, available_at=later, processed_at=utcnow()
        ),
        "notification": OutboxEvent(
            topic="notification.critical", key="1.5", payload={}, available_at=later
        ),
    }
    with db.session() as session:
        session.add_all(rows.values())
        session.flush()
        ids = {name: row.id for name, row in rows.items()}

    assert release_claims(db) == 2
    with db.session() as session:
        due = {name: session.get(OutboxEvent, i).available_at for name, i in ids.items()}
    assert due["leased"] is None and due["backing off"] is None and due["due"] is None
    assert due["done"] is not None  # processed events are not touched
    assert due["notification"] is not None  # the notifier's own schedule is not triage's
    assert release_claims(db) == 0
    db.dispose()
