"""An API key's last use is recorded without turning a request into a failed write: the read
that checks the key and the write of ``last_used_at`` are separate transactions (an upgraded
read fails at once on SQLite while another writer commits: "database is locked", which the
STOW-RS fuzz test met as HTTP 500), and the write happens at most once a minute per key."""

from __future__ import annotations

import threading

from sqlalchemy import select

from core.audit import AuditEventCode, AuditTrail
from core.db import Database, upgrade
from core.db.models import ApiKey, Role
from core.security import Accounts, Actor


def test_keys_authenticate_while_other_writers_commit(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    trail = AuditTrail(db, "k" * 32, "c" * 32)
    accounts = Accounts(db, trail)
    keys = [
        accounts.create_api_key(f"pacs-{n}", Role.PACS, hospital="H", actor=Actor.cli()).key
        for n in range(24)
    ]
    stop = threading.Event()
    failures: list[BaseException] = []

    def write_records() -> None:  # another process's steady writes (the audit trail)
        while not stop.is_set():
            trail.record(AuditEventCode.APPLICATION_ACTIVITY, user_name="writer")

    def authenticate(share: list[str]) -> None:
        try:
            for key in share:
                assert accounts.authenticate_api_key(key).name.startswith("pacs-")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            failures.append(exc)

    writer = threading.Thread(target=write_records)
    writer.start()
    try:
        readers = [threading.Thread(target=authenticate, args=(keys[n::4],)) for n in range(4)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout=120)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not failures, failures[:3]
    with db.session() as session:
        used = session.scalars(select(ApiKey.last_used_at)).all()
    assert len(used) == 24 and all(used)


def test_last_use_is_written_at_most_once_a_minute(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db)
    accounts = Accounts(db, AuditTrail(db, "k" * 32, "c" * 32))
    key = accounts.create_api_key("pacs", Role.PACS, hospital="H", actor=Actor.cli()).key
    accounts.authenticate_api_key(key)
    with db.session() as session:
        first = session.scalar(select(ApiKey.last_used_at))
    accounts.authenticate_api_key(key)
    with db.session() as session:
        assert session.scalar(select(ApiKey.last_used_at)) == first
