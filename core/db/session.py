"""Engines and sessions for the application database.

SQLite (the default) runs in WAL mode with foreign keys on, a busy timeout, and full sync.
Its driver's own transaction handling is replaced (SQLAlchemy's documented recipe) so that
:func:`write_transaction` and :meth:`Database.write_session` can take the write lock up front
with ``BEGIN IMMEDIATE``: writers that must serialise (the audit chain) never deadlock on a lock
upgrade, and a transaction that reads then writes is never refused its write. On PostgreSQL the same
function takes a transaction-scoped advisory lock. A SQLite database file is created 0600 in a
0700 directory (:mod:`core.files`), whichever process opens it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.files import private_directory, private_file
from core.secrets import load_secrets

__all__ = ["Database", "database_url", "take_write_lock", "write_transaction"]

_IMMEDIATE = "radcloud_immediate"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
            "synchronous=FULL",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_private(url: str) -> None:
    """Create a SQLite database file 0600 (its directory 0700) before SQLite does: SQLite
    would create it, and then its ``-wal`` and ``-shm`` files, with the umask's mode (0644).
    """
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        private_file(Path(database))


class Database:
    """The application database: one engine and a session factory.

    Parameters
    ----------
    url
        SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _create_private(url)
        connect_args: dict[str, Any] = {"timeout": 30} if self.is_sqlite else {}
        # a pooled PostgreSQL connection may have been dropped by the server (a restart, a
        # failover): checked before use; a SQLite file's cannot, so no query per checkout
        self.engine = create_engine(
            url, connect_args=connect_args, pool_pre_ping=not self.is_sqlite
        )
        self._immediate = self.engine
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            self._immediate = self.engine.execution_options(**{_IMMEDIATE: True})
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Open the database named by ``settings`` (creating ``RADCLOUD_HOME`` if needed); the
        managed PostgreSQL's (``postgresql_managed``) with its password from the secrets."""
        private_directory(settings.home)
        return cls(database_url(settings))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session for a transaction that reads, then writes what it read (committed on
        success, rolled back on error).

        On SQLite it takes the write lock at its start (``BEGIN IMMEDIATE``, waiting out the
        busy timeout for it). A plain transaction takes it at its first write instead, and in
        WAL mode that fails at once with "database is locked", the busy timeout never waited,
        when another writer committed after the transaction's first read (its snapshot is
        stale): what a burst of triage workers hit. On PostgreSQL, a plain session.
        """
        if not self.is_sqlite:
            with self.session() as session:
                yield session
            return
        with Session(self._immediate, expire_on_commit=False) as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()


def database_url(settings: Settings) -> str:
    """The application database's SQLAlchemy URL, with the managed PostgreSQL's password (a
    secret, not a setting) where radcloud runs that server."""
    if not settings.postgresql_managed or settings.database_url:
        return settings.sqlalchemy_url
    password = load_secrets(settings).database_password
    return (
        make_url(settings.sqlalchemy_url)
        .set(password=password)
        .render_as_string(hide_password=False)
    )


@contextmanager
def write_transaction(db: Database, lock_key: int) -> Iterator[Session]:
    """A transaction that holds an exclusive write lock named ``lock_key`` until it ends.

    Parameters
    ----------
    db
        The database.
    lock_key
        Identifies the lock on PostgreSQL (``pg_advisory_xact_lock``); SQLite has one
        database-wide write lock.
    """
    with db.write_session() as session:
        take_write_lock(db, session, lock_key)
        yield session


def take_write_lock(db: Database, session: Session, lock_key: int) -> None:
    """In a session of :meth:`Database.write_session`, take :func:`write_transaction`'s lock
    now rather than at the start: on PostgreSQL the advisory lock ``lock_key``; on SQLite
    nothing more (the session took the database's write lock with its first statement).

    A transaction that makes its change first and appends under the lock at its end (the audit
    trail's ``audited``) takes it here: taken at the start, a record written on another
    connection inside the block (a study claim's audit record during a quarantine release)
    waited for a lock its own thread held, for ever, where SQLite (whose ``BEGIN IMMEDIATE``
    is sent with the first statement) went through."""
    if not db.is_sqlite:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
