"""Retracting a link a hospital's own study asserted (OtherPatientIDsSequence), in a real SQLite
database: the identifiers split, a later study asserting the same does not re-link them, the
retraction is listed and lifted, refusals are audited, and an admin stays in its hospitals."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.audit import AuditTrail
from core.db import Database, upgrade
from core.db.models import AuditEvent
from core.exceptions import AlreadyExistsError, IdentityLinkError, NotFoundError
from core.identity import AssertionRetractions, PatientIdentifier, PatientIdentity
from core.security import Actor, Door
from core.tenancy import HospitalScope
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.validation import InstanceInfo

NHS = "9434765919"
A1 = PatientIdentifier("A", "A-0001", "HOSP_A")
A_NHS = PatientIdentifier("A", NHS, "NHS")  # misfiled: A's study named another patient's number
B7 = PatientIdentifier("B", "B-77", "HOSP_B")
ADMIN_A = Actor("admin-a", Door.HTTP, "admin", "10.0.0.1", HospitalScope.of(["A"]))
ADMIN_B = Actor("admin-b", Door.HTTP, "admin", "10.0.0.2", HospitalScope.of(["B"]))
OPERATOR = Actor("op", Door.CLI, scope=HospitalScope.platform())


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    upgrade(database)
    return database


@pytest.fixture
def audit(db: Database) -> AuditTrail:
    return AuditTrail(db, "k" * 32, "c" * 32)


def _study(uid: str) -> InstanceInfo:
    """A study of hospital A naming A-0001 with the NHS number in OtherPatientIDsSequence."""
    return InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=uid + ".1",
        study_instance_uid=uid,
        series_instance_uid=uid + ".2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=A1.patient_id,
        issuer_of_patient_id=A1.issuer_of_patient_id,
        other_patient_ids=((NHS, "NHS"),),
    )


def _records(db: Database, code: str) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_code == code)))


def test_a_retracted_assertion_splits_and_stays_split_until_lifted(
    db: Database, audit: AuditTrail
) -> None:
    identity = PatientIdentity(db, audit)
    retractions = AssertionRetractions(db, audit)
    ownership = StudyOwnership(db, audit)
    ownership.admit(_study("1.2.826.0.1.3680043.10.9.11"), "A", sender="MOD_A", source="dimse")
    key_b = identity.register("B", B7.patient_id, "HOSP_B", [(NHS, "NHS")])
    identity.add_authority("NHS", "national", actor=OPERATOR)
    key_a = identity.key_for("A", A1.patient_id, "HOSP_A")
    assert key_a is not None and identity.key_for("B", B7.patient_id, "HOSP_B") == key_a
    # unlink names the way out: the assertion is no manual link
    with pytest.raises(IdentityLinkError, match="retract"):
        identity.unlink(A1, "wrong patient", actor=ADMIN_A)

    keys = retractions.retract(A1, A_NHS, "NHS number belongs to another patient", actor=ADMIN_A)
    assert keys[0] == key_a and keys[1] != key_a
    assert identity.key_for("B", B7.patient_id, "HOSP_B") == keys[1]  # B keeps the NHS number
    assert identity.identifiers(key_a) == [A1]
    assert not [x for x in identity.links(HospitalScope.platform()) if A1 in (x.a, x.b)]

    # another study of A asserting the same again: registered, not re-linked, counted
    ownership.admit(_study("1.2.826.0.1.3680043.10.9.12"), "A", sender="MOD_A", source="dimse")
    assert identity.identifiers(key_a) == [A1]
    [listed] = retractions.retractions(ADMIN_A.scope)
    assert (listed.a, listed.b, listed.withheld) == (A1, A_NHS, 1)
    assert (listed.reason, listed.created_by, listed.asserted_by) == (
        "NHS number belongs to another patient",
        "admin-a",
        "A",
    )
    withheld = [r for r in _records(db, "110110") if r.detail.get("withheld_links")]
    assert len(withheld) == 1
    assert withheld[0].detail["study_instance_uid"] == "1.2.826.0.1.3680043.10.9.12"
    assert NHS not in str(withheld[0].detail)  # patient IDs hashed only
    assert retractions.retractions(ADMIN_B.scope) == []  # B's admin sees none of A's
    assert retractions.retractions(ADMIN_A.scope, identifier=A1) == [listed]

    assert retractions.lift(A1, A_NHS, "the hospital confirmed its record", actor=ADMIN_A) == key_a
    assert identity.key_for("B", B7.patient_id, "HOSP_B") == key_a  # joined again
    [restored] = [x for x in identity.links(HospitalScope.platform()) if A1 in (x.a, x.b)]
    assert (restored.kind, restored.created_by) == ("asserted", "A")
    assert retractions.retractions(HospitalScope.platform()) == []
    assert key_b != key_a


def test_retraction_refusals_are_audited(db: Database, audit: AuditTrail) -> None:
    identity = PatientIdentity(db, audit)
    retractions = AssertionRetractions(db, audit)
    identity.register("A", A1.patient_id, "HOSP_A", [(NHS, "NHS")])
    identity.register("A", "A-0002", "HOSP_A")
    a2 = PatientIdentifier("A", "A-0002", "HOSP_A")
    with pytest.raises(ValueError, match="reason"):
        retractions.retract(A1, A_NHS, "  ", actor=ADMIN_A)
    with pytest.raises(NotFoundError):  # A's identifiers: not B's admin's to retract
        retractions.retract(A1, A_NHS, "wrong", actor=ADMIN_B)
    with pytest.raises(NotFoundError):
        retractions.retract(A1, PatientIdentifier("A", "A-9999", "HOSP_A"), "wrong", actor=ADMIN_A)
    with pytest.raises(IdentityLinkError, match="no study"):  # never asserted together
        retractions.retract(A1, a2, "wrong", actor=ADMIN_A)
    with pytest.raises(NotFoundError):
        retractions.lift(A1, A_NHS, "no retraction yet", actor=ADMIN_A)
    retractions.retract(A1, A_NHS, "wrong", actor=ADMIN_A)
    with pytest.raises(AlreadyExistsError):
        retractions.retract(A_NHS, A1, "again", actor=ADMIN_A)
    with pytest.raises(NotFoundError):  # lifting: the same boundary
        retractions.lift(A1, A_NHS, "right after all", actor=ADMIN_B)
    with pytest.raises(ValueError, match="reason"):
        retractions.lift(A1, A_NHS, "", actor=ADMIN_A)
    with pytest.raises(NotFoundError):
        retractions.retractions(ADMIN_B.scope, identifier=A1)

    done = [
        (r.user_name, r.detail["change"], r.outcome)
        for r in _records(db, "110113")
        if r.detail["change"] in ("assertion retracted", "retraction lifted")
    ]
    assert done == [
        ("admin-a", "assertion retracted", 4),
        ("admin-b", "assertion retracted", 4),
        ("admin-a", "assertion retracted", 4),
        ("admin-a", "assertion retracted", 4),
        ("admin-a", "retraction lifted", 4),
        ("admin-a", "assertion retracted", 0),
        ("admin-a", "assertion retracted", 4),
        ("admin-b", "retraction lifted", 4),
        ("admin-a", "retraction lifted", 4),
    ]
    retracted = next(r for r in _records(db, "110113") if r.outcome == 0 and "reason" in r.detail)
    assert retracted.detail["reason"] == "wrong" and A1.patient_id not in str(retracted.detail)
