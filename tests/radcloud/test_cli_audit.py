"""What the command line does is audited by the services it calls, as the OS user running it.

Each command runs as a real ``python -m radcloud`` in a scratch ``RADCLOUD_HOME``; after each,
the audit trail holds exactly one new record naming the action, its outcome and its object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.secrets import load_secrets
from dicom_gateway.quarantine import Quarantine
from tests.audit_records import assert_cli_actor, audit_records, radcloud
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.fixture_models import register_fixture_models
from training.tasks import Task

PATIENT_ID = "PAT-CLI-AUDIT-0042"

# (command, exit status, "event-ID action outcome object-type object-ID" of its record)
Step = tuple[tuple[str, ...], int, str]


_PATIENT_RECORD = "110110 C 0 patient"  # a claim registering the patient's identifiers


def _run(home: Path, steps: list[Step]) -> list[dict[str, Any]]:
    """Run each step and check its one new record (after a Patient Record, where a step's
    ``expected`` starts with ``_PATIENT_RECORD + " + "``); return those records."""
    seen = audit_records(home)
    last = seen[-1]["seq"] if seen else 0
    records = []
    for args, status, described in steps:
        result = radcloud(home, *args)
        assert result.returncode == status, f"radcloud {' '.join(args)}: {result.stderr}"
        new = audit_records(home, after=last)
        expected = described.removeprefix(f"{_PATIENT_RECORD} + ")
        if expected != described:
            patient, *new = new
            assert (patient["event_code"], patient["resource_type"]) == ("110110", "patient")
        assert len(new) == 1, f"radcloud {' '.join(args)} wrote {len(new)} audit records"
        record = new[0]
        fields = ("event_code", "action", "outcome", "resource_type", "resource_id")
        assert " ".join(str(record[name]) for name in fields) == expected, " ".join(args)
        assert_cli_actor(record)
        records.append(record)
        last = int(record["seq"])
    return records


def test_account_commands_are_audited_with_refusals(tmp_path: Path) -> None:
    records = _run(
        tmp_path,
        [
            (("users", "add", "alice", "--role", "radiologist"), 0, "110113 C 0 user alice"),
            (("users", "add", "alice", "--role", "admin"), 1, "110113 C 4 user alice"),
            (("token", "alice"), 0, "110114 E 0 user alice"),
            (("users", "disable", "alice"), 0, "110113 U 0 user alice"),
            (("token", "alice"), 2, "110114 E 4 user alice"),
            (("users", "disable", "nobody"), 1, "110113 U 4 user nobody"),
            (("apikeys", "create", "edge-1", "--role", "pacs"), 0, "110113 C 0 api_key edge-1"),
            (("apikeys", "revoke", "edge-1"), 0, "110113 D 0 api_key edge-1"),
            (("apikeys", "revoke", "unknown"), 1, "110113 D 4 api_key unknown"),
        ],
    )
    details = [record["detail"] for record in records]
    assert details[0] == {
        "change": "user created",
        "role": "radiologist",
        "hospitals": [],
        "platform_operator": False,
        "via": "cli",
    }
    assert details[1]["reason"] == 'user "alice" already exists'
    assert details[3]["change"] == "user disabled"
    assert details[4]["reason"] == 'user "alice" is disabled'
    assert details[5]["reason"] == 'user "nobody" does not exist'
    assert details[8]["reason"] == 'API key "unknown" does not exist'
    assert radcloud(tmp_path, "audit", "verify").returncode == 0


def test_gateway_commands_are_audited_without_patient_ids(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    db = Database.from_settings(settings)
    upgrade(db)
    db.dispose()
    quarantine = Quarantine(settings.paths.quarantine_dir)
    study_uid = "1.2.826.0.1.3680043.8.498.4242"
    kept = [
        quarantine.add(
            synthetic_ct(study_uid, instance=number, patient_id=PATIENT_ID),
            reason="test",
            error="NonConformantInstanceError",
            source="dimse",
            sender_ae_title="CT1",
            hospital="General",
        )
        for number in (1, 2, 3)
    ]
    out = tmp_path / "exported.dcm"
    too_long = "A" * 17  # PS3.5: at most 16 characters
    here = ("--host", "127.0.0.1")
    dest = ("destinations", "add")
    first, second, third = (entry.entry_id for entry in kept)

    records = _run(
        tmp_path,
        [
            (("senders", "add", "CT1", "--hospital", "General", *here), 0, "110113 C 0 sender CT1"),
            (("senders", "add", "CT1", "--hospital", "Other"), 1, "110113 C 4 sender CT1"),
            (("senders", "add", too_long, "--hospital", "X"), 2, f"110113 C 4 sender {too_long}"),
            ((*dest, "VIEWER", *here, "--port", "11112"), 0, "110113 C 0 destination VIEWER"),
            ((*dest, "BAD", *here, "--port", "70000"), 2, "110113 C 4 destination BAD"),
            (("senders", "remove", "CT1"), 0, "110113 D 0 sender CT1"),
            (("destinations", "remove", "NOPE"), 1, "110113 D 4 destination NOPE"),
            (("quarantine", "show", first, "--out", str(out)), 0, f"110106 R 0 study {study_uid}"),
            # the release claims the study for General, registering its patient
            (
                ("quarantine", "release", second),
                0,
                f"{_PATIENT_RECORD} + 110104 C 0 study {study_uid}",
            ),
            (("quarantine", "delete", third), 0, f"110103 D 0 study {study_uid}"),
            (("quarantine", "delete", "gone"), 1, "110103 D 4 quarantine_entry gone"),
        ],
    )  # fmt: skip
    assert records[0]["detail"] | {"via": None} == {
        "change": "sender registered",
        "hospital": "General",
        "host": "127.0.0.1",
        "via": None,
    }
    assert "port 70000 is not valid" in str(records[4]["detail"])
    exported, released, deleted, refused = records[7:]
    assert out.read_bytes() == quarantine.data(first)
    assert exported["detail"]["to"] == str(out)
    assert released["detail"]["spooled_as"].endswith(".spool")
    assert deleted["detail"]["sop_instance_uid"] == kept[2].sop_instance_uid
    assert refused["detail"]["reason"].endswith("no such entry")
    assert refused["patient_id_hash"] is None
    assert [entry.entry_id for entry in quarantine.list()] == [first]

    db = Database.from_settings(settings)
    try:
        expected_hash = AuditTrail.from_secrets(db, load_secrets(settings)).patient_id_hash(
            PATIENT_ID
        )
        with db.engine.connect() as connection:
            dump = [str(row) for row in connection.execute(text("SELECT * FROM audit_events"))]
    finally:
        db.dispose()
    assert not any(PATIENT_ID in row for row in dump)
    assert {r["patient_id_hash"] for r in (exported, released, deleted)} == {expected_hash}


def test_tenancy_commands_are_audited(tmp_path: Path) -> None:
    legacy = "1.2.826.0.1.3680043.10.77.1"
    settings = load_settings(home=tmp_path)
    radcloud(tmp_path, "users", "list")  # creates the home and the database
    db = Database(settings.sqlalchemy_url)
    try:
        upgrade(db)
        with db.session() as session:  # a study stored before owners were recorded
            session.execute(
                text(
                    "INSERT INTO studies (study_instance_uid, state, instance_count, "
                    "first_received_at, last_received_at) "
                    "VALUES (:uid, 'ready', 1, '2026-01-01', '2026-01-01')"
                ),
                {"uid": legacy},
            )
    finally:
        db.dispose()
    records = _run(
        tmp_path,
        [
            (("users", "add", "eve", "--role", "ml_engineer"), 0, "110113 C 0 user eve"),
            (("users", "assign", "eve", "St Mary", "--identified"), 0, "110113 U 0 user eve"),
            (("studies", "assign-owner", legacy, "St Mary"), 0, f"110113 U 0 study {legacy}"),
            (("studies", "assign-owner", legacy, "County"), 1, f"110113 U 4 study {legacy}"),
            (("studies", "assign-owner", "1.2.3.404", "County"), 1, "110113 U 4 study 1.2.3.404"),
        ],
    )
    assert records[1]["detail"]["identified"] is True
    assert records[2]["detail"]["hospital"] == "St Mary"
    assert "never changed" in records[3]["detail"]["reason"]
    listed = radcloud(tmp_path, "users", "list").stdout
    assert "St Mary (identified)" in listed


def test_model_registry_commands_are_audited_with_refusals(tmp_path: Path) -> None:
    """Which version serves patients is changed by ``models promote|rollback``: each change,
    and each refused one, is an audit record on the model."""
    models_dir = load_settings(home=tmp_path).paths.models_dir
    register_fixture_models(models_dir, tasks=(Task.CHEST_XR,))
    [name] = register_fixture_models(models_dir, tasks=(Task.CHEST_XR,))  # version 2 serves
    records = _run(
        tmp_path,
        [
            (("models", "rollback", name), 0, f"110100 U 0 model {name}"),
            (("models", "promote", name, "2"), 0, f"110100 U 0 model {name}"),
            (("models", "promote", name, "99"), 1, f"110100 U 4 model {name}"),
            (("models", "promote", "no-such-model", "1"), 1, "110100 U 4 model no-such-model"),
        ],
    )
    rolled_back, promoted, refused, unknown = (record["detail"] for record in records)
    assert rolled_back | {"via": None} == {
        "change": "rolled back",
        "archived": 2,
        "version": 1,
        "via": None,
    }
    assert (promoted["change"], promoted["version"], promoted["archived"]) == ("promoted", 2, 1)
    assert "99" in refused["reason"]
    assert "no-such-model" in unknown["reason"]
    assert radcloud(tmp_path, "audit", "verify").returncode == 0
