"""Federated search on real parts: the API under uvicorn, two tenants of this deployment (their
studies and patients in the application database, as the gateway records them), a plain
Orthanc with its DICOMweb plugin registered as a remote node, and a registered node that is
down. The same patient is known as N-1 at North, S-77 at South (linked by a national number),
and under that national number at Lakeside."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import uvicorn
from fhir.resources.R4B.bundle import Bundle
from pydicom.uid import generate_uid

from core.archive import DicomwebArchive, open_local_dicomweb
from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import Role, Study, StudyState
from core.identity import PatientIdentity
from core.nodes import NodeCredentials, NodeRegistry
from core.secrets import Secrets, load_secrets
from core.security import Accounts, Actor, TokenService
from core.tenancy import hospital_row
from imaging.deid import RESEARCH_SCOPE, Pseudonymizer
from radcloud.services import Supervisor, orthanc_component
from serving.api.app import create_app
from tests.audit_records import audit_records
from tests.core.test_dicomweb_archive import orthanc  # noqa: F401 - the remote node's Orthanc
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import free_port, free_ports, wait_until

pytestmark = pytest.mark.integration

USERS = {
    "dr-north": (Role.PEER_HOSPITAL, ["North"]),
    "dr-east": (Role.PEER_HOSPITAL, ["East"]),
    "res": (Role.RESEARCHER, []),
}


@dataclass
class World:
    client: httpx.Client
    tokens: TokenService
    home: Path
    patient: str  # N-1 at North = S-77 at South = the national number at Lakeside
    national: str  # the patient's national number (new per test: the Orthanc is the module's)
    other: str  # N-2 at North
    studies: dict[str, str]  # name -> Study Instance UID
    pseudonyms: Pseudonymizer  # the research scope's, to find this test's studies

    def bearer(self, name: str, **claims: Any) -> dict[str, str]:
        role, _ = USERS[name]
        return {"Authorization": f"Bearer {self.tokens.issue(name, [role], **claims)}"}

    def context(self, name: str, **body: Any) -> dict[str, str]:
        answer = self.client.post("/api/auth/context-token", json=body, headers=self.bearer(name))
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _instance(study: str, **attributes: str) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(synthetic_ct(study, generate_uid())))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _tenant_study(
    db: Database,
    archive: DicomwebArchive,
    hospital: str,
    *,
    patient_id: str,
    issuer: str,
    date: str,
    uid: str | None = None,
) -> str:
    """A study of ``hospital`` as the gateway leaves it: in the local Orthanc and its row."""
    uid = uid or generate_uid()
    archive.store_instance(
        _instance(
            uid,
            PatientID=patient_id,
            IssuerOfPatientID=issuer,
            PatientName="DOE^JANE",
            StudyDate=date,
        )
    )
    with db.session() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                hospital_id=hospital_row(session, hospital).id,
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                patient_name="DOE^JANE",
                patient_birth_date="19700101",
                accession_number="ACC" + patient_id,
                study_date=date,
                modalities="CT",
                state=StudyState.READY,
                instance_count=1,
            )
        )
    return uid


@pytest.fixture
def world(
    tmp_path: Path,
    orthanc: tuple[Settings, Secrets],  # noqa: F811
) -> Iterator[World]:
    remote_settings, remote_secrets = orthanc
    national = str(uuid.uuid4().int)[:10]
    lakeside = generate_uid()
    stranger = generate_uid()
    shared = generate_uid()  # sent to both South and Lakeside: one row held by both
    with open_local_dicomweb(remote_settings, remote_secrets) as node:
        node.store_instances(
            [
                _instance(
                    lakeside,
                    PatientID=national,
                    IssuerOfPatientID="NHS",
                    PatientName="DOE^JANE",
                    StudyDate="20240102",
                ),
                _instance(stranger, PatientID="L-999", PatientName="ROE^RICHARD"),
                _instance(
                    shared,
                    PatientID=national,
                    IssuerOfPatientID="NHS",
                    PatientName="DOE^JANE",
                    StudyDate="20240606",
                ),
            ]
        )
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path,
        mode="dev",
        remote_read_timeout_s=5.0,
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
    )
    secrets = load_secrets(settings)
    local_orthanc = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    local_orthanc.up()
    stack = contextlib.ExitStack()
    stack.callback(local_orthanc.down)
    local = stack.enter_context(open_local_dicomweb(settings, secrets))
    db = Database.from_settings(settings)
    upgrade(db)
    trail = AuditTrail.from_secrets(db, load_secrets(settings))
    accounts = Accounts(db, trail)
    for name, (role, hospitals) in USERS.items():
        accounts.add_user(name, role, hospitals=hospitals, actor=Actor.cli())
    registry = NodeRegistry(db, trail, settings)
    port = remote_settings.orthanc_http_port
    registry.add_node(
        "Lakeside",
        f"http://127.0.0.1:{port}/dicom-web",
        credentials=NodeCredentials(remote_secrets.orthanc_user, remote_secrets.orthanc_password),
        actor=Actor.cli(),
    )
    registry.add_node("Offline", f"http://127.0.0.1:{free_port()}/dicom-web", actor=Actor.cli())
    identity = PatientIdentity(db, trail)
    identity.add_authority("NHS", "national", actor=Actor.cli())
    patient = identity.register("North", "N-1", "MRN-N", [(national, "NHS")])
    identity.register("South", "S-77", "MRN-S", [(national, "NHS")])
    other = identity.register("North", "N-2", "MRN-N")
    studies = {
        "north": _tenant_study(
            db, local, "North", patient_id="N-1", issuer="MRN-N", date="20250110"
        ),
        "north-other": _tenant_study(
            db, local, "North", patient_id="N-2", issuer="MRN-N", date="20250111"
        ),
        "south": _tenant_study(
            db, local, "South", patient_id="S-77", issuer="MRN-S", date="20230505"
        ),
        "lakeside": lakeside,
        "stranger": stranger,
        "shared": _tenant_study(
            db, local, "South", patient_id="S-77", issuer="MRN-S", date="20240606", uid=shared
        ),
    }
    db.dispose()
    app = create_app(settings)
    api_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
            tokens = TokenService(settings, load_secrets(settings).jwt_signing_key)
            research = Pseudonymizer(load_secrets(settings).deid_hmac_key, RESEARCH_SCOPE)
            yield World(client, tokens, tmp_path, patient, national, other, studies, research)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        stack.close()


def _states(answer: dict[str, Any]) -> dict[str, str]:
    return {node["hospital"]: node["state"] for node in answer["nodes"]}


def test_treatment_search_returns_the_patients_studies_from_every_hospital(world: World) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    answer = world.client.get("/api/federated/studies", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = {row["study_instance_uid"]: row for row in body["studies"]}
    s = world.studies
    assert set(rows) == {s["north"], s["south"], s["lakeside"], s["shared"]}
    assert rows[s["shared"]]["held_by"] == ["South", "Lakeside"]  # one row, both holders
    assert rows[s["north"]]["held_by"] == ["North"]
    assert rows[s["lakeside"]]["held_by"] == ["Lakeside"]
    assert rows[s["lakeside"]]["patient_id"] == world.national
    assert {row["patient_key"] for row in rows.values()} == {world.patient}
    assert rows[s["north"]]["retrieve_urls"]["North"].endswith(
        f"/api/federated/hospitals/North/dicom-web/studies/{s['north']}"
    )
    # a node that is down is named, not silently missing
    assert _states(body) == {
        "North": "ok",
        "South": "ok",
        "Lakeside": "ok",
        "Offline": "error",
    }
    assert body["partial"] is True
    # audited at the requesting side: who, why, which patient, which nodes, which studies
    [record] = [
        r
        for r in audit_records(world.home)
        if r["event_code"] == "110112" and (r["detail"] or {}).get("federated")
    ]
    assert record["user_name"] == "dr-north"
    assert record["detail"]["purpose"] == "treatment"
    assert record["resource_id"] == world.patient
    assert {n["hospital"] for n in record["detail"]["nodes"]} == set(_states(body))
    assert {r["study_instance_uid"] for r in record["detail"]["returned"]} == set(rows)


def test_fhir_imaging_study_search_is_a_partial_searchset(world: World) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    answer = world.client.get(
        "/api/fhir/ImagingStudy",
        params={"patient": f"Patient/{world.patient}", "started": "ge2024-01-01"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(answer.text)
    assert bundle.type == "searchset"
    matches = [e.resource for e in bundle.entry if e.search.mode == "match"]
    uids = {r.identifier[0].value.removeprefix("urn:oid:") for r in matches}
    assert uids == {world.studies[n] for n in ("north", "lakeside", "shared")}  # south: 2023
    endpoints = [e.resource for e in bundle.entry if e.search.mode == "include"]
    assert {e.connectionType.code for e in endpoints} == {"dicom-wado-rs"}
    [outcome] = [e.resource for e in bundle.entry if e.search.mode == "outcome"]
    assert "Offline" in outcome.issue[0].diagnostics


def test_a_treatment_token_cannot_search_another_patient(world: World) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    answer = world.client.get(
        "/api/federated/studies", params={"patient": world.other}, headers=headers
    )
    assert answer.status_code == 403, answer.text
    assert world.studies["north-other"] not in answer.text


def test_tokens_without_purpose_wrong_purpose_or_expired_are_refused(world: World) -> None:
    plain = world.client.get("/api/federated/studies", headers=world.bearer("dr-north"))
    assert plain.status_code == 403
    expired = world.bearer(
        "dr-north", purpose="treatment", patient_key=world.patient, ttl=dt.timedelta(seconds=-5)
    )
    assert world.client.get("/api/federated/studies", headers=expired).status_code == 401
    research = world.context("res", purpose="research")
    named = world.client.get(
        "/api/federated/studies", params={"patient": world.patient}, headers=research
    )
    assert named.status_code == 403  # a research token names no patient


def _walk(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    elif value is not None:
        yield str(value)


def test_research_search_is_deidentified_with_one_pseudonym_per_patient(world: World) -> None:
    headers = world.context("res", purpose="research")
    first = world.client.get("/api/federated/studies", params={"modality": "CT"}, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert _states(body)["Lakeside"] == "ok"
    values = set(_walk(body["studies"]))
    originals = set(world.studies.values()) | {
        "N-1",
        "N-2",
        "S-77",
        world.national,
        "L-999",
        "DOE^JANE",
        "ROE^RICHARD",
        "MRN-N",
        "19700101",
        "ACCN-1",
        "20250110",
    }
    uids = set(world.studies.values())
    leaked = (values & originals) | {v for v in values for uid in uids if uid in v}
    assert not leaked, f"identifying values in a research answer: {leaked}"
    mine = {world.pseudonyms.uid(uid): name for name, uid in world.studies.items()}
    rows = {r["study_instance_uid"]: r for r in body["studies"] if r["study_instance_uid"] in mine}
    assert set(rows) == set(mine)  # the module's Orthanc holds other tests' studies too
    pseudonym = {mine[uid]: row["patient_id"] for uid, row in rows.items()}
    # N-1, S-77 and the national number are one patient: one pseudonym at three hospitals
    assert pseudonym["north"] == pseudonym["south"] == pseudonym["lakeside"], pseudonym
    assert len({pseudonym["north"], pseudonym["north-other"], pseudonym["stranger"]}) == 3
    # dates moved by the patient's shift, intervals kept
    north, south = (
        rows[world.pseudonyms.uid(world.studies["north"])],
        rows[world.pseudonyms.uid(world.studies["south"])],
    )
    day = dt.datetime.strptime
    kept = day(north["study_date"], "%Y%m%d") - day(south["study_date"], "%Y%m%d")
    assert kept == day("20250110", "%Y%m%d") - day("20230505", "%Y%m%d")
    assert north["study_date"] != "20250110"
    again = world.client.get(
        "/api/federated/studies", params={"modality": "CT"}, headers=headers
    ).json()
    same = {r["study_instance_uid"]: r["patient_id"] for r in again["studies"]}
    assert {uid: same[uid] for uid in rows} == {uid: r["patient_id"] for uid, r in rows.items()}


def _uris(value: Any) -> Iterator[tuple[str, str]]:
    """(key, URI) of every BulkDataURI and RetrieveURL in a DICOM JSON answer."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("BulkDataURI", "RetrieveURL") and isinstance(item, str):
                yield key, item
            else:
                yield from _uris(item)
    elif isinstance(value, list):
        for item in value:
            yield from _uris(item)


def _parts(answer: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    chunks = answer.content.split(b"--" + boundary.encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


def test_treatment_retrieves_the_patients_studies_from_tenant_and_remote(world: World) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    for hospital, name in (("South", "south"), ("Lakeside", "lakeside")):
        base = f"/api/federated/hospitals/{hospital}/dicom-web/studies/{world.studies[name]}"
        metadata = world.client.get(f"{base}/metadata", headers=headers)
        assert metadata.status_code == 200, metadata.text
        [instance] = metadata.json()
        assert instance["0020000D"]["Value"] == [world.studies[name]]
        root = str(world.client.base_url).rstrip("/")
        ours = f"{root}/api/federated/hospitals/{hospital}/dicom-web/studies/"
        uris = [v for k, v in _uris(metadata.json())]
        assert uris and all(uri.startswith(ours) for uri in uris), uris  # node URLs rewritten
        bulk = world.client.get(uris[0].removeprefix(root), headers=headers)
        assert bulk.status_code == 200, bulk.text
        series = world.client.get(f"{base}/series", headers=headers)
        assert series.status_code == 200, series.text
        [row] = series.json()
        series_uid = row["0020000E"]["Value"][0]
        study = world.client.get(base, headers=headers)
        assert study.status_code == 200, study.text
        [part] = _parts(study)
        dataset = pydicom.dcmread(io.BytesIO(part))
        assert dataset.StudyInstanceUID == world.studies[name]
        frames = world.client.get(
            f"{base}/series/{series_uid}/instances/{dataset.SOPInstanceUID}/frames/1",
            headers=headers,
        )
        assert frames.status_code == 200, frames.text
        assert len(_parts(frames)[0]) == dataset.Rows * dataset.Columns * 2
        rendered = world.client.get(  # the reading app's thumbnail
            f"{base}/series/{series_uid}/instances/{dataset.SOPInstanceUID}/rendered",
            headers=headers,
        )
        assert rendered.status_code == 200, rendered.text
        assert rendered.headers["content-type"] == "image/jpeg"
        assert rendered.content.startswith(b"\xff\xd8")  # a JPEG's SOI marker
    records = [
        r
        for r in audit_records(world.home)
        if r["event_code"] == "110103" and (r["detail"] or {}).get("federated")
    ]
    assert {r["detail"]["hospital"] for r in records} == {"South", "Lakeside"}
    assert {r["detail"]["node"] for r in records} == {"tenant", "remote"}
    assert all(r["detail"]["patient_key"] == world.patient for r in records)


def test_a_treatment_token_cannot_retrieve_another_patients_study(world: World) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    guesses = [
        ("North", world.studies["north-other"]),  # another patient of the same hospital
        ("Lakeside", world.studies["stranger"]),  # another patient at the remote node
        ("South", world.studies["north"]),  # the patient's study, but not South's
        ("North", generate_uid()),  # no such study
    ]
    for hospital, uid in guesses:
        answer = world.client.get(
            f"/api/federated/hospitals/{hospital}/dicom-web/studies/{uid}/metadata",
            headers=headers,
        )
        assert answer.status_code == 404, (hospital, answer.text)
        rendered = world.client.get(
            f"/api/federated/hospitals/{hospital}/dicom-web/studies/{uid}/series/"
            f"{generate_uid()}/instances/{generate_uid()}/rendered",
            headers=headers,
        )
        assert rendered.status_code == 404, (hospital, rendered.text)
        assert "DOE" not in answer.text and "ROE" not in answer.text
    alerts = [
        r
        for r in audit_records(world.home)
        if r["event_code"] == "110113" and (r["detail"] or {}).get("federated")
    ]
    assert {r["resource_id"] for r in alerts} == {uid for _, uid in guesses}
    research = world.context("res", purpose="research")
    north = world.studies["north"]
    answer = world.client.get(
        f"/api/federated/hospitals/North/dicom-web/studies/{north}/metadata", headers=research
    )
    assert answer.status_code == 403


@dataclass
class West:
    """A second radcloud deployment, registered as remote node "West" of the world's."""

    study: str
    home: Path
    url: str
    tokens: TokenService


@pytest.fixture
def west(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[West]:
    home = tmp_path_factory.mktemp("west-home")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=home,
        mode="dev",
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
    )
    secrets = load_secrets(settings)
    stack = contextlib.ExitStack()
    orthanc_process = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    orthanc_process.up()
    stack.callback(orthanc_process.down)
    try:
        db = Database.from_settings(settings)
        upgrade(db)
        trail = AuditTrail.from_secrets(db, secrets)
        # West shares its hospital's studies with the world's deployment: a peer_hospital
        # API key scoped to West, given to the other deployment's administrator
        west_accounts = Accounts(db, trail)
        key = west_accounts.create_api_key(
            "east-radcloud", Role.PEER_HOSPITAL, hospital="West", actor=Actor.cli()
        )
        west_accounts.add_user("dr-west", Role.PEER_HOSPITAL, hospitals=["West"], actor=Actor.cli())
        with open_local_dicomweb(settings, secrets) as local:
            study = _tenant_study(
                db, local, "West", patient_id=world.national, issuer="NHS", date="20221212"
            )
        db.dispose()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=api, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        stack.callback(thread.join, timeout=30)
        stack.callback(setattr, server, "should_exit", True)
        assert wait_until(lambda: server.started, timeout_s=60)
        url = f"http://127.0.0.1:{api}"
        ours = load_settings(home=world.home, mode="dev")
        ours_db = Database.from_settings(ours)
        NodeRegistry(ours_db, AuditTrail.from_secrets(ours_db, load_secrets(ours)), ours).add_node(
            "West",
            f"{url}/dicom-web",
            credentials=NodeCredentials(token=key.key),
            actor=Actor.cli(),
        )
        ours_db.dispose()
        west_tokens = TokenService(settings, secrets.jwt_signing_key)
        yield West(study, home, url, west_tokens)
    finally:
        stack.close()


def test_a_second_radcloud_answers_as_a_remote_node_and_audits_the_asserted_user(
    world: World, west: West
) -> None:
    headers = world.context("dr-north", purpose="treatment", patient=world.patient)
    found = world.client.get("/api/federated/studies", headers=headers)
    assert found.status_code == 200, found.text
    rows = {r["study_instance_uid"]: r["held_by"] for r in found.json()["studies"]}
    assert rows[west.study] == ["West"]
    assert _states(found.json())["West"] == "ok"
    base = f"/api/federated/hospitals/West/dicom-web/studies/{west.study}"
    metadata = world.client.get(f"{base}/metadata", headers=headers)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()[0]["0020000D"]["Value"] == [west.study]
    # the responding deployment recorded the peer's key and the user it asserts
    answered = [
        r
        for r in audit_records(west.home)
        if r["event_code"] == "110103" and r["resource_id"] == west.study
    ]
    assert answered, "West did not record the retrieval"
    assert answered[-1]["user_name"] == "east-radcloud"
    assert answered[-1]["detail"]["asserted_requester"] == {
        "user": "dr-north",
        "hospitals": "North",
        "purpose": "treatment",
    }
    # a clinician's own peer_hospital token does not open West's DICOMweb door
    with httpx.Client(base_url=west.url, timeout=30) as client:
        token = west.tokens.issue("dr-west", [Role.PEER_HOSPITAL])
        refused = client.get(
            f"/dicom-web/studies/{west.study}/metadata",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert refused.status_code == 403, refused.text


def _elements(dataset: pydicom.Dataset) -> Iterator[pydicom.DataElement]:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)
        else:
            yield element


def test_research_retrieval_is_deidentified_by_pseudonym_only(world: World) -> None:
    headers = world.context("res", purpose="research")
    rows = world.client.get("/api/federated/studies", params={"modality": "CT"}, headers=headers)
    assert rows.status_code == 200, rows.text
    by_uid = {r["study_instance_uid"]: r for r in rows.json()["studies"]}
    mine = {name: world.pseudonyms.uid(uid) for name, uid in world.studies.items()}
    assert all(by_uid[mine[name]]["held_by"] == [] for name in mine)  # no institution either
    originals = {
        *world.studies.values(),
        "N-1",
        "S-77",
        world.national,
        "DOE^JANE",
        "MRN-N",
        "MRN-S",
        "19700101",
    }
    seen_patients = {}
    for name in ("north", "south", "lakeside"):
        url = by_uid[mine[name]]["retrieve_urls"]["research"]
        metadata = world.client.get(f"{url}/metadata", headers=headers)
        assert metadata.status_code == 200, metadata.text
        [instance] = metadata.json()
        assert instance["0020000D"]["Value"] == [mine[name]]
        assert instance["00120062"]["Value"] == ["YES"]  # Patient Identity Removed
        text = metadata.text
        assert not [o for o in originals if o in text], name
        study = world.client.get(url, headers=headers)
        assert study.status_code == 200, study.text
        [part] = _parts(study)
        dataset = pydicom.dcmread(io.BytesIO(part))
        assert dataset.StudyInstanceUID == mine[name]
        values = {str(e.value) for e in _elements(dataset) if e.tag != 0x7FE00010}
        assert not {v for v in values for o in originals if o == v or (len(o) > 12 and o in v)}
        assert dataset.PatientIdentityRemoved == "YES"
        assert "113107" in {c.CodeValue for c in dataset.DeidentificationMethodCodeSequence}
        seen_patients[name] = dataset.PatientID
    # one patient at three hospitals: one pseudonym in the retrieved files, as in the rows
    assert len(set(seen_patients.values())) == 1
    assert seen_patients["north"] == by_uid[mine["north"]]["patient_id"]
    # a pseudonym no research answer showed, and a treatment token, are refused
    unknown = world.client.get(
        f"/api/federated/research/studies/{generate_uid()}/metadata", headers=headers
    )
    assert unknown.status_code == 404
    treatment = world.context("dr-north", purpose="treatment", patient=world.patient)
    refused = world.client.get(f"{url}/metadata", headers=treatment)
    assert refused.status_code == 403
    records = [
        r
        for r in audit_records(world.home)
        if r["event_code"] == "110103" and (r["detail"] or {}).get("purpose") == "research"
    ]
    assert {r["resource_id"] for r in records} >= {
        world.studies["north"],
        world.studies["lakeside"],
    }
