"""``radcloud patients``: the cross-reference from the command line, as a real
``python -m radcloud`` in a scratch ``RADCLOUD_HOME``; each change audited as the OS user."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.identity import PatientIdentifier, PatientIdentity
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


def test_retract_list_and_lift_an_asserted_link_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    identity, db = _identity(tmp_path)
    key_a = identity.register("A", "A-0001", "HOSP_A", [("9434765919", "NHS")])
    db.dispose()
    last = audit_records(tmp_path)[-1]["seq"]

    missing = radcloud(tmp_path, "patients", "retract", "A:HOSP_A:A-0001", "--from", "A:NHS:1")
    assert missing.returncode == 2 and "--reason" in missing.stderr  # no reason: not even tried
    blank = ("--reason", " ")
    empty = radcloud(
        tmp_path, "patients", "retract", "A:HOSP_A:A-0001", "--from", "A:NHS:9434765919", *blank
    )
    assert empty.returncode == 1 and "reason" in empty.stderr
    unknown = radcloud(
        tmp_path, "patients", "retract", "A:HOSP_A:A-0001", "--from", "A:NHS:1", "--reason", "x"
    )
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    wrong = ("A:HOSP_A:A-0001", "--from", "A:NHS:9434765919")
    retracted = radcloud(tmp_path, "patients", "retract", *wrong, "--reason", "misfiled number")
    assert retracted.returncode == 0, retracted.stderr
    assert key_a in retracted.stdout and "still one patient" not in retracted.stdout

    # a later study asserting it again: not linked, and counted on the retraction
    identity, db = _identity(tmp_path)
    assert identity.register("A", "A-0001", "HOSP_A", [("9434765919", "NHS")]) == key_a
    assert identity.identifiers(key_a) == [PatientIdentifier("A", "A-0001", "HOSP_A")]
    db.dispose()
    listed = radcloud(tmp_path, "patients", "retractions").stdout
    assert "A:NHS:9434765919" in listed and "misfiled number" in listed
    # reason, by, when, asserted by hospital A, asserted again once
    assert re.search(r"misfiled number\s*│[^│\n]*│[^│\n]*│\s*A\s*│\s*1\s*│", listed), listed
    assert "misfiled number" in radcloud(tmp_path, "patients", "show", key_a).stdout

    lifted = radcloud(tmp_path, "patients", "lift-retraction", *wrong, "--reason", "confirmed")
    assert lifted.returncode == 0, lifted.stderr
    identity, db = _identity(tmp_path)
    assert identity.key_for("A", "9434765919", "NHS") == key_a
    db.dispose()
    again = radcloud(tmp_path, "patients", "lift-retraction", *wrong, "--reason", "again")
    assert again.returncode == 1 and "does not exist" in again.stderr

    records = [
        r
        for r in audit_records(tmp_path, after=last)
        if r["detail"].get("change") in ("assertion retracted", "retraction lifted")
    ]
    assert [(r["detail"]["change"], r["outcome"]) for r in records] == [
        ("assertion retracted", 4),
        ("assertion retracted", 4),
        ("assertion retracted", 0),
        ("retraction lifted", 0),
        ("retraction lifted", 4),
    ]
    for record in records:
        assert_cli_actor(record)
