"""Authentication, roles and their audit trail on the real API started by ``radcloud up``."""

from __future__ import annotations

import datetime as dt
import json

import jwt
import pytest

from core.db.models import Role
from core.secrets import load_secrets
from core.security import TokenService
from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_healthz_needs_no_credentials(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"


def test_no_credentials_is_401_with_json_reason(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.get("/api/me")
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert "no credentials" in answer.json()["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_valid_token_identifies_the_user(stack: Stack) -> None:
    with stack.client("radiologist") as client:
        assert client.get("/api/me").json() == {
            "name": "test-radiologist",
            "roles": ["radiologist"],
            "method": "token",
            "hospitals": [],
            "platform_operator": True,  # the suite's users see all: tenancy has its own test
        }


def test_bad_signature_is_401_and_token_not_echoed(stack: Stack) -> None:
    forged = jwt.encode(
        {
            "sub": "test-admin",
            "roles": ["admin"],
            "iss": "radcloud",
            "aud": "radcloud",
            "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        },
        "not-the-real-key-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    with stack.client() as client:
        answer = client.get("/api/me", headers=_bearer(forged))
    assert answer.status_code == 401
    assert answer.json()["detail"] == "token signature is invalid"
    assert forged not in answer.text


def test_expired_token_is_401(stack: Stack) -> None:
    stack.token_for("radiologist")  # the user exists
    service = TokenService(stack.settings, load_secrets(stack.settings).jwt_signing_key)
    expired = service.issue("test-radiologist", [Role.RADIOLOGIST], dt.timedelta(seconds=-5))
    with stack.client() as client:
        answer = client.get("/api/me", headers=_bearer(expired))
    assert answer.status_code == 401
    assert answer.json()["detail"] == "token has expired"


def test_garbage_and_wrong_scheme_are_401(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/api/me", headers=_bearer("not-a-jwt")).json()["detail"] == (
            "token is malformed"
        )
        basic = client.get("/api/me", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
        assert "Bearer" in basic.json()["detail"]


def test_wrong_role_is_403_naming_allowed_roles(stack: Stack) -> None:
    with stack.client("radiologist") as client:
        answer = client.get("/api/audit")
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"
    assert "allowed roles: admin" in answer.json()["detail"]


def test_admin_may_read_the_audit_trail_which_shows_failures(stack: Stack) -> None:
    with stack.client("radiologist") as client:
        client.get("/api/audit")  # refused, and recorded
    with stack.client() as client:
        client.get("/api/me")  # no credentials, recorded
    with stack.client("admin") as admin:
        alerts = admin.get("/api/audit", params={"event_code": "110113"}).json()
        auth_failures = admin.get("/api/audit", params={"event_code": "110114"}).json()
        verified = admin.get("/api/audit/verify").json()
    assert any(
        a["user_name"] == "test-radiologist"
        and a["resource_id"] == "GET /api/audit"
        and a["outcome"] == 4
        for a in alerts
    )
    assert any(a["resource_id"] == "GET /api/me" and a["outcome"] == 4 for a in auth_failures)
    assert verified["ok"] is True
    assert verified["records"] >= 3


def test_api_key_in_either_header_and_revocation(stack: Stack) -> None:
    created = stack.cli("apikeys", "create", "pacs-edge-1", "--role", "pacs", "--hospital", "Edge")
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("rck_")
    with stack.client() as client:
        me = client.get("/api/me", headers={"X-API-Key": key}).json()
        assert me == {
            "name": "pacs-edge-1",
            "roles": ["pacs"],
            "method": "api_key",
            "hospitals": ["Edge"],
            "platform_operator": False,
        }
        assert client.get("/api/me", headers=_bearer(key)).status_code == 200
        assert client.get("/api/audit", headers={"X-API-Key": key}).status_code == 403
        wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert client.get("/api/me", headers={"X-API-Key": wrong}).status_code == 401
    assert key not in stack.cli("apikeys", "list").stdout
    stack.cli("apikeys", "revoke", "pacs-edge-1")
    with stack.client() as client:
        revoked = client.get("/api/me", headers={"X-API-Key": key})
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["detail"]


def test_password_sign_in_and_disabled_user(stack: Stack) -> None:
    with stack.client("admin") as admin:
        created = admin.post(
            "/api/users",
            json={"name": "dr-grey", "role": "radiologist", "password": "a long passphrase"},
        )
        assert created.status_code == 201
        short = admin.post("/api/users", json={"name": "x", "role": "admin", "password": "short"})
        assert short.status_code == 422
        duplicate = admin.post("/api/users", json={"name": "dr-grey", "role": "admin"})
        assert duplicate.status_code == 409
    with stack.client() as client:
        wrong = client.post("/api/auth/token", data={"username": "dr-grey", "password": "nope"})
        assert wrong.status_code == 401
        signed_in = client.post(
            "/api/auth/token", data={"username": "dr-grey", "password": "a long passphrase"}
        )
        assert signed_in.status_code == 200
        token = signed_in.json()["access_token"]
        assert client.get("/api/me", headers=_bearer(token)).json()["name"] == "dr-grey"
        stack.cli("users", "disable", "dr-grey")
        disabled = client.get("/api/me", headers=_bearer(token))
    assert disabled.status_code == 401
    assert "disabled" in disabled.json()["detail"]


# Sign-in exchanges a password for a token, so it cannot require one.
PUBLIC = {"/healthz": 200, "/api/auth/token": 422}


def test_every_route_but_health_and_sign_in_requires_credentials(stack: Stack) -> None:
    with stack.client("admin") as admin:
        spec = admin.get("/api/openapi.json").json()
    assert len(spec["paths"]) >= 7
    with stack.client() as client:
        for path, operations in spec["paths"].items():
            for method in operations:
                answer = client.request(method.upper(), path.replace("{", "x").replace("}", ""))
                expected = PUBLIC.get(path, 401)
                assert answer.status_code == expected, f"{method.upper()} {path}"


def test_status_reports_the_api_healthy_on_its_port(stack: Stack) -> None:
    status = stack.cli("status", "--json")
    components = {c["name"]: c for c in json.loads(status.stdout)}
    assert set(components) == {"orthanc", "gateway", "api"}
    assert components["api"]["healthy"] is True
    assert components["api"]["ports"] == [
        {"port": stack.settings.api_port, "setting": "RADCLOUD_API_PORT"}
    ]
    assert components["api"]["url"] == stack.settings.api_url
