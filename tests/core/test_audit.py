"""The audit trail: records, pseudonymised patient IDs, and a keyed chain that shows tampering
(an edited, deleted or inserted row, a chain rewritten by the unkeyed rule), with a chain
written before it was keyed sealed by a checkpoint."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from core._audit_chain import GENESIS_HASH, legacy_hash, record_mac
from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail, _as_dict
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Role, User
from core.exceptions import NotFoundError
from core.secrets import load_secrets
from core.security import Actor, Door
from tests.audit_records import OS_USER, assert_cli_actor, audit_records, radcloud

ACTOR = Actor("auditor", Door.WORKER)
CHAIN_KEY = "c" * 48


@pytest.fixture
def trail(database_url: str) -> AuditTrail:
    """Six records, on SQLite and on PostgreSQL."""
    db = Database(database_url)
    upgrade(db)
    audit = AuditTrail(db, "k" * 48, CHAIN_KEY)
    for index in range(6):
        audit.record(
            AuditEventCode.INSTANCES_ACCESSED,
            action="R",
            user_name="dr-house",
            role="radiologist",
            source_address="127.0.0.1",
            resource_type="study",
            resource_id=f"1.2.826.0.1.{index}",
            patient_id="PAT-0001",
            detail={"instances": index},
        )
    return audit


def _sql(trail: AuditTrail, statement: str, **params: object) -> None:
    with trail._db.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_intact_chain_verifies(trail: AuditTrail) -> None:
    report = trail.verify(actor=ACTOR)
    assert report.ok, report.problems
    assert report.records == 6


def test_patient_id_is_stored_only_as_keyed_hash(trail: AuditTrail) -> None:
    with trail._db.engine.connect() as connection:
        dump = "\n".join(str(row) for row in connection.execute(text("SELECT * FROM audit_events")))
    assert "PAT-0001" not in dump
    record = trail.search(actor=ACTOR, resource_id="1.2.826.0.1.3")[0]
    assert record["patient_id_hash"] == trail.patient_id_hash("PAT-0001")
    assert record["patient_id_hash"] != AuditTrail(
        trail._db, "other key" * 5, CHAIN_KEY
    ).patient_id_hash("PAT-0001")
    assert record["event_name"] == "DICOM Instances Accessed"


def test_edited_record_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "UPDATE audit_events SET user_name = 'someone-else' WHERE seq = 3")
    report = trail.verify(actor=ACTOR)
    assert not report.ok
    assert "record 3 was modified" in report.problems[0]


def test_deleted_record_in_the_middle_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "DELETE FROM audit_events WHERE seq = 2")
    problems = trail.verify(actor=ACTOR).problems
    assert any("records 2..2 are missing" in p for p in problems)


def test_deleted_newest_record_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "DELETE FROM audit_events WHERE seq = 6")
    problems = trail.verify(actor=ACTOR).problems
    assert any("head names record 6" in p for p in problems)


def _rows(trail: AuditTrail) -> list[dict[str, Any]]:
    """Every record as stored, oldest first (read without writing an audit record)."""
    return [_as_dict(event) for event in trail._iter_events()]


def test_rehashed_forgery_still_breaks_the_chain(trail: AuditTrail) -> None:
    """Editing a record and recomputing its hash does not help: without the key no MAC fits."""
    forged = next(r for r in _rows(trail) if r["seq"] == 4) | {"outcome": 8}
    _sql(
        trail,
        "UPDATE audit_events SET outcome = 8, hash = :hash WHERE seq = 4",
        hash=legacy_hash(forged),
    )
    report = trail.verify(actor=ACTOR)
    assert report.first_bad is not None and report.first_bad.seq == 4
    assert "record 4 was modified" in report.first_bad.reason
    assert "MAC does not match" in report.first_bad.reason


def test_a_chain_rewritten_by_the_unkeyed_rule_does_not_verify(trail: AuditTrail) -> None:
    """Someone with the database but not the key rewrites every record and the head by SHA-256:
    consistent as a hash chain, but no record carries the key's MAC."""
    prev = GENESIS_HASH
    for row in _rows(trail):
        row |= {"prev_hash": prev, "user_name": "mallory"}
        prev = legacy_hash(row)
        _sql(
            trail,
            "UPDATE audit_events SET user_name = 'mallory', prev_hash = :prev, hash = :hash "
            "WHERE seq = :seq",
            prev=row["prev_hash"],
            hash=prev,
            seq=row["seq"],
        )
    _sql(trail, "UPDATE audit_head SET hash = :hash", hash=prev)
    report = trail.verify(actor=ACTOR)
    assert not report.ok
    assert "carry no MAC of the audit key" in " ".join(report.problems)


def test_an_inserted_record_is_detected(trail: AuditTrail) -> None:
    """A row appended by SQL, chained to the newest and with the head moved to it, has no MAC;
    with a MAC under another key it fails too."""
    newest = _rows(trail)[-1]
    for key, expected in ((None, "record 7 was modified"), (b"guessed", "record 7 was modified")):
        row = newest | {"seq": 7, "prev_hash": newest["hash"], "user_name": "ghost"}
        row["hash"] = legacy_hash(row) if key is None else record_mac(key, row)
        _sql(trail, "DELETE FROM audit_events WHERE seq = 7")
        _sql(
            trail,
            "INSERT INTO audit_events (seq, time, event_code, event_name, action, outcome, "
            "user_name, role, source_address, resource_type, resource_id, patient_id_hash, "
            "detail, prev_hash, hash) SELECT 7, time, event_code, event_name, action, outcome, "
            "'ghost', role, source_address, resource_type, resource_id, patient_id_hash, "
            "detail, :prev, :hash FROM audit_events WHERE seq = 6",
            prev=row["prev_hash"],
            hash=row["hash"],
        )
        _sql(trail, "UPDATE audit_head SET seq = 7, hash = :hash", hash=row["hash"])
        report = trail.check()
        assert report.first_bad is not None and report.first_bad.seq == 7, report.problems
        assert expected in report.first_bad.reason


def test_legacy_chain_is_sealed_by_a_keyed_checkpoint(tmp_path: Path) -> None:
    """Records written before the chain was keyed (plain SHA-256) still verify after a keyed
    checkpoint seals them; new records carry MACs; a legacy record edited later is found."""
    settings = load_settings(home=tmp_path)
    secrets = load_secrets(settings)
    db = Database.from_settings(settings)
    upgrade(db)
    old = AuditTrail(db, secrets.audit_hmac_key, secrets.audit_chain_key)
    for index in range(3):
        old.record(AuditEventCode.QUERY, user_name="before", detail={"i": index})
    prev = GENESIS_HASH  # rewrite them as the older radcloud wrote them: unkeyed
    for row in _rows(old):
        row["prev_hash"] = prev
        prev = legacy_hash(row)
        _sql(
            old,
            "UPDATE audit_events SET prev_hash = :prev, hash = :hash WHERE seq = :seq",
            prev=row["prev_hash"],
            hash=prev,
            seq=row["seq"],
        )
    _sql(old, "UPDATE audit_head SET hash = :hash", hash=prev)
    assert "never sealed" in " ".join(old.check().problems)

    trail = AuditTrail.from_secrets(db, secrets)
    trail.record(AuditEventCode.QUERY, user_name="after")
    rows = _rows(trail)
    checkpoint = rows[3]
    assert (checkpoint["seq"], checkpoint["resource_type"]) == (4, "audit_chain")
    assert checkpoint["detail"]["sealed_records"] == 3
    assert checkpoint["detail"]["sealed_head"] == prev == checkpoint["prev_hash"]
    key = secrets.audit_chain_key.encode()
    assert all(row["hash"] == record_mac(key, row) for row in rows[3:])
    assert AuditTrail.from_secrets(db, secrets).seal() is None  # once only
    report = trail.verify(actor=ACTOR)
    assert report.ok, report.problems
    assert report.records == 5

    _sql(trail, "UPDATE audit_events SET user_name = 'mallory' WHERE seq = 2")
    report = trail.verify(actor=ACTOR)
    assert report.first_bad is not None and report.first_bad.seq == 2
    assert "record 2 was modified" in report.first_bad.reason


def test_a_record_is_not_verified_under_another_chain_key(trail: AuditTrail) -> None:
    other = AuditTrail(trail._db, "k" * 48, "another chain key")
    report = other.check()
    assert report.first_bad is not None and report.first_bad.seq == 1


def test_concurrent_writers_keep_one_linear_chain(trail: AuditTrail) -> None:
    def write(worker: int) -> None:
        for index in range(15):
            trail.record(AuditEventCode.QUERY, user_name=f"w{worker}", detail={"i": index})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = trail.verify(actor=ACTOR)
    assert report.ok, report.problems
    assert report.records == 6 + 4 * 15


def test_export_writes_every_record_as_json_lines(trail: AuditTrail) -> None:
    trail.record(AuditEventCode.SECURITY_ALERT, outcome=AuditOutcome.MINOR_FAILURE)
    out = io.StringIO()
    assert trail.export(out, actor=ACTOR) == 7
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 8))
    assert lines[-1]["outcome"] == 4
    assert lines[1]["prev_hash"] == lines[0]["hash"]


def test_cli_verify_and_export_are_audited(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    db = Database.from_settings(settings)
    upgrade(db)
    AuditTrail.from_secrets(db, load_secrets(settings)).record(
        AuditEventCode.USER_AUTHENTICATION, user_name="alice"
    )

    verified = radcloud(tmp_path, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "1 records" in verified.stdout
    exported = radcloud(tmp_path, "audit", "export", "--out", str(tmp_path / "audit.jsonl"))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["user_name"] for line in lines] == ["alice", OS_USER]  # and the verification
    since = radcloud(tmp_path, "audit", "export", "--since", "2000-01-01T00:00:00")
    assert since.returncode == 0, since.stderr

    used = audit_records(tmp_path, after=1)
    assert [(r["event_code"], r["action"], r["outcome"]) for r in used] == [
        ("110101", "E", 0),
        ("110101", "R", 0),
        ("110101", "R", 0),
    ]
    for record in used:
        assert_cli_actor(record)
    assert used[0]["detail"] | {"via": None} == {"verified": True, "records": 1, "via": None}
    assert used[1]["detail"]["records"] == 2
    assert used[2]["detail"]["records"] == 3
    assert used[2]["detail"]["since"].startswith("2000-01-01T00:00:00")

    with db.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET user_name = 'mallory'"))
    broken = radcloud(tmp_path, "audit", "verify")
    assert broken.returncode == 1
    assert "record 1 was modified" in broken.stdout
    assert "NOT intact" in broken.stderr
    assert audit_records(tmp_path)[-1]["detail"]["verified"] is False


def test_audited_change_is_committed_with_its_record_or_not_at_all(trail: AuditTrail) -> None:
    def users() -> list[str]:
        with trail._db.session() as session:
            return list(session.scalars(select(User.name).order_by(User.name)))

    def newest() -> dict[str, Any]:
        return max(trail.search(actor=ACTOR, event_code="110113"), key=lambda r: r["seq"])

    create: dict[str, Any] = {"actor": ACTOR, "action": AuditAction.CREATE, "resource_type": "user"}
    with trail.audited(AuditEventCode.SECURITY_ALERT, resource_id="kept", **create) as change:
        change.session.add(User(name="kept", role=Role.ADMIN))
        change.detail["known once made"] = True
    assert users() == ["kept"]
    assert newest()["outcome"] == 0
    assert newest()["detail"] == {"known once made": True, "via": "worker"}

    with (
        pytest.raises(OSError, match="disk on fire"),
        trail.audited(AuditEventCode.SECURITY_ALERT, resource_id="lost", **create) as change,
    ):
        change.session.add(User(name="lost", role=Role.ADMIN))
        change.session.flush()
        raise OSError("disk on fire")
    assert users() == ["kept"]
    failed = newest()
    assert (failed["resource_id"], failed["outcome"]) == ("lost", 8)
    assert failed["detail"] == {"reason": "disk on fire", "via": "worker"}

    with (
        pytest.raises(NotFoundError),
        trail.audited(AuditEventCode.SECURITY_ALERT, resource_id="nobody", **create),
    ):
        raise NotFoundError("user", "nobody")
    assert newest()["outcome"] == 4  # refused
    assert trail.verify(actor=ACTOR).ok
