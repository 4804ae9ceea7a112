"""The ownership decision of every incoming instance, on a real SQLite database: the first
instance claims its study for its hospital; later ones join only from that hospital and with
the same patient; two hospitals racing on one UID never both win."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import select

from core.audit import AuditTrail
from core.db import Database, upgrade
from core.db.models import AuditEvent, Hospital, Study
from dicom_gateway.exceptions import InstanceRejectedError, StudyCollisionError
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.validation import InstanceInfo

STUDY = "1.2.826.0.1.3680043.10.99.1"


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    upgrade(database)
    return database


def ownership(db: Database) -> StudyOwnership:
    return StudyOwnership(db, AuditTrail(db, "k" * 32, "c" * 32))


def info(study: str = STUDY, sop: str = "1.2.3.1", **patient: str | None) -> InstanceInfo:
    identity: dict[str, str | None] = {
        "patient_id": "P-1",
        "issuer_of_patient_id": "MRN-A",
        "patient_name": "DOE^JANE",
        "patient_birth_date": "19700101",
    }
    return InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid="1.2.3.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        **(identity | patient),  # type: ignore[arg-type]
    )


def owner(db: Database, study: str = STUDY) -> str | None:
    with db.session() as session:
        row = session.execute(
            select(Hospital.name)
            .select_from(Study)
            .outerjoin(Hospital, Study.hospital_id == Hospital.id)
            .where(Study.study_instance_uid == study)
        ).one()
        return row[0]


def alerts(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_code == "110113")))


def test_the_first_instance_claims_the_study_and_its_hospital_joins_it(db: Database) -> None:
    gate = ownership(db)
    gate.admit(info(), "A", sender="CT_A", source="dimse")
    gate.admit(info(sop="1.2.3.5"), "A", sender="CT_A", source="dimse")
    ownership(db).admit(info(sop="1.2.3.6"), "A", sender="CT_A", source="stow")  # uncached
    assert owner(db) == "A"
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        assert (study.patient_id, study.issuer_of_patient_id) == ("P-1", "MRN-A")
        assert (study.patient_name, study.patient_birth_date) == ("DOE^JANE", "19700101")
    assert alerts(db) == []


def test_another_hospitals_instance_never_joins_and_is_audited(db: Database) -> None:
    ownership(db).admit(info(), "A", sender="CT_A", source="dimse")
    with pytest.raises(StudyCollisionError, match="another hospital's study") as caught:
        ownership(db).admit(info(sop="1.2.3.9"), "B", sender="CT_B", source="dimse")
    assert isinstance(caught.value, InstanceRejectedError)  # the intake quarantines it
    assert owner(db) == "A"
    [alert] = alerts(db)
    assert alert.user_name == "CT_B" and alert.resource_id == STUDY
    assert alert.detail["owner"] == "A" and alert.detail["hospital"] == "B"
    assert alert.patient_id_hash and "P-1" not in str(alert.detail)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", "P-2"),
        ("issuer_of_patient_id", "MRN-B"),
        ("issuer_of_patient_id", None),
        ("patient_name", "DOE^JOHN"),
        ("patient_birth_date", "19700102"),
    ],
)
def test_an_instance_of_another_patient_never_joins(
    db: Database, field: str, value: str | None
) -> None:
    gate = ownership(db)
    gate.admit(info(), "A", sender="CT_A", source="dimse")
    with pytest.raises(StudyCollisionError, match="patient identity differs") as caught:
        gate.admit(info(sop="1.2.3.9", **{field: value}), "A", sender="CT_A", source="dimse")
    assert value is None or value not in caught.value.reason  # attribute names, no values
    assert owner(db) == "A"


def test_a_study_without_an_owner_takes_no_instance(db: Database) -> None:
    with db.session() as session:
        session.add(Study(study_instance_uid=STUDY, patient_id="P-1"))
    with pytest.raises(StudyCollisionError, match=r"no owning hospital.*assign-owner"):
        ownership(db).admit(info(), "A", sender="CT_A", source="dimse")
    assert owner(db) is None


def test_an_instance_without_a_hospital_is_refused(db: Database) -> None:
    with pytest.raises(StudyCollisionError, match="no hospital"):
        ownership(db).admit(info(), None, sender="-", source="stow")
    with db.session() as session:
        assert session.scalars(select(Study)).all() == []


def test_two_hospitals_racing_on_the_same_uids_never_both_win(db: Database) -> None:
    studies = [f"1.2.826.0.1.3680043.10.99.{n}" for n in range(2, 42)]
    won: dict[str, list[str]] = {"A": [], "B": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def send(hospital: str) -> None:
        gate = ownership(db)  # each its own cache, as two gateways would have
        start.wait()
        for study in studies:
            try:
                gate.admit(
                    replace(info(study), sop_instance_uid=f"{study}.{ord(hospital)}"),
                    hospital,
                    sender=f"CT_{hospital}",
                    source="dimse",
                )
                won[hospital].append(study)
            except StudyCollisionError:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=send, args=(h,)) for h in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(won["A"] + won["B"]) == sorted(studies)  # each UID exactly one winner
    assert all(owner(db, study) == ("A" if study in won["A"] else "B") for study in studies)
    assert len(alerts(db)) == len(studies)  # every loser audited


def test_attributes_a_study_did_not_record_are_not_compared(db: Database) -> None:
    gate = ownership(db)
    gate.admit(
        info(issuer_of_patient_id=None, patient_birth_date=None), "A", sender="CT_A", source="dimse"
    )
    gate.admit(info(sop="1.2.3.7"), "A", sender="CT_A", source="dimse")  # brings both: joins
    with pytest.raises(StudyCollisionError, match="PatientID"):
        gate.admit(info(sop="1.2.3.8", patient_id=None), "A", sender="CT_A", source="dimse")
