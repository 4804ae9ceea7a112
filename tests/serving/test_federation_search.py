"""FederatedSearch over real tenant nodes (the application database) and a stand-in remote
node: purpose rules, the patient check on every answered row, research rows de-identified, and
the audit record (the real remote node, an Orthanc over DICOMweb: test_federation_e2e.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.audit import AuditTrail
from core.db import Database
from core.db.migrate import upgrade
from core.db.models import AuditEvent, Study, StudyState
from core.exceptions import PurposeRequiredError
from core.security import Actor, Door, Purpose
from core.tenancy import hospital_row
from serving.federation import FederatedStudy, NodeKind, NodeState, StudyQuery
from serving.federation.nodes import TenantNode
from serving.federation.service import FederatedSearch, SearchRequest

ACTOR = Actor("dr-peer", Door.HTTP, "peer_hospital", "127.0.0.1")
KEY = "rcp-jane"
LINKS = {  # identifier -> patient key (the cross-reference)
    ("North", "N-1", "MRN-N"): KEY,
    ("South", "S-77", "MRN-S"): KEY,
    ("Remote", "R-5", None): KEY,
    ("North", "N-2", "MRN-N"): "rcp-other",
}


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    upgrade(database)
    rows = [
        ("1.1", "North", "N-1", "MRN-N", "CT", "20250110"),
        ("1.2", "North", "N-2", "MRN-N", "CT", "20250111"),  # another patient, same hospital
        ("1.3", "South", "S-77", "MRN-S", "CR", "20240505"),
        ("1.4", "South", "N-1", "MRN-N", "CT", "20250301"),  # N-1 of MRN-N, but at South
    ]
    with database.session() as session:
        for uid, hospital, patient_id, issuer, modality, date in rows:
            session.add(
                Study(
                    study_instance_uid=uid,
                    hospital_id=hospital_row(session, hospital).id,
                    patient_id=patient_id,
                    issuer_of_patient_id=issuer,
                    patient_name="DOE^JANE",
                    study_date=date,
                    modalities=modality,
                    state=StudyState.READY,
                    instance_count=3,
                )
            )
    return database


class RemoteNode:
    kind = NodeKind.REMOTE
    timeout_s = 2.0

    def __init__(self, hospital: str, studies: list[FederatedStudy]) -> None:
        self.hospital, self.studies, self.asked = hospital, studies, []

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        self.asked.append(query)
        return self.studies  # ignores the filters: the search must not trust a node's filter


def service(db: Database, remote: RemoteNode) -> tuple[FederatedSearch, AuditTrail]:
    audit = AuditTrail(db, "k" * 32, "c" * 32)
    search = FederatedSearch(
        audit=audit,
        identifiers_of=lambda key: [i for i, k in LINKS.items() if k == key],
        key_of=lambda h, p, i: LINKS.get((h, p, i)),
        authorities=set,
        nodes=lambda: [TenantNode(db, "North"), TenantNode(db, "South"), remote],
        deidentify=lambda study, key: replace(
            study,
            study_instance_uid="2.25." + str(abs(hash(study.study_instance_uid))),
            patient_id=f"ANON-{key}",
            patient_name=None,
            issuer_of_patient_id=None,
        ),
    )
    return search, audit


def remote_studies() -> list[FederatedStudy]:
    return [
        FederatedStudy("9.1", ("Remote",), patient_id="R-5", study_date="20230101"),
        FederatedStudy("9.2", ("Remote",), patient_id="R-999", study_date="20230101"),
        FederatedStudy("1.1", ("Remote",), patient_id="R-5"),  # also held by North
    ]


def test_tenant_node_answers_only_its_hospitals_rows_of_the_patient(db: Database) -> None:
    north = TenantNode(db, "North")
    found = north.search_for_studies(StudyQuery((("N-1", "MRN-N"),)))
    assert [s.study_instance_uid for s in found] == ["1.1"]
    assert found[0].held_by == ("North",) and found[0].modalities_in_study == ("CT",)
    south = TenantNode(db, "South").search_for_studies(StudyQuery((), "CT", "20250101-"))
    assert [s.study_instance_uid for s in south] == ["1.4"]


def test_treatment_returns_the_union_of_the_patients_studies_with_holders(
    db: Database,
) -> None:
    remote = RemoteNode("Remote", remote_studies())
    search, _ = service(db, remote)
    answer = search.search(ACTOR, SearchRequest(Purpose.TREATMENT, KEY))
    rows = {s.study_instance_uid: s.held_by for s in answer.studies}
    # 1.2 is another patient of North; 1.4 is N-1 at South, not linked; 9.2 is R-999
    assert rows == {"1.1": ("North", "Remote"), "1.3": ("South",), "9.1": ("Remote",)}
    assert {s.patient_key for s in answer.studies} == {KEY}
    assert remote.asked[0].patient_ids == (("R-5", None),)
    assert {n.hospital: n.state for n in answer.nodes} == {
        "North": NodeState.OK,
        "South": NodeState.OK,
        "Remote": NodeState.OK,
    }


def test_purpose_is_required_and_treatment_needs_a_patient(db: Database) -> None:
    search, _ = service(db, RemoteNode("Remote", []))
    with pytest.raises(PurposeRequiredError):
        search.search(ACTOR, SearchRequest(None))
    with pytest.raises(PurposeRequiredError):
        search.search(ACTOR, SearchRequest(Purpose.TREATMENT))


def test_research_rows_are_deidentified_and_the_trail_keeps_the_originals(db: Database) -> None:
    remote = RemoteNode("Remote", remote_studies())
    search, _ = service(db, remote)
    answer = search.search(ACTOR, SearchRequest(Purpose.RESEARCH, modality="CT"))
    uids = {s.study_instance_uid for s in answer.studies}
    assert not uids & {"1.1", "1.2", "1.3", "1.4", "9.1", "9.2"}
    assert all(s.patient_name is None and s.patient_id.startswith("ANON-") for s in answer.studies)
    # the same patient at two hospitals has one pseudonym
    linked = [s for s in answer.studies if s.patient_id == f"ANON-{KEY}"]
    assert len(linked) >= 2
    with db.session() as session:
        record = session.query(AuditEvent).order_by(AuditEvent.seq.desc()).first()
        assert record is not None
        detail = record.detail
    assert detail["purpose"] == "research"
    assert {r["study_instance_uid"] for r in detail["returned"]} >= {"1.1", "9.1"}
    assert {n["hospital"] for n in detail["nodes"]} == {"North", "South", "Remote"}
