"""The worklist API on the real API started by ``radcloud up``.

Studies and their AI outcomes are written straight into the instance's database with the same
hooks the triage pipeline calls, each test under a hospital of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.db.models import Hospital, Study, StudyState
from serving.worklist import WorklistPolicy, ensure_worklist_item, record_ai_outcome
from tests.conftest import Stack

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
AddStudy = Callable[..., str]


@pytest.fixture
def hospital() -> str:
    return f"Hospital {uuid.uuid4().hex[:8]}"


@pytest.fixture
def add_study(stack: Stack, hospital: str) -> AddStudy:
    def add(
        *, minutes_ago: float = 0, score: float | None = 0.1, critical: bool = False, **fields: Any
    ) -> str:
        uid = generate_uid()
        ready = NOW - dt.timedelta(minutes=minutes_ago)
        db = stack.database()
        try:
            with db.session() as session:
                home = session.scalar(select(Hospital).where(Hospital.name == hospital))
                study = Study(
                    study_instance_uid=uid,
                    hospital=home or Hospital(name=hospital),
                    state=StudyState.READY,
                    first_received_at=ready,
                    last_received_at=ready,
                    ready_at=ready,
                    **({"modalities": "CT"} | fields),
                )
                session.add(study)
                session.flush()
                policy = WorklistPolicy()
                ensure_worklist_item(session, study, policy)
                record_ai_outcome(
                    session, study, score=score, critical=critical, failed=False, policy=policy
                )
        finally:
            db.dispose()
        return uid

    return add


def _worklist(client: httpx.Client, hospital: str, **params: Any) -> dict[str, Any]:
    answer = client.get("/api/worklist", params={"hospital": hospital, **params})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _uids(body: dict[str, Any]) -> list[str]:
    return [item["study_instance_uid"] for item in body["items"]]


def _second_radiologist(stack: Stack) -> httpx.Client:
    name = "test-radiologist-2"
    if name not in stack.tokens:
        stack.cli("users", "add", name, "--role", "radiologist", "--platform-operator")
        stack.tokens[name] = stack.cli("token", name).stdout.strip()
    return httpx.Client(
        base_url=stack.settings.api_url,
        headers={"Authorization": f"Bearer {stack.tokens[name]}"},
        timeout=30,
    )


def test_worklist_needs_a_radiologist_or_admin(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/api/worklist").status_code == 401
        assert client.post("/api/worklist/1.2.3/claim", json={"version": 1}).status_code == 401
    for role in ("ml_engineer", "pacs", "peer_hospital"):
        with stack.client(role) as client:
            assert client.get("/api/worklist").status_code == 403
            claim = client.post("/api/worklist/1.2.3/claim", json={"version": 1})
            assert claim.status_code == 403
    with stack.client("admin") as client:
        assert client.get("/api/worklist").status_code == 200


def test_worklist_is_in_priority_order_with_study_fields(
    stack: Stack, hospital: str, add_study: AddStudy
) -> None:
    routine = add_study(minutes_ago=200, score=0.1, patient_name="DOE^JANE", patient_id="P1")
    critical = add_study(minutes_ago=5, score=0.93, critical=True)
    urgent = add_study(minutes_ago=60, score=0.4)
    with stack.client("radiologist") as client:
        body = _worklist(client, hospital)
    assert _uids(body) == [critical, urgent, routine]
    assert body["total"] == 3
    first, last = body["items"][0], body["items"][2]
    assert (first["priority_class"], first["critical"], first["ai_status"]) == (
        "critical",
        True,
        "succeeded",
    )
    assert first["ai_score"] == pytest.approx(0.93)
    assert (last["patient_name"], last["patient_id"], last["hospital"]) == (
        "DOE^JANE",
        "P1",
        hospital,
    )
    assert last["status"] == "unread" and last["version"] >= 1
    assert 199 <= last["waiting_minutes"] <= 260
    due = dt.datetime.fromisoformat(last["due_at"])
    assert due == dt.datetime.fromisoformat(last["ready_at"]) + dt.timedelta(minutes=480)


def test_worklist_filters_and_pages(stack: Stack, hospital: str, add_study: AddStudy) -> None:
    ct = add_study(modalities="CT\\SR", accession_number="A77", study_date="20260101")
    mr = add_study(modalities="MR", study_description="Brain MRI", study_date="20260301")
    dx = add_study(modalities="DX", patient_name="ROE^RICHARD", study_date="20260301")
    with stack.client("radiologist") as client:
        assert _uids(_worklist(client, hospital, modality="MR")) == [mr]
        assert _uids(_worklist(client, hospital, q="brain")) == [mr]
        assert _uids(_worklist(client, hospital, q="richard roe")) == [dx]
        assert _uids(_worklist(client, hospital, q="a77")) == [ct]
        assert set(_uids(_worklist(client, hospital, date_from="2026-02-01"))) == {mr, dx}
        assert _uids(_worklist(client, hospital, date_to="2026-01-31")) == [ct]
        page = _worklist(client, hospital, limit=1, offset=1)
        assert page["total"] == 3 and len(page["items"]) == 1
        assert _uids(_worklist(client, hospital, status="reported")) == []
        assert client.get("/api/worklist", params={"modality": "C T"}).status_code == 422
        assert client.get("/api/worklist", params={"status": "done"}).status_code == 422


def test_claim_conflict_release_and_report(
    stack: Stack, hospital: str, add_study: AddStudy
) -> None:
    uid = add_study(score=0.9, critical=True, patient_id="P-CLAIM")
    with stack.client("radiologist") as alice, _second_radiologist(stack) as bob:
        version = _worklist(alice, hospital)["items"][0]["version"]
        claimed = alice.post(f"/api/worklist/{uid}/claim", json={"version": version})
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["status"] == "in_progress"
        assert claimed.json()["claimed_by"] == "test-radiologist"

        lost = bob.post(f"/api/worklist/{uid}/claim", json={"version": version})
        assert lost.status_code == 409
        assert lost.json()["error"] == "conflict"
        assert lost.json()["claimed_by"] == "test-radiologist"
        assert lost.json()["version"] == claimed.json()["version"]

        current = claimed.json()["version"]
        not_mine = bob.post(f"/api/worklist/{uid}/report", json={"version": current})
        assert not_mine.status_code == 403
        assert not_mine.json()["claimed_by"] == "test-radiologist"

        stale = alice.post(f"/api/worklist/{uid}/report", json={"version": version})
        assert stale.status_code == 409 and "stale" in stale.json()["detail"]

        released = alice.post(f"/api/worklist/{uid}/release", json={"version": current})
        assert released.json()["status"] == "unread"
        again = bob.post(f"/api/worklist/{uid}/claim", json={"version": released.json()["version"]})
        # reporting is signing (issue 14, item 7): without a signed report, a conflict
        bare = bob.post(f"/api/worklist/{uid}/report", json={"version": again.json()["version"]})
        assert bare.status_code == 409, bare.text
        assert "no signed report" in bare.json()["detail"]
        assert bare.json()["status"] == "in_progress"
        assert bare.json()["claimed_by"] == "test-radiologist-2"
        assert _uids(_worklist(alice, hospital, status="reported")) == []
        assert _uids(_worklist(alice, hospital, status="in_progress")) == [uid]

        unknown = alice.post("/api/worklist/1.2.3.4.5.6/claim", json={"version": 1})
        assert unknown.status_code == 404
        assert alice.post(f"/api/worklist/{uid}/claim", json={}).status_code == 422

    with stack.client("admin") as admin:
        records = admin.get("/api/audit", params={"resource_id": uid}).json()
    transitions = [
        (r["user_name"], r["detail"]["transition"], r["outcome"])
        for r in reversed(records)
        if r["event_code"] == "110110"
    ]
    assert transitions == [
        ("test-radiologist", "claim", 0),
        ("test-radiologist-2", "claim", 4),
        ("test-radiologist-2", "report", 4),
        ("test-radiologist", "report", 4),
        ("test-radiologist", "release", 0),
        ("test-radiologist-2", "claim", 0),
        ("test-radiologist-2", "report", 4),
    ]
    assert all(r["action"] == "U" for r in records if r["event_code"] == "110110")


def test_admin_may_release_someone_elses_claim(
    stack: Stack, hospital: str, add_study: AddStudy
) -> None:
    uid = add_study()
    with stack.client("radiologist") as alice, stack.client("admin") as admin:
        version = _worklist(alice, hospital)["items"][0]["version"]
        claimed = alice.post(f"/api/worklist/{uid}/claim", json={"version": version}).json()
        answer = admin.post(f"/api/worklist/{uid}/release", json={"version": claimed["version"]})
        assert answer.status_code == 200 and answer.json()["claimed_by"] is None


def test_listing_is_audited_without_the_search_text(
    stack: Stack, hospital: str, add_study: AddStudy
) -> None:
    uid = add_study(patient_name="SECRET^NAME")
    with stack.client("radiologist") as client:
        assert _uids(_worklist(client, hospital, q="secret")) == [uid]
    with stack.client("admin") as admin:
        records = admin.get(
            "/api/audit", params={"event_code": "110112", "user_name": "test-radiologist"}
        ).json()
    mine = [r for r in records if r["detail"].get("filters", {}).get("hospital") == hospital]
    assert mine and [r["study_instance_uid"] for r in mine[0]["detail"]["returned"]] == [uid]
    assert mine[0]["detail"]["filters"]["search_text"] is True
    assert "SECRET" not in str(mine[0]).upper()
