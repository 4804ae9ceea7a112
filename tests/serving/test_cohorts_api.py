"""Research cohorts over the real API under uvicorn, a real Orthanc (body parts) and a real
SQLite database (issue 15): counts per hospital against a direct SQL computation, small cells
and the total suppressed, no real identifier in any answer, one pseudonym for a patient linked
across hospitals, refusals of every token but a researcher's research token, audit records."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select, text

from core.archive import open_archive
from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import Cohort, Role
from core.identity import PatientIdentity
from core.secrets import load_secrets
from core.security import Accounts, Actor, Purpose, TokenService
from imaging.deid import Pseudonymizer
from radcloud.services import Supervisor, orthanc_component
from serving.api.app import create_app
from serving.cohorts import suppress
from tests.audit_records import audit_records
from tests.cohort_studies import CohortStudy, add_ai, add_study
from tests.helpers import free_port, free_ports, wait_until

pytestmark = pytest.mark.integration

K = 3  # the minimum cell size of these tests
NORTH, SOUTH, EAST, WEST = "North", "South", "East", "West"
USERS = {
    "res": (Role.RESEARCHER, []),
    "res-2": (Role.RESEARCHER, []),
    "adm": (Role.ADMIN, [NORTH]),
    "rad": (Role.RADIOLOGIST, [NORTH]),
}
BLEED = ("haemorrhage", True)
HEAD_CT_BLEEDS_2025 = {
    "modality": "CT",
    "study_date_from": "2025-01-01",
    "study_date_to": "2025-12-31",
    "label": {"finding": "Haemorrhage", "present": True},
}


@dataclass
class World:
    client: httpx.Client
    settings: Settings
    tokens: TokenService
    studies: dict[str, CohortStudy]
    patient_key: str  # North n1 and South s1: one patient, linked by the national number
    home: Path

    def headers(self, name: str, purpose: str | None = "research", **claims: Any) -> dict[str, str]:
        role, _ = USERS[name]
        token = self.tokens.issue(name, [role], purpose=purpose, **claims)
        return {"Authorization": f"Bearer {token}"}

    def create(self, user: str = "res", **body: Any) -> httpx.Response:
        return self.client.post("/api/cohorts", json=body, headers=self.headers(user))

    def database(self) -> Database:
        return Database.from_settings(self.settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    home = tmp_path_factory.mktemp("cohorts-home")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=home,
        mode="dev",
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
        cohort_min_cell_size=K,
    )
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        db = Database.from_settings(settings)
        upgrade(db)
        trail = AuditTrail.from_secrets(db, secrets)
        studies: dict[str, CohortStudy] = {}
        with open_archive(settings, secrets) as orthanc:

            def put(name: str, hospital: str, number: int, **kwargs: Any) -> None:
                studies[name] = add_study(orthanc, db, hospital, number, **kwargs)

            # matching head CTs of 2025 with a haemorrhage: North 4, South 3, East 1
            put("n1", NORTH, 1, patient_id="N-0001", issuer="NORTH", label=BLEED)
            for number in (2, 3, 4):
                put(f"n{number}", NORTH, number, label=BLEED, study_date=f"202504{number:02d}")
            put(
                "s1",
                SOUTH,
                11,
                patient_id="S-77",
                issuer="SOUTH",
                study_date="20250601",
                label=BLEED,
            )
            put("s2", SOUTH, 12, label=BLEED)
            put("s3", SOUTH, 13, label=("intracranial-haemorrhage", True))
            put("e1", EAST, 21, label=BLEED)
            # not matching, each by one criterion
            put("n-2024", NORTH, 5, study_date="20241231", label=BLEED)
            put("n-dx", NORTH, 6, modality="DX", body_part="CHEST", label=BLEED)
            put("s-absent", SOUTH, 14, label=("haemorrhage", False))
            put("s-chest", SOUTH, 15, body_part="CHEST", label=BLEED)  # out only by body part
            put("w-fracture", WEST, 31, label=("fracture", True))
        for name in ("n1", "n2", "n3", "s1"):
            add_ai(db, studies[name], "head-ct-bleed", 0.9, critical=True)
        add_ai(db, studies["s2"], "head-ct-bleed", 0.5, critical=False)
        identity = PatientIdentity(db, trail)
        key = identity.register(NORTH, "N-0001", "NORTH", [("9434765919", "NHS")])
        identity.register(SOUTH, "S-77", "SOUTH", [("9434765919", "NHS")])
        identity.add_authority("NHS", "national", actor=Actor.cli())
        accounts = Accounts(db, trail)
        for name, (role, hospitals) in USERS.items():
            accounts.add_user(name, role, hospitals=hospitals, actor=Actor.cli())
        db.dispose()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert wait_until(lambda: server is not None and server.started, timeout_s=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            tokens = TokenService(settings, secrets.jwt_signing_key)
            yield World(client, settings, tokens, studies, key, home)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=30)
        supervisor.down()


def _strings(value: Any) -> Iterator[str]:
    """Every key and string value of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def _assert_no_identifier(world: World, document: Any) -> None:
    strings = list(_strings(document))
    for study in world.studies.values():
        for identifier in study.identifiers:
            leaks = [s for s in strings if identifier in s]
            assert not leaks, f"{identifier} of {study.hospital} in {leaks}"


def _cells(answer: dict[str, Any]) -> dict[str, str]:
    return {cell["hospital"]: cell["shown"] for cell in answer["hospitals"]}


def test_counts_match_sql_and_small_cells_are_suppressed(world: World) -> None:
    created = world.create(name="bleeds 2025", **HEAD_CT_BLEEDS_2025)
    assert created.status_code == 201, created.text
    answer = created.json()
    database = world.database()
    with database.session() as session:  # the same question, asked directly in SQL
        rows = session.execute(
            text(
                "SELECT h.name, COUNT(DISTINCT s.id) FROM studies s "
                "JOIN hospitals h ON h.id = s.hospital_id "
                "JOIN labels l ON l.study_id = s.id "
                "WHERE s.modalities = 'CT' AND s.study_date BETWEEN '20250101' AND '20251231' "
                "AND l.present AND lower(replace(l.finding, '-', '_')) = 'haemorrhage' "
                "GROUP BY h.name"
            )
        ).all()
        exact = {NORTH: 0, SOUTH: 0, EAST: 0, WEST: 0} | {name: n for name, n in rows}
        stored = session.scalars(select(Cohort).where(Cohort.id == answer["id"])).one()
        assert stored.counts == exact
        assert stored.created_by == "res"
    database.dispose()
    # s3 says "intracranial-haemorrhage": another finding; s-chest counts without a body part
    assert exact == {NORTH: 4, SOUTH: 3, EAST: 1, WEST: 0}
    assert _cells(answer) == {s.hospital: s.shown for s in suppress(exact, K).hospitals}
    assert _cells(answer) == {NORTH: "4", SOUTH: "3", EAST: f"<{K}", WEST: "0"}
    east = next(cell for cell in answer["hospitals"] if cell["hospital"] == EAST)
    assert east["count"] is None and east["suppressed"] is True
    # one suppressed cell: the total would give it by subtraction, and so would the list
    assert answer["total"] is None and answer["total_shown"] == ">=8"
    assert len(answer["studies"]) == 7  # North's and South's only: East's would count it
    assert answer["min_cell_size"] == K
    _assert_no_identifier(world, answer)


def test_body_part_is_read_from_the_archive(world: World) -> None:
    answer = world.create(**HEAD_CT_BLEEDS_2025, body_part="head").json()
    # South's chest CT is out: two small cells of 2 and 1 studies; their sum (3) cannot be
    # taken apart, so the total is shown, and the list holds every study
    assert _cells(answer) == {NORTH: "4", SOUTH: f"<{K}", EAST: f"<{K}", WEST: "0"}
    assert answer["total"] == 7 and len(answer["studies"]) == 7
    assert {row["body_part"] for row in answer["studies"]} == {"HEAD"}
    assert {row["modality"] for row in answer["studies"]} == {"CT"}
    assert all(
        row["finding"] == {"label": {"finding": "haemorrhage", "present": True}}
        for row in answer["studies"]
    )


def test_one_pseudonym_for_a_patient_linked_across_hospitals(world: World) -> None:
    answer = world.create(**HEAD_CT_BLEEDS_2025, body_part="HEAD").json()
    pseudonyms = Pseudonymizer(load_secrets(world.settings).deid_hmac_key, "research")
    rows = {row["study_instance_uid"]: row for row in answer["studies"]}
    north = rows[pseudonyms.uid(world.studies["n1"].study_instance_uid)]
    south = rows[pseudonyms.uid(world.studies["s1"].study_instance_uid)]
    assert north["patient_pseudonym"] == south["patient_pseudonym"]
    assert north["patient_pseudonym"] == pseudonyms.patient_pseudonym(world.patient_key)
    assert north["patient_pseudonym"].startswith("ANON-")
    assert len({row["patient_pseudonym"] for row in rows.values()}) == len(rows) - 1
    # dates shifted by the patient's one shift: the interval between the two studies is kept
    day = lambda value: dt.datetime.strptime(value, "%Y%m%d").date()  # noqa: E731
    assert day(south["study_date"]) - day(north["study_date"]) == dt.date(2025, 6, 1) - dt.date(
        2025, 3, 14
    )
    assert north["study_date"] != "20250314"


def test_ai_finding_cohort_and_a_cohort_too_small_for_a_list(world: World) -> None:
    ai = world.create(
        modality="CT", ai_finding={"model": "head-ct-bleed", "critical": True, "min_score": 0.8}
    ).json()
    assert _cells(ai) == {NORTH: "3", SOUTH: f"<{K}", EAST: "0", WEST: "0"}
    assert ai["total_shown"] == ">=4" and len(ai["studies"]) == 3
    assert all(row["finding"]["ai"]["critical"] for row in ai["studies"])
    small = world.create(label={"finding": "fracture"}).json()
    assert _cells(small)[WEST] == f"<{K}"
    assert small["total"] is None and small["total_shown"] == f"<{K}"
    assert small["studies"] == [] and "fewer than 3" in small["list_withheld"]
    shown = world.client.get(f"/api/cohorts/{small['id']}", headers=world.headers("res")).json()
    assert shown["studies"] == [] and shown["total_shown"] == f"<{K}"
    _assert_no_identifier(world, [ai, small, shown])


def test_stored_cohort_is_shown_listed_rerun_and_audited(world: World) -> None:
    after = max((r["seq"] for r in audit_records(world.home)), default=0)
    created = world.create(**HEAD_CT_BLEEDS_2025).json()
    shown = world.client.get(f"/api/cohorts/{created['id']}", headers=world.headers("res"))
    assert shown.status_code == 200
    assert shown.json()["studies"] == created["studies"]
    listed = world.client.get("/api/cohorts", headers=world.headers("res")).json()
    assert created["id"] in [c["id"] for c in listed] and listed[0]["studies"] == []
    rerun = world.client.post(f"/api/cohorts/{created['id']}/run", headers=world.headers("res"))
    assert rerun.status_code == 200 and rerun.json()["runs"] == 2
    # another researcher does not see it; an admin with a research token does
    other = world.client.get(f"/api/cohorts/{created['id']}", headers=world.headers("res-2"))
    assert other.status_code == 404
    admin = world.client.get(f"/api/cohorts/{created['id']}", headers=world.headers("adm"))
    assert admin.is_success
    _assert_no_identifier(world, [created, shown.json(), listed, rerun.json()])
    records = [
        r
        for r in audit_records(world.home, after)
        if r["resource_type"] == "cohort" and r["resource_id"] == str(created["id"])
    ]
    assert [(r["event_code"], r["action"], r["detail"]["event"]) for r in records] == [
        ("110112", "C", "cohort created and run"),
        ("110112", "R", "cohort read"),
        ("110112", "E", "cohort run"),
        ("110112", "R", "cohort read"),
    ]
    assert all(r["user_name"] == "res" for r in records[:3]) and records[3]["user_name"] == "adm"
    assert records[0]["detail"]["counts"] == {NORTH: 4, SOUTH: 3, EAST: 1, WEST: 0}
    assert records[0]["detail"]["query"]["label"] == {"finding": "haemorrhage", "present": True}
    _assert_no_identifier(world, [r["detail"] for r in records])
    assert all(r["patient_id_hash"] is None for r in records)


def test_only_a_research_token_of_a_researcher_or_admin_is_admitted(world: World) -> None:
    after = max((r["seq"] for r in audit_records(world.home)), default=0)
    refused = {
        "treatment token": world.headers(
            "adm", purpose=Purpose.TREATMENT, patient_key=world.patient_key
        ),
        "no purpose": world.headers("res", purpose=None),
        "radiologist": world.headers("rad"),
    }
    for why, headers in refused.items():
        answer = world.client.post("/api/cohorts", json=HEAD_CT_BLEEDS_2025, headers=headers)
        assert answer.status_code == 403, (why, answer.text)
        assert world.client.get("/api/cohorts/1", headers=headers).status_code == 403, why
    alerts = [
        r
        for r in audit_records(world.home, after)
        if r["event_code"] == "110113"
        and r["resource_id"] in ("POST /api/cohorts", "GET /api/cohorts/1")
    ]
    assert len(alerts) == 6
    assert {a["detail"]["reason"] for a in alerts} == {
        "purpose of use not allowed",
        "role not allowed",
    }
    bad = world.create(modality="CT", study_date_from="2025-02-01", study_date_to="2025-01-01")
    assert bad.status_code == 422 and "empty" in bad.text
    assert world.create().status_code == 422  # no criterion: never every study
    blank = world.create(label={"finding": " "})
    assert blank.status_code == 422 and json.loads(blank.text)
