"""A transaction that reads, then writes (:meth:`core.db.Database.write_session`) is never refused
its write when another writer commits between its read and its write: on SQLite in WAL mode a
plain transaction is ("database is locked", at once: the busy timeout is not waited), which is
what a burst of triage workers hit; on PostgreSQL both commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.db import Database, upgrade
from core.db.models import ChangeCursor


def _positions(db: Database) -> dict[str, int]:
    with db.session() as session:
        return {c.name: c.position for c in session.scalars(select(ChangeCursor))}


def _read_then_write(
    db: Database, begin: Callable[[], AbstractContextManager[Session]]
) -> threading.Thread:
    """In a transaction of ``begin``: read, let another writer try to commit (a thread, given
    up to a second), then write. Returns the other writer's thread."""

    def other() -> None:
        with db.session() as session:
            session.add(ChangeCursor(name="other", position=2))

    with begin() as session:
        session.get(ChangeCursor, "mine")  # the first read: the snapshot is taken here
        writer = threading.Thread(target=other)
        writer.start()
        writer.join(timeout=1.0)
        session.add(ChangeCursor(name="mine", position=1))
    return writer


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()


def test_a_read_then_write_transaction_commits_beside_another_writer(db: Database) -> None:
    writer = _read_then_write(db, db.write_session)
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert _positions(db) == {"mine": 1, "other": 2}


def test_on_sqlite_a_plain_transaction_is_refused_its_write_when_another_committed(
    tmp_path: Path,
) -> None:
    """Why :meth:`Database.write_session` exists: the failure it prevents, on SQLite itself."""
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    upgrade(db)
    with pytest.raises(OperationalError, match="database is locked"):
        _read_then_write(db, db.session)
    assert _positions(db) == {"other": 2}
    db.dispose()
