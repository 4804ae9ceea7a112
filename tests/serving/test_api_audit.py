"""The API's sign-in, administration and audit routes: the services they call audit each
action once, as the caller, through the HTTP door (the routes themselves record nothing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Role
from core.secrets import load_secrets
from core.security import Accounts, Actor
from serving.api.app import create_app
from tests.audit_records import audit_records
from tests.helpers import free_port, wait_until

ADMIN, PASSWORD = "root-admin", "a long admin passphrase"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    """The API app under uvicorn on a free port, with an admin who has a password."""
    settings = load_settings(home=tmp_path, mode="dev")
    db = Database.from_settings(settings)
    upgrade(db)
    trail = AuditTrail.from_secrets(db, load_secrets(settings))
    Accounts(db, trail).add_user(
        ADMIN, Role.ADMIN, PASSWORD, platform_operator=True, actor=Actor.cli()
    )
    db.dispose()
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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
