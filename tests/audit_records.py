"""Run the real ``radcloud`` command line in a scratch ``RADCLOUD_HOME`` and read what it
left in the audit trail."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import AuditEvent

__all__ = ["OS_USER", "assert_cli_actor", "audit_records", "radcloud"]

OS_USER = getpass.getuser()
"""Who the command line records as the actor of what it does."""


def radcloud(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``radcloud ARGS`` with ``RADCLOUD_HOME=home`` (and no other ``RADCLOUD_`` setting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCLOUD_")}
    env["RADCLOUD_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "radcloud", *args],
        check=False,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def audit_records(home: Path, after: int = 0) -> list[dict[str, Any]]:
    """The audit records of the radcloud in ``home`` past sequence number ``after``, oldest
    first, read from the database (reading them through the trail would itself be audited)."""
    db = Database.from_settings(load_settings(home=home))
    try:
        upgrade(db)
        with db.session() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq)
            )
            columns = AuditEvent.__table__.columns
            return [{column.name: getattr(row, column.name) for column in columns} for row in rows]
    finally:
        db.dispose()


def assert_cli_actor(record: dict[str, Any]) -> None:
    """``record`` names the OS user running the command, on this host, through the CLI."""
    assert record["user_name"] == OS_USER
    assert record["source_address"] == socket.gethostname()
    assert record["detail"]["via"] == "cli"
