"""The API's sign-in, administration and audit routes: the services they call audit each
action once, as the caller, through the HTTP door (the routes themselves record nothing); a
worklist listing names the patients it showed by keyed hash; ``GET /api/audit/verify`` is for
platform operators and hospital admins, and reports a rewritten table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Hospital, Role, Study, StudyState
from core.secrets import load_secrets
from core.security import Accounts, Actor
from serving.api.app import create_app
from serving.worklist import WorklistPolicy, ensure_worklist_item, record_ai_outcome
from tests.audit_records import audit_records
from tests.helpers import served

ADMIN, PASSWORD = "root-admin", "a long admin passphrase"
USERS = {  # name: (role, hospitals); each signs in with PASSWORD
    "dr-a": (Role.RADIOLOGIST, ["A"]),
    "auditor-a": (Role.ADMIN, ["A"]),
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    """The API app under uvicorn on a free port, with an admin who has a password."""
    settings = load_settings(home=tmp_path, mode="dev")
    db = Database.from_settings(settings)
    upgrade(db)
    trail = AuditTrail.from_secrets(db, load_secrets(settings))
    accounts = Accounts(db, trail)
    accounts.add_user(ADMIN, Role.ADMIN, PASSWORD, platform_operator=True, actor=Actor.cli())
    for name, (role, hospitals) in USERS.items():
        accounts.add_user(name, role, PASSWORD, hospitals=hospitals, actor=Actor.cli())
    db.dispose()
    with (
        served(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def _one_record(home: Path, after: int) -> dict[str, Any]:
    new = audit_records(home, after=after)
    assert len(new) == 1, f"{len(new)} audit records: {new}"
    record = new[0]
    assert record["detail"]["via"] == "http"
    assert record["source_address"] == "127.0.0.1"
    return record


def test_each_admin_action_over_http_is_audited_once(api: httpx.Client, tmp_path: Path) -> None:
    last = audit_records(tmp_path)[-1]["seq"]

    def action(method: str, url: str, status: int, **kwargs: Any) -> dict[str, Any]:
        nonlocal last
        answer = api.request(method, url, **kwargs)
        assert answer.status_code == status, answer.text
        record = _one_record(tmp_path, last)
        last = record["seq"]
        return record | {"answer": answer}

    wrong = action("POST", "/api/auth/token", 401, data={"username": ADMIN, "password": "nope"})
    assert (wrong["event_code"], wrong["outcome"], wrong["user_name"]) == ("110114", 4, ADMIN)
    assert wrong["detail"]["reason"] == "user name or password is wrong"
    signed_in = action(
        "POST", "/api/auth/token", 200, data={"username": ADMIN, "password": PASSWORD}
    )
    assert (signed_in["event_code"], signed_in["outcome"], signed_in["role"]) == (
        "110114",
        0,
        "admin",
    )
    assert signed_in["detail"]["method"] == "password"
    api.headers["Authorization"] = f"Bearer {signed_in['answer'].json()['access_token']}"

    user = {"name": "dr-grey", "role": "radiologist"}
    created = action("POST", "/api/users", 201, json=user)
    refused = action("POST", "/api/users", 409, json=user)
    key = action("POST", "/api/apikeys", 201, json={"name": "edge-1", "role": "pacs"})
    for record, expected in (
        (created, ("110113", "C", 0, "user", "dr-grey")),
        (refused, ("110113", "C", 4, "user", "dr-grey")),
        (key, ("110113", "C", 0, "api_key", "edge-1")),
    ):
        fields = ("event_code", "action", "outcome", "resource_type", "resource_id")
        assert tuple(record[name] for name in fields) == expected
        assert (record["user_name"], record["role"]) == (ADMIN, "admin")
    assert refused["detail"]["reason"] == 'user "dr-grey" already exists'
    assert key["answer"].json()["key"] not in str(audit_records(tmp_path))

    searched = action("GET", "/api/audit", 200, params={"user_name": ADMIN})
    assert (searched["event_code"], searched["action"]) == ("110101", "R")
    assert searched["answer"].json()[0]["seq"] == key["seq"]  # its own record comes after
    verified = action("GET", "/api/audit/verify", 200)
    assert (verified["event_code"], verified["action"]) == ("110101", "E")
    assert verified["answer"].json()["ok"] is True
    assert verified["detail"]["verified"] is True


def _sign_in(api: httpx.Client, name: str) -> dict[str, str]:
    answer = api.post("/api/auth/token", data={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _add_worklist_study(home: Path, hospital: str, patient_id: str) -> str:
    uid = generate_uid()
    db = Database.from_settings(load_settings(home=home))
    try:
        with db.session() as session:
            ready = dt.datetime.now(dt.UTC)
            owner = session.query(Hospital).filter_by(name=hospital).one_or_none()
            study = Study(
                study_instance_uid=uid,
                hospital=owner or Hospital(name=hospital),
                patient_id=patient_id,
                state=StudyState.READY,
                ready_at=ready,
                modalities="CT",
            )
            session.add(study)
            session.flush()
            policy = WorklistPolicy()
            ensure_worklist_item(session, study, policy)
            record_ai_outcome(
                session, study, score=0.5, critical=False, failed=False, policy=policy
            )
    finally:
        db.dispose()
    return uid


def test_worklist_listing_names_its_patients_by_keyed_hash(
    api: httpx.Client, tmp_path: Path
) -> None:
    mine = _add_worklist_study(tmp_path, "A", "PAT-A-WL-1")
    _add_worklist_study(tmp_path, "B", "PAT-B-WL-2")  # another hospital's: neither shown nor named
    last = audit_records(tmp_path)[-1]["seq"]
    answer = api.get("/api/worklist", headers=_sign_in(api, "dr-a"))
    assert answer.status_code == 200, answer.text
    assert [item["study_instance_uid"] for item in answer.json()["items"]] == [mine]

    [listing] = [r for r in audit_records(tmp_path, after=last) if r["event_code"] == "110112"]
    settings = load_settings(home=tmp_path)
    db = Database.from_settings(settings)
    try:
        expected = AuditTrail.from_secrets(db, load_secrets(settings)).patient_id_hash("PAT-A-WL-1")
    finally:
        db.dispose()
    assert listing["detail"]["returned"] == [
        {"study_instance_uid": mine, "patient_id_hash": expected}
    ]
    assert "PAT-A-WL" not in str(listing) and "PAT-B" not in str(listing)


def test_verify_is_for_operators_and_hospital_admins_and_sees_a_rewritten_row(
    api: httpx.Client, tmp_path: Path
) -> None:
    assert api.get("/api/audit/verify").status_code == 401
    refused = api.get("/api/audit/verify", headers=_sign_in(api, "dr-a"))
    assert refused.status_code == 403
    for name in ("auditor-a", ADMIN):
        answer = api.get("/api/audit/verify", headers=_sign_in(api, name))
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True and answer.json()["first_bad"] is None

    db = Database.from_settings(load_settings(home=tmp_path))
    try:
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE audit_events SET user_name = 'x' WHERE seq = 2"))
    finally:
        db.dispose()
    broken = api.get("/api/audit/verify", headers=_sign_in(api, "auditor-a")).json()
    assert broken["ok"] is False
    assert broken["first_bad"]["seq"] == 2
    assert "record 2 was modified" in broken["first_bad"]["reason"]
