"""The application database's snapshot and its restore.

SQLite: Python's online backup API (``sqlite3.Connection.backup``) copies a consistent
snapshot while other connections keep writing. PostgreSQL: ``pg_dump -Fc`` (custom format),
run inside a REPEATABLE READ transaction whose snapshot it shares (``pg_export_snapshot``,
``pg_dump --snapshot``), so the counts written into the manifest are those of the dump; the
password goes to ``pg_dump`` and ``pg_restore`` in ``PGPASSWORD``, never on the command line.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, make_url, text
from sqlalchemy.engine import URL

from core.backup.exceptions import BackupError
from core.db import Database, current_revision
from core.exceptions import DependencyMissingError

__all__ = ["DatabaseSnapshot", "restore_postgresql", "restore_sqlite", "snapshot_database"]

SQLITE_FILE = "database/core.db"
POSTGRESQL_FILE = "database/radcloud.dump"
POSTGRESQL_CLIENT_INSTALL = "apt-get install -y postgresql-client"
_TIMEOUT_S = 3600


@dataclass(frozen=True)
class DatabaseSnapshot:
    """What :func:`snapshot_database` wrote: the engine, the file, its migration head and
    counts (studies, worklist items, reports, audit records)."""

    engine: str
    file: str
    migration_head: str | None
    counts: dict[str, int]


_COUNTED = {
    "studies": "studies",
    "worklist_items": "worklist_items",
    "reports": "reports",
    "audit_events": "audit_events",
}


def _counts(connection: Connection) -> dict[str, int]:
    return {
        name: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
        for name, table in _COUNTED.items()
    }


def snapshot_database(db: Database, directory: Path) -> DatabaseSnapshot:
    """Write a consistent snapshot of ``db`` under ``directory`` (the backup being written).

    Raises
    ------
    BackupError
        ``pg_dump`` failed (its message is in the error).
    DependencyMissingError
        ``pg_dump`` is not installed.
    OSError
        Writing failed (ENOSPC is turned into :class:`BackupSpaceError` by the caller).
    """
    if db.is_sqlite:
        return _snapshot_sqlite(db, directory)
    return _snapshot_postgresql(db, directory)


def _snapshot_sqlite(db: Database, directory: Path) -> DatabaseSnapshot:
    source_path = db.engine.url.database
    if not source_path:
        raise BackupError(f"the SQLite URL {db.url} names no file")
    target = directory / SQLITE_FILE
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = sqlite3.connect(source_path, timeout=30)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # all pages in one step: one consistent snapshot
        finally:
            copy.close()
    finally:
        source.close()
    target.chmod(0o600)
    snapshot = Database(f"sqlite:///{target}")
    try:
        with snapshot.engine.connect() as connection:
            counts = _counts(connection)
        head = current_revision(snapshot)
    finally:
        snapshot.dispose()
    return DatabaseSnapshot("sqlite", SQLITE_FILE, head, counts)


def _client(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise DependencyMissingError(program, POSTGRESQL_CLIENT_INSTALL)
    return path


def _libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection arguments and environment for a PostgreSQL client program: the password in
    ``PGPASSWORD`` only."""
    args = ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432)]
    if url.username:
        args += ["--username", url.username]
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    if url.password is None:
        env.pop("PGPASSWORD")
    return args, env


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        tail = result.stderr.strip()[-2000:]
        raise BackupError(f"{what} exited {result.returncode}: {tail}")


def _snapshot_postgresql(db: Database, directory: Path) -> DatabaseSnapshot:
    url = make_url(db.url)
    pg_dump = _client("pg_dump")
    target = directory / POSTGRESQL_FILE
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    args, env = _libpq(url)
    with db.engine.connect() as plain:
        connection = plain.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            exported = str(connection.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            counts = _counts(connection)
            head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            argv = [
                pg_dump,
                "--format=custom",
                f"--snapshot={exported}",
                "--no-owner",
                "--file",
                str(target),
                *args,
                "--dbname",
                str(url.database),
            ]
            _run(argv, env, "pg_dump")
    target.chmod(0o600)
    return DatabaseSnapshot("postgresql", POSTGRESQL_FILE, head, counts)


def restore_sqlite(snapshot: Path, database_file: Path) -> None:
    """Put the snapshot in place of ``database_file`` (its ``-wal`` and ``-shm`` removed)."""
    for suffix in ("-wal", "-shm"):
        database_file.with_name(database_file.name + suffix).unlink(missing_ok=True)
    partial = database_file.with_name(database_file.name + ".restoring")
    shutil.copyfile(snapshot, partial)
    partial.chmod(0o600)
    partial.replace(database_file)


def restore_postgresql(snapshot: Path, db: Database) -> None:
    """``pg_restore`` the dump into ``db``'s database, replacing what it holds of the same
    objects (``--clean --if-exists``), in one transaction.

    Raises
    ------
    BackupError
        ``pg_restore`` failed.
    """
    url = make_url(db.url)
    args, env = _libpq(url)
    argv = [
        _client("pg_restore"),
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        *args,
        "--dbname",
        str(url.database),
        str(snapshot),
    ]
    _run(argv, env, "pg_restore")
