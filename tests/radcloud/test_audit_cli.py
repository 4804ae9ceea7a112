"""``radcloud audit verify`` and ``radcloud audit export --format fhir`` through the real command
line: a row rewritten, deleted or inserted in the table fails verification with the first bad
record named; the FHIR export is a valid R4 Bundle of AuditEvent holding one hospital's records
and none of another's."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import text

from core.audit import AuditEventCode, AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Hospital, Study
from core.secrets import load_secrets
from tests.audit_records import audit_records, radcloud

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.202"
PATIENT_A, PATIENT_B = "PAT-A-0001", "PAT-B-0002"


def _trail(home: Path) -> AuditTrail:
    settings = load_settings(home=home)
    db = Database.from_settings(settings)
    upgrade(db)
    return AuditTrail.from_secrets(db, load_secrets(settings))


_INSERT = (  # a row after the newest, chained to it, and the head moved to it
    "INSERT INTO audit_events (seq, time, event_code, event_name, action, outcome, user_name, "
    "detail, prev_hash, hash) SELECT 5, time, event_code, event_name, action, 0, 'ghost', "
    "detail, hash, hash FROM audit_events WHERE seq = 4",
    "UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit_events WHERE seq = 5)",
)


@pytest.mark.parametrize(
    ("statements", "first_bad", "why"),
    [
        (("UPDATE audit_events SET outcome = 0 WHERE seq = 2",), 2, "was modified"),
        (("DELETE FROM audit_events WHERE seq = 2",), 2, "records 2..2 are missing"),
        (_INSERT, 5, "MAC does not match"),
    ],
    ids=["update", "delete", "insert"],
)
def test_verify_names_the_first_bad_record(
    tmp_path: Path, statements: tuple[str, ...], first_bad: int, why: str
) -> None:
    trail = _trail(tmp_path)
    for user in ("alice", "bob", "carol"):
        trail.record(AuditEventCode.USER_AUTHENTICATION, user_name=user, outcome=4)
    intact = radcloud(tmp_path, "audit", "verify")  # and record 4 says so
    assert intact.returncode == 0, intact.stderr
    assert "intact: 3 records" in intact.stdout
    with trail._db.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))

    broken = radcloud(tmp_path, "audit", "verify")
    assert broken.returncode == 1, broken.stdout
    message = " ".join(broken.stderr.split())
    assert f"first bad record {first_bad}:" in message, message
    assert why in message
    verification = audit_records(tmp_path)[-1]
    assert verification["outcome"] == 4
    assert verification["detail"]["first_bad_record"] == first_bad


@pytest.fixture
def two_hospitals(tmp_path: Path) -> AuditTrail:
    """Hospitals A and B, a study of each, and records about each, about both, and neither."""
    trail = _trail(tmp_path)
    with trail._db.session() as session:
        a, b = Hospital(name="A"), Hospital(name="B")
        session.add_all([a, b])
        session.add(Study(study_instance_uid=STUDY_A, hospital=a, patient_id=PATIENT_A))
        session.add(Study(study_instance_uid=STUDY_B, hospital=b, patient_id=PATIENT_B))
    for uid, patient in ((STUDY_A, PATIENT_A), (STUDY_B, PATIENT_B)):
        trail.record(
            AuditEventCode.INSTANCES_ACCESSED,
            action="R",
            user_name="dr-house",
            role="radiologist",
            source_address="10.0.0.7",
            resource_type="study",
            resource_id=uid,
            patient_id=patient,
        )
    trail.record(  # a reader of both hospitals searched and saw one study of each
        AuditEventCode.QUERY,
        user_name="dr-both",
        source_address="reading-room-3",
        detail={
            "returned": [
                {"study_instance_uid": uid, "patient_id_hash": trail.patient_id_hash(patient)}
                for uid, patient in ((STUDY_A, PATIENT_A), (STUDY_B, PATIENT_B))
            ]
        },
    )
    trail.record(
        AuditEventCode.SECURITY_ALERT,
        action="C",
        user_name="admin",
        resource_type="sender",
        resource_id="CT_A",
        detail={"change": "sender registered", "hospital": "A"},
    )
    trail.record(AuditEventCode.USER_AUTHENTICATION, user_name="nobody-of-a", outcome=4)
    return trail


def test_fhir_export_holds_one_hospitals_records(tmp_path: Path, two_hospitals: AuditTrail) -> None:
    out = tmp_path / "a.fhir.json"
    args = ("audit", "export", "--format", "fhir", "--hospital", "A", "--out", str(out))
    result = radcloud(tmp_path, *args, "--since", "2000-01-01T00:00:00")
    assert result.returncode == 0, result.stderr
    assert "3 records exported" in result.stderr
    raw = out.read_text()
    bundle = Bundle.model_validate_json(raw)  # a valid FHIR Bundle of AuditEvent
    assert bundle.type == "collection"
    events = [entry.resource for entry in bundle.entry or []]
    assert [event.get_resource_type() for event in events] == ["AuditEvent"] * 3
    for forbidden in (STUDY_B, PATIENT_A, PATIENT_B, two_hospitals.patient_id_hash(PATIENT_B)):
        assert forbidden not in raw
    hash_a = two_hospitals.patient_id_hash(PATIENT_A)

    accessed, searched, sender = events
    assert (accessed.type.code, accessed.action, accessed.outcome) == ("110103", "R", "0")
    assert accessed.agent[0].name == "dr-house"
    assert (accessed.agent[0].network.address, accessed.agent[0].network.type) == ("10.0.0.7", "2")
    identifiers = {e.what.identifier.system: e.what.identifier.value for e in accessed.entity}
    assert identifiers["urn:dicom:uid"] == f"urn:oid:{STUDY_A}"
    assert identifiers["urn:radcloud:patient-id-hmac"] == hash_a
    assert identifiers["urn:radcloud:audit-seq"] == "1"
    searched_ids = [e.what.identifier.value for e in searched.entity]
    assert searched_ids[1:] == [f"urn:oid:{STUDY_A}", hash_a]  # only A's study of the two
    assert searched.agent[0].network.type == "1"  # a machine name
    assert sender.type.code == "110113"
    assert sender.source.site == "radcloud"

    used = audit_records(tmp_path)[-1]
    assert (used["event_code"], used["action"], used["outcome"]) == ("110101", "R", 0)
    assert used["detail"] | {"via": None, "since": None} == {
        "operation": "export",
        "format": "fhir",
        "hospital": "A",
        "since": None,
        "records": 3,
        "via": None,
    }

    later = radcloud(tmp_path, *args, "--since", "2999-01-01T00:00:00")
    assert later.returncode == 0, later.stderr
    assert not Bundle.model_validate_json(out.read_text()).entry


def test_fhir_export_refuses_bad_input_and_keeps_the_old_file(
    tmp_path: Path, two_hospitals: AuditTrail
) -> None:
    out = tmp_path / "kept.json"
    out.write_text("earlier export")
    unknown = radcloud(
        tmp_path, "audit", "export", "--format", "fhir", "--hospital", "Nowhere", "-o", str(out)
    )
    assert unknown.returncode == 1
    assert 'hospital "Nowhere" does not exist' in unknown.stderr
    assert out.read_text() == "earlier export"
    assert not list(tmp_path.glob(".kept.json*"))
    no_hospital = radcloud(tmp_path, "audit", "export", "--format", "fhir")
    assert no_hospital.returncode == 2
    assert "--hospital" in no_hospital.stderr
    plain = radcloud(tmp_path, "audit", "export", "--hospital", "A")
    assert plain.returncode == 2
    assert radcloud(tmp_path, "audit", "verify").returncode == 0
