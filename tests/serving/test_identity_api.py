"""Patient identity over the real API under uvicorn (issue 15): FHIR PIXm ``$ihe-pix``,
purpose-bound context tokens with break-glass, and ``require_purpose`` refusing tokens
without the right purpose; answers validated with ``fhir.resources``, records read back from
the audit trail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters

from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import Role
from core.identity import PatientIdentifier, PatientIdentity, authority_system
from core.secrets import load_secrets
from core.security import Accounts, Actor, Principal, Purpose, TokenService
from serving.api.app import create_app
from serving.api.security import require_purpose
from tests.audit_records import audit_records
from tests.helpers import served

USERS = {
    "admin-a": (Role.ADMIN, ["A"]),
    "admin-ab": (Role.ADMIN, ["A", "B"]),
    "dr-a": (Role.PEER_HOSPITAL, ["A"]),
    "dr-b": (Role.PEER_HOSPITAL, ["B"]),
    "dr-c": (Role.PEER_HOSPITAL, ["C"]),
    "res": (Role.RESEARCHER, []),
}
A1 = PatientIdentifier("A", "A-0001", "HOSP_A")
B7 = PatientIdentifier("B", "B-77", "HOSP_B")
NHS = "9434765919"


@dataclass
class World:
    client: httpx.Client
    settings: Settings
    tokens: TokenService
    patient: str  # the key of A1 = B7 (linked by the national number)
    other: str  # another patient of B only
    home: Path

    def bearer(self, name: str, **claims: Any) -> dict[str, str]:
        role, _ = USERS[name]
        return {"Authorization": f"Bearer {self.tokens.issue(name, [role], **claims)}"}

    def context(self, name: str, **body: Any) -> httpx.Response:
        return self.client.post("/api/auth/context-token", json=body, headers=self.bearer(name))

    def pix(self, headers: dict[str, str], source: str, **params: Any) -> httpx.Response:
        return self.client.get(
            "/api/fhir/Patient/$ihe-pix",
            params={"sourceIdentifier": source, **params},
            headers=headers,
        )


def _purpose_probe(
    principal: Annotated[Principal, Depends(require_purpose(Purpose.TREATMENT))],
) -> dict[str, str | None]:
    return {"patient": principal.patient_key}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = load_settings(home=tmp_path, mode="dev")
    db = Database.from_settings(settings)
    upgrade(db)
    trail = AuditTrail.from_secrets(db, load_secrets(settings))
    accounts = Accounts(db, trail)
    for name, (role, hospitals) in USERS.items():
        accounts.add_user(name, role, hospitals=hospitals, actor=Actor.cli())
    identity = PatientIdentity(db, trail)
    patient = identity.register("A", A1.patient_id, "HOSP_A", [(NHS, "NHS")])
    identity.register("B", B7.patient_id, "HOSP_B", [(NHS, "NHS")])
    identity.add_authority("NHS", "national", actor=Actor.cli())
    other = identity.register("B", "B-99", "HOSP_B")
    db.dispose()
    app = create_app(settings)
    app.add_api_route("/api/test/treatment-only", _purpose_probe)  # a federated route's guard
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        tokens = TokenService(settings, load_secrets(settings).jwt_signing_key)
        yield World(client, settings, tokens, patient, other, tmp_path)


def _targets(answer: httpx.Response) -> tuple[set[tuple[str, str]], list[str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    parameters = Parameters.model_validate_json(answer.text)
    identifiers: set[tuple[str, str]] = set()
    ids: list[str] = []
    for p in parameters.parameter or []:
        if p.name == "targetIdentifier" and p.valueIdentifier is not None:
            identifiers.add((str(p.valueIdentifier.system), str(p.valueIdentifier.value)))
        elif p.name == "targetId" and p.valueReference is not None:
            ids.append(str(p.valueReference.reference))
    return identifiers, ids


def _outcome(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    outcome = OperationOutcome.model_validate_json(answer.text)
    assert outcome.issue[0].code == code


def test_ihe_pix_answers_an_admin_per_pixm(world: World) -> None:
    admin = world.bearer("admin-a")
    found, ids = _targets(world.pix(admin, f"{A1.system}|{A1.patient_id}"))
    # A's admin: A's domains and the national number, never B's local ID
    assert found == {("urn:radcloud:pid:A:NHS", NHS), (authority_system("NHS"), NHS)}
    assert ids == [f"Patient/{world.patient}"]
    both = world.bearer("admin-ab")
    assert _targets(world.pix(both, f"{A1.system}|{A1.patient_id}"))[0] == {
        (B7.system, "B-77"),
        ("urn:radcloud:pid:A:NHS", NHS),
        ("urn:radcloud:pid:B:NHS", NHS),
        (authority_system("NHS"), NHS),
    }
    # narrowed to B's domain; by the national number as source
    assert _targets(world.pix(both, f"{A1.system}|A-0001", targetSystem=B7.system))[0] == {
        (B7.system, "B-77")
    }
    assert (B7.system, "B-77") in _targets(world.pix(both, f"{authority_system('NHS')}|{NHS}"))[0]
    assert _targets(world.pix(admin, f"{A1.system}|A-0001", targetSystem=B7.system))[0] == set()
    # a known domain without that patient: an empty Parameters
    assert _targets(world.pix(admin, f"{A1.system}|A-9999")) == (set(), [])
    _outcome(world.pix(admin, "urn:radcloud:pid:Nowhere|1"), 404, "not-found")
    _outcome(world.pix(admin, "urn:oid:1.2.3|1"), 404, "not-found")
    _outcome(world.pix(admin, f"{A1.system}|A-0001", targetSystem="urn:x:y"), 403, "code-invalid")
    _outcome(world.pix(admin, "no-bar"), 400, "invalid")
    # B's domain is not A's admin's to ask about: unknown to it
    _outcome(world.pix(admin, f"{B7.system}|B-77"), 404, "not-found")
    queries = [r for r in audit_records(world.home) if r["event_code"] == "110112"]
    assert len(queries) == 11
    assert queries[0]["resource_id"] == world.patient and queries[0]["patient_id_hash"]
    assert "A-0001" not in str([q["detail"] for q in queries])


def test_peer_hospital_needs_a_treatment_token_of_that_patient(world: World) -> None:
    source = f"{B7.system}|B-77"
    _outcome(world.pix(world.bearer("dr-b"), source), 403, "forbidden")  # no purpose
    token = world.context("dr-b", purpose="treatment", patient=world.patient)
    assert token.status_code == 200, token.text
    assert token.json()["break_glass"] is False  # B holds an identifier of the patient
    treating = {"Authorization": f"Bearer {token.json()['access_token']}"}
    found, ids = _targets(world.pix(treating, source))
    assert (A1.system, "A-0001") in found and ids == [f"Patient/{world.patient}"]
    # another patient's identifier: answered as an unknown patient, and recorded
    assert _targets(world.pix(treating, f"{B7.system}|B-99")) == (set(), [])
    refused = [r for r in audit_records(world.home) if r["event_code"] == "110112"][-1]
    assert refused["outcome"] == 4 and "treatment token" in refused["detail"]["reason"]
    research = world.context("dr-b", purpose="research").json()["access_token"]
    _outcome(world.pix({"Authorization": f"Bearer {research}"}, source), 403, "forbidden")


def test_context_token_break_glass_and_research(world: World) -> None:
    refused = world.context("dr-c", purpose="treatment", patient=world.patient)
    assert refused.status_code == 403
    assert "break-glass" in refused.json()["detail"]
    glass = world.context(
        "dr-c", purpose="treatment", patient=world.patient, reason="unconscious in our ED"
    )
    assert glass.status_code == 200 and glass.json()["break_glass"] is True
    assert glass.json()["expires_in"] == world.settings.context_token_ttl_minutes * 60
    me = world.client.get(
        "/api/me", headers={"Authorization": f"Bearer {glass.json()['access_token']}"}
    ).json()
    assert (me["purpose"], me["patient"]) == ("treatment", world.patient)
    records = audit_records(world.home)
    broke = [r for r in records if r["detail"].get("break_glass") is True]
    assert [(r["event_code"], r["user_name"], r["resource_id"]) for r in broke] == [
        ("110113", "dr-c", world.patient),
        ("110114", "dr-c", world.patient),
    ]
    assert broke[0]["detail"]["reason"] == "unconscious in our ED"
    assert any(
        r["detail"].get("change") == "context token refused" and r["outcome"] == 4 for r in records
    )

    research = world.context("res", purpose="research")
    assert research.status_code == 200 and research.json()["patient"] is None
    assert world.context("res", purpose="treatment", patient=world.patient).status_code == 403
    assert world.context("dr-a", purpose="treatment").status_code == 422  # no patient
    assert world.context("dr-a", purpose="research", patient=world.patient).status_code == 422
    assert world.context("dr-a", purpose="treatment", patient="rcp-nope").status_code == 404
    assert world.context("dr-a", purpose="marketing").status_code == 422


def test_require_purpose_refuses_missing_wrong_and_expired(world: World) -> None:
    probe = "/api/test/treatment-only"
    treatment = world.context("dr-a", purpose="treatment", patient=world.patient)
    bound = {"Authorization": f"Bearer {treatment.json()['access_token']}"}
    assert world.client.get(probe, headers=bound).json() == {"patient": world.patient}

    none = world.client.get(probe, headers=world.bearer("dr-a"))
    assert none.status_code == 403 and "without a purpose" in none.json()["detail"]
    research = world.context("dr-a", purpose="research").json()["access_token"]
    wrong = world.client.get(probe, headers={"Authorization": f"Bearer {research}"})
    assert wrong.status_code == 403 and '"research"' in wrong.json()["detail"]
    expired = world.bearer(
        "dr-a",
        ttl=dt.timedelta(seconds=-5),
        purpose="treatment",
        patient_key=world.patient,
    )
    gone = world.client.get(probe, headers=expired)
    assert gone.status_code == 401 and gone.json()["detail"] == "token has expired"
    alerts = [
        r
        for r in audit_records(world.home)
        if r["resource_id"] == f"GET {probe}" and r["outcome"] == 4
    ]
    assert [r["event_code"] for r in alerts] == ["110113", "110113", "110114"]
    assert alerts[0]["detail"]["reason"] == "purpose of use not allowed"


def test_patient_administration_stays_inside_the_admins_hospitals(world: World) -> None:
    admin_a, admin_ab = world.bearer("admin-a"), world.bearer("admin-ab")
    c = world.client
    listed = c.get("/api/patients", headers=admin_a).json()
    assert {i["hospital"] for p in listed for i in p["identifiers"]} == {"A"}
    assert "B-77" not in c.get(f"/api/patients/{world.patient}", headers=admin_a).text
    assert c.get(f"/api/patients/{world.other}", headers=admin_a).status_code == 404  # B's only
    assert c.get("/api/patients/not-a-key", headers=admin_a).status_code == 400

    c5 = {"hospital": "B", "patient_id": "B-99", "issuer_of_patient_id": "HOSP_B"}
    a1 = {"hospital": "A", "patient_id": "A-0001", "issuer_of_patient_id": "HOSP_A"}
    body = {"a": a1, "b": c5, "reason": "same patient: referral letter"}
    refused = c.post("/api/patients/links", json=body, headers=admin_a)
    assert refused.status_code == 404 and "B-99" not in refused.text
    linked = c.post("/api/patients/links", json=body, headers=admin_ab)
    assert linked.status_code == 200, linked.text
    assert linked.json()["patient_key"] == world.patient
    shown = c.get(f"/api/patients/{world.other}", headers=admin_ab).json()  # merged: resolved
    assert shown["patient_key"] == world.patient
    assert [(link["kind"], link["reason"]) for link in shown["links"] if link["kind"] == "manual"]
    unlinked = c.post(
        "/api/patients/unlink", json={"identifier": c5, "reason": "wrong patient"}, headers=admin_a
    )
    assert unlinked.status_code == 404  # B's identifier: not A's admin's
    unlinked = c.post(
        "/api/patients/unlink", json={"identifier": c5, "reason": "wrong patient"}, headers=admin_ab
    )
    assert unlinked.json()["patient_key"] == world.other
    again = c.post(
        "/api/patients/unlink", json={"identifier": c5, "reason": "again"}, headers=admin_ab
    )
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    nhs = {"issuer_of_patient_id": "NATIONAL2", "kind": "national"}
    assert c.post("/api/patients/authorities", json=nhs, headers=admin_ab).status_code == 403
    assert c.get("/api/patients/authorities", headers=admin_a).json() == [
        {"issuer_of_patient_id": "NHS", "kind": "national"}
    ]
    changes = [
        (r["user_name"], r["detail"].get("change"), r["outcome"])
        for r in audit_records(world.home)
        if r["event_code"] == "110113" and r["detail"].get("via") == "http"
    ]
    assert changes == [
        ("admin-a", "identifiers linked", 4),
        ("admin-ab", "identifiers linked", 0),
        ("admin-a", "identifier unlinked", 4),
        ("admin-ab", "identifier unlinked", 0),
        ("admin-ab", "identifier unlinked", 4),
        ("admin-ab", "authority rule added", 4),
    ]


def test_an_admin_retracts_its_hospitals_asserted_link_and_lifts_it(world: World) -> None:
    admin_a, c = world.bearer("admin-a"), world.client
    a1 = {"hospital": "A", "patient_id": "A-0001", "issuer_of_patient_id": "HOSP_A"}
    a_nhs = {"hospital": "A", "patient_id": NHS, "issuer_of_patient_id": "NHS"}
    b7 = {"hospital": "B", "patient_id": "B-77", "issuer_of_patient_id": "HOSP_B"}
    b_nhs = {"hospital": "B", "patient_id": NHS, "issuer_of_patient_id": "NHS"}
    ghost = {"hospital": "A", "patient_id": "A-9999", "issuer_of_patient_id": "HOSP_A"}
    wrong = {"identifier": a1, "other": a_nhs, "reason": "NHS number of another patient"}

    def retract(body: dict[str, Any]) -> httpx.Response:
        return c.post("/api/patients/retractions", json=body, headers=admin_a)

    assert retract(wrong | {"reason": " "}).status_code == 422
    assert retract(wrong | {"other": ghost}).status_code == 404
    outside = retract({"identifier": b7, "other": b_nhs, "reason": "not A's to retract"})
    assert outside.status_code == 404 and "B-77" not in outside.text
    done = retract(wrong)
    assert done.status_code == 200, done.text
    assert done.json()["patient_key"] == world.patient
    assert done.json()["other_patient_key"] != world.patient  # A-0001 split off
    assert retract(wrong).status_code == 409
    [listed] = c.get("/api/patients/retractions", headers=admin_a).json()
    assert (listed["identifier"], listed["other"]["patient_id"], listed["asserted_by"]) == (
        a1 | {"system": "urn:radcloud:pid:A:HOSP_A"},
        NHS,
        "A",
    )
    lifted = c.post("/api/patients/retractions/lift", json=wrong, headers=admin_a)
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["patient_key"] == world.patient
    assert {i["patient_id"] for i in lifted.json()["identifiers"]} == {"A-0001", NHS}  # A's only
    assert c.get("/api/patients/retractions", headers=admin_a).json() == []
    changes = [
        (r["detail"].get("change"), r["outcome"])
        for r in audit_records(world.home)
        if r["event_code"] == "110113" and r["user_name"] == "admin-a"
    ]
    assert changes == [
        ("assertion retracted", 4),
        ("assertion retracted", 4),
        ("assertion retracted", 4),
        ("assertion retracted", 0),
        ("assertion retracted", 4),
        ("retraction lifted", 0),
    ]
