"""The audit trail: records, pseudonymised patient IDs, and a chain that shows tampering."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from core.audit import AuditEventCode, AuditOutcome, AuditTrail, _record_hash
from core.config import load_settings
from core.db import Database, upgrade
from core.secrets import load_secrets


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    upgrade(db)
    audit = AuditTrail(db, "k" * 48)
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
    report = trail.verify()
    assert report.ok, report.problems
    assert report.records == 6


def test_patient_id_is_stored_only_as_keyed_hash(trail: AuditTrail) -> None:
    with trail._db.engine.connect() as connection:
        dump = "\n".join(str(row) for row in connection.execute(text("SELECT * FROM audit_events")))
    assert "PAT-0001" not in dump
    record = trail.search(resource_id="1.2.826.0.1.3")[0]
    assert record["patient_id_hash"] == trail.patient_id_hash("PAT-0001")
    assert record["patient_id_hash"] != AuditTrail(trail._db, "other key" * 5).patient_id_hash(
        "PAT-0001"
    )
    assert record["event_name"] == "DICOM Instances Accessed"


def test_edited_record_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "UPDATE audit_events SET user_name = 'someone-else' WHERE seq = 3")
    report = trail.verify()
    assert not report.ok
    assert "record 3 was modified" in report.problems[0]


def test_deleted_record_in_the_middle_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "DELETE FROM audit_events WHERE seq = 2")
    problems = trail.verify().problems
    assert any("records 2..2 are missing" in p for p in problems)


def test_deleted_newest_record_is_detected(trail: AuditTrail) -> None:
    _sql(trail, "DELETE FROM audit_events WHERE seq = 6")
    problems = trail.verify().problems
    assert any("head names record 6" in p for p in problems)


def test_rehashed_forgery_still_breaks_the_chain(trail: AuditTrail) -> None:
    """Editing a record and recomputing its own hash does not help: the next record disagrees."""
    forged = next(r for r in trail.search(limit=10) if r["seq"] == 4) | {"outcome": 8}
    new_hash = _record_hash(forged)
    _sql(trail, "UPDATE audit_events SET outcome = 8, hash = :hash WHERE seq = 4", hash=new_hash)
    problems = trail.verify().problems
    assert not any("record 4 was modified" in p for p in problems)  # its own hash fits
    assert any("record 5 does not follow" in p for p in problems)


def test_concurrent_writers_keep_one_linear_chain(trail: AuditTrail) -> None:
    def write(worker: int) -> None:
        for index in range(15):
            trail.record(AuditEventCode.QUERY, user_name=f"w{worker}", detail={"i": index})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = trail.verify()
    assert report.ok, report.problems
    assert report.records == 6 + 4 * 15


def test_export_writes_every_record_as_json_lines(trail: AuditTrail) -> None:
    trail.record(AuditEventCode.SECURITY_ALERT, outcome=AuditOutcome.MINOR_FAILURE)
    out = io.StringIO()
    assert trail.export(out) == 7
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 8))
    assert lines[-1]["outcome"] == 4
    assert lines[1]["prev_hash"] == lines[0]["hash"]


def test_cli_verify_and_export(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    db = Database.from_settings(settings)
    upgrade(db)
    AuditTrail(db, load_secrets(settings).audit_hmac_key).record(
        AuditEventCode.USER_AUTHENTICATION, user_name="alice"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCLOUD_")}
    env["RADCLOUD_HOME"] = str(tmp_path)

    def radcloud(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radcloud", *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    verified = radcloud("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "1 records" in verified.stdout
    exported = radcloud("audit", "export", "--out", str(tmp_path / "audit.jsonl"))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "audit.jsonl").read_text())["user_name"] == "alice"

    with db.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET user_name = 'mallory'"))
    broken = radcloud("audit", "verify")
    assert broken.returncode == 1
    assert "record 1 was modified" in broken.stdout
    assert "NOT intact" in broken.stderr
