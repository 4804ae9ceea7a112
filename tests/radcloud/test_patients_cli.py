"""``radcloud patients``: the cross-reference from the command line, as a real
``python -m radcloud`` in a scratch ``RADCLOUD_HOME``; each change audited as the OS user."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.identity import PatientIdentity
from core.secrets import load_secrets
from tests.audit_records import assert_cli_actor, audit_records, radcloud


def _identity(home: Path) -> tuple[PatientIdentity, Database]:
    settings = load_settings(home=home)
    db = Database.from_settings(settings)
    upgrade(db)
    return PatientIdentity(db, AuditTrail.from_secrets(db, load_secrets(settings))), db


def test_authority_link_unlink_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: keys on one line
    identity, db = _identity(tmp_path)
    key_a = identity.register("A", "A-0001", "HOSP_A", [("9434765919", "NHS")])
    key_b = identity.register("B", "B-77", "HOSP_B", [("9434765919", "NHS")])
    key_c = identity.register("C", "C-5")
    db.dispose()
    last = audit_records(tmp_path)[-1]["seq"]

    added = radcloud(tmp_path, "patients", "authority", "add", "NHS", "--kind", "national")
    assert added.returncode == 0, added.stderr
    assert "NHS" in radcloud(tmp_path, "patients", "authority", "list").stdout
    shown = radcloud(tmp_path, "patients", "show", key_b)
    assert f"merged into {key_a}" in shown.stdout and "B:HOSP_B:B-77" in shown.stdout

    linked = radcloud(
        tmp_path, "patients", "link", "C::C-5", "A:HOSP_A:A-0001", "--reason", "referral letter"
    )
    assert linked.returncode == 0, linked.stderr
    assert key_a in linked.stdout
    listed = radcloud(tmp_path, "patients", "list", "--hospital", "C").stdout
    assert key_a in listed and "C::C-5" in listed

    # the authority's link is not a manual one: refused, and the way out is named
    refused = radcloud(tmp_path, "patients", "unlink", "B:HOSP_B:B-77", "--reason", "wrong")
    assert refused.returncode == 1 and "authority rule" in refused.stderr
    unlinked = radcloud(tmp_path, "patients", "unlink", "C::C-5", "--reason", "other patient")
    assert unlinked.returncode == 0 and key_c in unlinked.stdout
    removed = radcloud(tmp_path, "patients", "authority", "remove", "NHS")
    assert removed.returncode == 0, removed.stderr
    identity, db = _identity(tmp_path)
    assert identity.key_for("B", "B-77", "HOSP_B") == key_b
    db.dispose()

    bad = radcloud(tmp_path, "patients", "unlink", "no-colons", "--reason", "x")
    assert bad.returncode == 2 and "HOSPITAL:ISSUER:PATIENTID" in bad.stderr

    records = audit_records(tmp_path, after=last)
    changes = [(r["detail"].get("change"), r["outcome"]) for r in records]
    assert changes == [
        ("authority rule added", 0),
        ("identifiers linked", 0),
        ("identifier unlinked", 4),
        ("identifier unlinked", 0),
        ("authority rule removed", 0),
    ]
    for record in records:
        assert_cli_actor(record)
