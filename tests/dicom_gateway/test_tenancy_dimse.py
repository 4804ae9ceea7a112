"""The hospital boundary on the DIMSE side, against the gateway of ``radcloud up``, once with
each DICOM edge (the session's ``stack`` and ``pynetdicom_doors``: README "The ingest edge").

Hospitals A and B each have a registered sender and a C-MOVE destination. B stores a study;
both store a study of one shared Patient ID (B first, so that Orthanc's merged patient carries
B's name). Every DIMSE service the gateway offers is covered, parametrised: C-ECHO, C-STORE,
C-FIND at each level of Patient Root and Study Root, C-MOVE at each level; C-GET is not offered
(no C-GET presentation context is accepted). A's sender never sees B's studies, by UID
guessing or by filters (wildcards, B's patient ID), while B's sender asking the same finds
them, so the query is one that would match.

A sender is bound to exactly one hospital (its AE title is registered once, with one
hospital): there is no DIMSE counterpart of the reader assigned to both hospitals, and
registering A's AE title again for B is refused.

Where the Orthanc edge answers otherwise by design, each edge's answer is asserted: a C-MOVE to
a destination that is not the caller's is refused with 0xA801 by the pynetdicom edge, with
Orthanc 1.10's warning 0xB000 (and nothing sent) by the Orthanc edge.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select

from core.config import GatewayEdge
from core.db.models import Study
from dicom_gateway.quarantine import Quarantine
from tests.conftest import EDGES, Stack, edge_id, stack_with_edge
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

FIND = {
    "PATIENT_ROOT": PatientRootQueryRetrieveInformationModelFind,
    "STUDY_ROOT": StudyRootQueryRetrieveInformationModelFind,
}
MOVE = {
    "PATIENT_ROOT": PatientRootQueryRetrieveInformationModelMove,
    "STUDY_ROOT": StudyRootQueryRetrieveInformationModelMove,
}
LEVELS = {
    "PATIENT_ROOT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "STUDY_ROOT": ("STUDY", "SERIES", "IMAGE"),
}
QUERIES = [(model, level) for model, levels in LEVELS.items() for level in levels]
MOVE_REFUSED = {GatewayEdge.PYNETDICOM: 0xA801, GatewayEdge.ORTHANC: 0xB000}
"""C-MOVE to another hospital's destination: Move Destination Unknown, or Orthanc's warning."""
UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


@dataclass
class Stored:
    """One stored instance's identifiers."""

    patient_id: str
    patient_name: str
    study: str
    series: str
    instance: str

    def value(self, keyword: str) -> str:
        return {
            "PatientID": self.patient_id,
            "StudyInstanceUID": self.study,
            "SeriesInstanceUID": self.series,
            "SOPInstanceUID": self.instance,
        }[keyword]


@dataclass
class Hospital:
    """A hospital's sender, destination, and what it stored."""

    name: str
    sender: str
    destination: str
    received: list[Dataset] = field(default_factory=list)
    own: Stored | None = None  # a study of a patient only this hospital has
    shared: Stored | None = None  # a study of the Patient ID both hospitals use


@dataclass
class Boundary:
    stack: Stack
    a: Hospital
    b: Hospital

    @property
    def port(self) -> int:
        return self.stack.settings.gateway_port

    @property
    def called(self) -> str:
        return self.stack.settings.gateway_ae_title


def _request(world: Boundary, calling: str, *contexts: Any) -> Any:
    """An association requested as ``calling``, with timeouts long enough for a loaded machine
    (pynetdicom's 30-s ACSE default ran out once in CI, which reads as an abort, not an answer)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in contexts:
        ae.add_requested_context(context.abstract_syntax, context.transfer_syntax)
    return ae.associate("127.0.0.1", world.port, ae_title=world.called)


def _associate(world: Boundary, calling: str, *contexts: Any) -> Any:
    assoc = _request(world, calling, *contexts)
    assert assoc.is_established, f"{calling} cannot associate"
    return assoc


def _store(world: Boundary, hospital: Hospital, data: bytes) -> int:
    ds = pydicom.dcmread(DicomBytesIO(data))
    assoc = _associate(world, hospital.sender, build_context(ds.SOPClassUID))
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def _instance(patient_id: str, patient_name: str, study: str | None = None) -> tuple[bytes, Stored]:
    ds = pydicom.dcmread(DicomBytesIO(synthetic_ct(study, patient_id=patient_id)))
    ds.PatientName = patient_name
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stored = Stored(
        patient_id,
        patient_name,
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
    )
    return buffer.getvalue(), stored


def _destination(received: list[Dataset], ae_title: str) -> Any:
    """A storage SCP collecting what C-MOVE sends it."""

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, port


def _in_archive(stack: Stack, *uids: str) -> bool:
    db = stack.database()
    try:
        with db.session() as session:
            rows = session.scalars(
                select(Study).where(
                    Study.study_instance_uid.in_(uids), Study.orthanc_id.isnot(None)
                )
            ).all()
            return len(rows) == len(uids)
    finally:
        db.dispose()


@pytest.fixture(scope="module", params=EDGES, ids=edge_id)
def world(request: pytest.FixtureRequest) -> Iterator[Boundary]:
    stack = stack_with_edge(request, request.param)
    tag = uuid.uuid4().hex[:6].upper()
    hospitals = []
    servers = []
    for letter in "AB":
        hospital = Hospital(f"DIMSE {letter} {tag}", f"SEND{letter}{tag}", f"DEST{letter}{tag}")
        stack.add_sender(hospital.sender, hospital.name)
        server, port = _destination(hospital.received, hospital.destination)
        servers.append(server)
        stack.add_destination(hospital.destination, port, hospital.name)
        hospitals.append(hospital)
    world = Boundary(stack, *hospitals)
    shared_id = f"SHARED-{tag}"
    for hospital in (world.b, world.a):  # B first: Orthanc's patient takes the first name
        data, hospital.own = _instance(
            f"OWN-{hospital.name[6]}-{tag}", f"Own{hospital.name[6]}^{tag}"
        )
        assert _store(world, hospital, data) == 0x0000
        data, hospital.shared = _instance(shared_id, f"Shared{hospital.name[6]}^{tag}")
        assert _store(world, hospital, data) == 0x0000
    uids = [s.study for h in (world.a, world.b) for s in (h.own, h.shared) if s]
    assert wait_until(lambda: _in_archive(stack, *uids), timeout_s=120, interval_s=0.5)
    try:
        yield world
    finally:
        for server in servers:
            server.shutdown()


def _find(
    world: Boundary, hospital: Hospital, model: str, level: str, **keys: str
) -> list[Dataset]:
    """C-FIND as ``hospital``'s sender; the answers (asserting the final status is success)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        setattr(identifier, keyword, "")
    if level in ("SERIES", "IMAGE"):
        identifier.SeriesInstanceUID = ""
    if level == "IMAGE":
        identifier.SOPInstanceUID = ""
    if level == "PATIENT":
        del identifier.StudyInstanceUID
        identifier.NumberOfPatientRelatedStudies = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = _associate(world, hospital.sender, build_context(FIND[model]))
    answers, final = [], None
    try:
        for status, answer in assoc.send_c_find(identifier, FIND[model]):
            assert status is not None, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(answer)
            else:
                final = status.Status
    finally:
        assoc.release()
    assert final == 0x0000, f"C-FIND ended with 0x{final:04X}"
    return answers


def _leaks(answers: list[Dataset], theirs: Stored) -> list[str]:
    text = " ".join(str(answer) for answer in answers)
    values = [theirs.study, theirs.series, theirs.instance, theirs.patient_name]
    return [value for value in values if value in text]


def _guesses(world: Boundary, level: str) -> list[dict[str, str]]:
    """What A's sender may try to reach B's studies: B's UIDs, B's patient IDs and name,
    wildcards (UID keys take no wildcards, PS3.4 C.2.2.2.2: the universal key there)."""
    b_own, b_shared = world.b.own, world.b.shared
    assert b_own and b_shared
    keyword = UNIQUE[level]
    guesses = [
        {keyword: b_own.value(keyword)},
        {"PatientID": b_own.patient_id},
        {"PatientID": "*"},
        {"PatientName": f"OwnB^{b_own.patient_id.rsplit('-', 1)[-1]}"},
        {"PatientName": "OwnB*"},
    ]
    if level != "PATIENT":
        guesses.append({"PatientID": b_shared.patient_id, keyword: b_shared.value(keyword)})
    return guesses


def test_a_sender_belongs_to_one_hospital_only(world: Boundary) -> None:
    again = world.stack.cli(
        "senders", "add", world.a.sender, "--hospital", world.b.name, "--host", "127.0.0.1",
        check=False,
    )  # fmt: skip
    assert again.returncode != 0
    assert "already" in again.stderr, again.stderr
    listed = world.stack.cli("senders", "list").stdout
    assert [
        line for line in listed.splitlines() if world.a.sender in line and world.b.name in line
    ] == []


def test_c_echo_answers_registered_senders_only(world: Boundary) -> None:
    for hospital in (world.a, world.b):
        assoc = _associate(world, hospital.sender, build_context(Verification))
        try:
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    assoc = _request(world, "NOT-A-SENDER", build_context(Verification))
    assert assoc.is_rejected, f"not rejected: aborted={assoc.is_aborted}"


def test_c_get_is_not_offered(world: Boundary) -> None:
    """The pynetdicom edge accepts no C-GET presentation context. Orthanc 1.10 accepts them
    whatever its peers may do, and refuses each C-GET: no peer is allowed it (README "The
    ingest edge"), so even the caller's own study is not sent."""
    a_own = world.a.own
    assert a_own is not None
    ae = AE(ae_title=world.a.sender)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class in (
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelGet,
        Verification,
    ):
        ae.add_requested_context(sop_class)
    ae.add_requested_context(CTImageStorage)
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        world.port,
        ae_title=world.called,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if world.stack.edge is GatewayEdge.PYNETDICOM:
            assert accepted == {str(Verification), str(CTImageStorage)}
            return
        assert str(StudyRootQueryRetrieveInformationModelGet) in accepted
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = a_own.study
        answers = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        if assoc.is_established:
            assoc.release()
    # a failure status, or none at all (Orthanc aborts the association)
    statuses = [int(status.Status) for status, _ in answers if "Status" in status]
    assert 0x0000 not in statuses, [f"0x{code:04X}" for code in statuses]
    assert received == []


def _arrived(world: Boundary, uid: str) -> bool:
    """The instance reached Orthanc, or the quarantine."""
    quarantine = Quarantine(world.stack.settings.paths.quarantine_dir)
    if uid in {entry.sop_instance_uid for entry in quarantine.list()}:
        return True
    archive = world.stack.archive()
    try:
        return bool(archive.search_for_instances({"SOPInstanceUID": uid}))
    finally:
        archive.close()


def test_c_store_into_another_hospitals_study_does_not_join_it(world: Boundary) -> None:
    b_own = world.b.own
    assert b_own is not None
    data, intruder = _instance(b_own.patient_id, "Intruder^Test", b_own.study)
    status = _store(world, world.a, data)
    if status == 0x0000:  # acknowledged: it must not have joined B's study
        assert wait_until(lambda: _arrived(world, intruder.instance), timeout_s=60)
    answers = _find(world, world.b, "STUDY_ROOT", "IMAGE", StudyInstanceUID=b_own.study)
    seen = {str(a.SOPInstanceUID) for a in answers}
    assert b_own.instance in seen  # B's study is still B's
    assert intruder.instance not in seen


@pytest.mark.parametrize(("model", "level"), QUERIES, ids=[f"{m}-{lv}" for m, lv in QUERIES])
def test_c_find_never_shows_another_hospitals_studies(
    world: Boundary, model: str, level: str
) -> None:
    b_own = world.b.own
    assert b_own is not None
    for keys in _guesses(world, level):
        answers = _find(world, world.a, model, level, **keys)
        assert not _leaks(answers, b_own), (keys, _leaks(answers, b_own))
        assert not _leaks(answers, world.b.shared), (keys, _leaks(answers, world.b.shared))
    # the same question from B's sender finds B's study: the queries above would match
    keyword = UNIQUE[level]
    mine = _find(world, world.b, model, level, **{keyword: b_own.value(keyword)})
    assert [str(a.get(keyword)) for a in mine] == [b_own.value(keyword)]


def test_patient_level_c_find_answers_only_from_the_callers_studies(world: Boundary) -> None:
    a_shared, b_shared = world.a.shared, world.b.shared
    assert a_shared and b_shared
    [answer] = _find(world, world.a, "PATIENT_ROOT", "PATIENT", PatientID=a_shared.patient_id)
    assert str(answer.PatientName) == a_shared.patient_name  # not B's, who stored first
    assert int(answer.NumberOfPatientRelatedStudies) == 1  # A's study only


def _move(world: Boundary, hospital: Hospital, destination: str, model: str, **keys: str) -> int:
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    assoc = _associate(world, hospital.sender, build_context(MOVE[model]))
    final = None
    try:
        for status, _ in assoc.send_c_move(identifier, destination, MOVE[model]):
            if status is not None and status.Status not in (0xFF00, 0xFF01):
                final = int(status.Status)
    finally:
        assoc.release()
    assert final is not None, "no final C-MOVE response"
    return final


def _move_keys(stored: Stored, model: str, level: str) -> dict[str, str]:
    keys = {"QueryRetrieveLevel": level}
    if model == "PATIENT_ROOT":
        keys["PatientID"] = stored.patient_id
    chain = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    depth = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}[level]
    keys |= {keyword: stored.value(keyword) for keyword in chain[:depth]}
    return keys


@pytest.mark.parametrize(("model", "level"), QUERIES, ids=[f"{m}-{lv}" for m, lv in QUERIES])
def test_c_move_never_sends_another_hospitals_studies(
    world: Boundary, model: str, level: str
) -> None:
    b_own = world.b.own
    assert b_own is not None
    keys = _move_keys(b_own, model, level)
    world.a.received.clear()
    status = _move(world, world.a, world.a.destination, model, **keys)
    assert status == 0x0000, f"0x{status:04X}"  # nothing matched in A's scope
    assert not [ds for ds in world.a.received if ds.StudyInstanceUID == b_own.study]
    # to B's own destination, A's sender may not send at all
    world.b.received.clear()
    refused = _move(world, world.a, world.b.destination, model, **keys)
    assert refused == MOVE_REFUSED[world.stack.edge], f"0x{refused:04X}"
    assert world.b.received == []
    # B's sender, the same keys: B's instance arrives (the keys would match)
    world.b.received.clear()
    assert _move(world, world.b, world.b.destination, model, **keys) == 0x0000
    assert b_own.instance in {str(ds.SOPInstanceUID) for ds in world.b.received}


def test_the_shared_patient_is_moved_only_with_the_callers_studies(world: Boundary) -> None:
    a_shared, b_shared = world.a.shared, world.b.shared
    assert a_shared and b_shared
    world.a.received.clear()
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": a_shared.patient_id}
    assert _move(world, world.a, world.a.destination, "PATIENT_ROOT", **keys) == 0x0000
    assert {str(ds.StudyInstanceUID) for ds in world.a.received} == {a_shared.study}
