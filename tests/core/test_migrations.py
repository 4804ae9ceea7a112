"""Schema migrations build the models' schema from an empty database, on SQLite and on
PostgreSQL (``database_url``: both engines, real servers)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from core.db import Database, current_revision, head_revision, upgrade
from core.db.models import Base

TABLES = {
    "api_keys",
    "audit_events",
    "audit_head",
    "hospitals",
    "inference_results",
    "labels",
    "outbox_events",
    "senders",
    "studies",
    "user_hospitals",
    "users",
    "worklist_items",
}


def test_upgrade_from_empty_matches_the_models(database_url: str) -> None:
    db = Database(database_url)
    assert current_revision(db) is None
    upgrade(db)
    assert current_revision(db) == head_revision()
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_keeps_data(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO hospitals (name, created_at) VALUES ('A', '2026-01-01')"
        )
    upgrade(db)
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT name FROM hospitals").scalars().all() == ["A"]


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
