"""Attacks on sign-in and on bearer tokens, against the real API app under uvicorn (issue 14,
hardening item 2): password guessing and spraying, a timing oracle for user names, oversized
values in the audit trail, key-ID flooding of the identity provider, a disabled user's OIDC
token."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import argon2
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import core.security.passwords
from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import Role
from core.secrets import load_secrets
from core.security import Accounts, Actor
from serving.api.app import create_app
from tests.audit_records import audit_records
from tests.helpers import served

NAME, PASSWORD = "dr-grey", "a long passphrase"
ISSUER = "https://idp.hospital.example"


def _accounts(settings: Settings) -> tuple[Accounts, Database]:
    db = Database.from_settings(settings)
    upgrade(db)
    return Accounts(db, AuditTrail.from_secrets(db, load_secrets(settings))), db


@contextmanager
def _api(settings: Settings) -> Iterator[httpx.Client]:
    """The API app under uvicorn on a free port, with user ``NAME`` (password ``PASSWORD``)."""
    accounts, db = _accounts(settings)
    accounts.add_user(NAME, Role.RADIOLOGIST, PASSWORD, actor=Actor.cli())
    db.dispose()
    with (
        served(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def _sign_in(client: httpx.Client, name: str, password: str) -> httpx.Response:
    return client.post("/api/auth/token", data={"username": name, "password": password})


def test_guessing_a_password_locks_the_name_for_a_while(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        mode="dev",
        signin_max_failures=5,
        signin_lockout_s=3,
        signin_attempts_per_minute=100,
    )
    with _api(settings) as client:
        answers = [_sign_in(client, NAME, f"guess number {i}") for i in range(20)]
        assert [a.status_code for a in answers[:5]] == [401] * 5
        assert [a.status_code for a in answers[5:]] == [429] * 15
        locked = answers[-1]
        assert locked.json()["error"] == "too_many_requests"
        assert "locked" in locked.json()["detail"]
        assert 1 <= int(locked.headers["Retry-After"]) <= 3

        during = _sign_in(client, NAME, PASSWORD)  # the right password does not open it
        assert during.status_code == 429
        accounts, db = _accounts(settings)
        accounts.add_user("dr-white", Role.RADIOLOGIST, PASSWORD, actor=Actor.cli())
        db.dispose()
        assert _sign_in(client, "dr-white", PASSWORD).status_code == 200  # others may sign in

        time.sleep(int(during.headers["Retry-After"]))  # the lockout the server announced
        assert _sign_in(client, NAME, PASSWORD).status_code == 200
        assert _sign_in(client, NAME, "one more guess").status_code == 401  # failures forgotten

    records = [r for r in audit_records(tmp_path) if r["event_code"] == "110114"]
    refusals = [r["detail"] for r in records if r["user_name"] == NAME and r["outcome"] == 4]
    assert [d.get("locked") for d in refusals[:5]] == [None] * 4 + [True]
    assert all("locked" in d["reason"] for d in refusals[5:21])


def test_one_address_spraying_many_names_is_slowed(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, mode="dev", signin_attempts_per_minute=5)
    with _api(settings) as client:
        answers = [_sign_in(client, f"user-{i}", PASSWORD) for i in range(6)]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert 'from "127.0.0.1"' in answers[-1].json()["detail"]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60


@dataclass
class _HasherSpy:
    """Stands in for the Argon2 hasher of ``core.security.passwords``, noting each verify."""

    real: argon2.PasswordHasher
    verified: list[argon2.Parameters] = field(default_factory=list)

    def hash(self, password: str) -> str:
        return self.real.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        self.verified.append(argon2.extract_parameters(password_hash))
        return self.real.verify(password_hash, password)


def test_unknown_names_cost_the_same_argon2_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(home=tmp_path, mode="dev")
    spy = _HasherSpy(core.security.passwords._hasher)
    monkeypatch.setattr(core.security.passwords, "_hasher", spy)
    with _api(settings) as client:
        accounts, db = _accounts(settings)
        accounts.add_user("no-password", Role.RADIOLOGIST, actor=Actor.cli())
        accounts.add_user("dr-gone", Role.RADIOLOGIST, PASSWORD, actor=Actor.cli())
        accounts.set_disabled("dr-gone", True, actor=Actor.cli())
        db.dispose()
        spy.verified.clear()
        for name, password in (
            (NAME, "a wrong passphrase"),
            ("nobody-of-this-name", PASSWORD),
            ("no-password", PASSWORD),
            ("dr-gone", PASSWORD),
        ):
            answer = _sign_in(client, name, password)
            assert answer.status_code == 401
            assert answer.json()["detail"] == "user name or password is wrong"
    real_parameters = argon2.extract_parameters(spy.real.hash("x"))
    assert spy.verified == [real_parameters] * 4  # one verify each, with the same parameters


def test_an_invalid_body_without_credentials_is_refused_as_unauthenticated(
    tmp_path: Path,
) -> None:
    """FastAPI validates a body before the route's authentication runs; a caller without
    credentials still gets 401 (audited), never a description of the body a route expects."""
    settings = load_settings(home=tmp_path, mode="dev")
    with _api(settings) as client:
        last = audit_records(tmp_path)[-1]["seq"]
        for path in ("/api/users", f"/api/users/{NAME}/hospitals"):
            anonymous = client.post(
                path, content=b"{not json", headers={"Content-Type": "application/json"}
            )
            assert anonymous.status_code == 401, (path, anonymous.text)
            assert "not json" not in anonymous.text
            # a body that is not even UTF-8: FastAPI refuses it (400) before the route runs
            undecodable = client.post(
                path, content=b'{"name": "\xff\xfe"}', headers={"Content-Type": "application/json"}
            )
            assert undecodable.status_code == 401, (path, undecodable.text)
        token = _sign_in(client, NAME, PASSWORD).json()["access_token"]
        signed_in = client.post(
            "/api/users",
            content=b"{not json",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        assert signed_in.status_code == 422  # the caller is known: told what is wrong
        malformed = client.post("/api/auth/token", data={"password": PASSWORD})
        assert malformed.status_code == 422  # sign-in itself needs no credentials
    refused = [r for r in audit_records(tmp_path, after=last) if r["outcome"] == 4]
    assert [r["resource_id"] for r in refused][:4] == [
        "POST /api/users",
        "POST /api/users",
        f"POST /api/users/{NAME}/hospitals",
        f"POST /api/users/{NAME}/hospitals",
    ]


def test_a_huge_user_name_is_cut_in_the_audit_trail(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, mode="dev")
    huge = "A" * 10_240
    with _api(settings) as client:
        last = audit_records(tmp_path)[-1]["seq"]
        assert _sign_in(client, huge, PASSWORD).status_code == 401
        assert client.get(f"/api/studies/{'9' * 10_240}/results").status_code == 401
    signed_in, route = audit_records(tmp_path, after=last)
    assert len(signed_in["user_name"]) <= 128
    assert signed_in["user_name"].startswith("AAAA")
    assert signed_in["user_name"].endswith(" more]")
    assert len(route["resource_id"]) <= 128
    assert route["resource_id"].startswith("GET /api/studies/999")
    assert all(len(json.dumps(r, default=str)) < 4096 for r in (signed_in, route))
    _, db = _accounts(settings)
    trail = AuditTrail.from_secrets(db, load_secrets(settings))
    assert trail.verify(actor=Actor.cli()).ok  # cut before hashing: the chain holds
    db.dispose()


@dataclass
class _IdentityProvider:
    """A JWKS endpoint on loopback that counts how often it is asked."""

    url: str
    keys: list[dict[str, Any]]
    requests: list[str]
    private_key: rsa.RSAPrivateKey

    def token(self, subject: str, kid: str = "hospital-key-1", **claims: Any) -> str:
        now = dt.datetime.now(dt.UTC)
        body = {
            "sub": subject,
            "aud": "radcloud",
            "iss": ISSUER,
            "exp": now + dt.timedelta(minutes=5),
            "realm_access": {"roles": ["radiologist"]},
        } | claims
        return jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def idp() -> Iterator[_IdentityProvider]:
    """A hospital identity provider's key set served over HTTP from a real local server."""
    private_key = rsa.generate_private_key(65537, 2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    keys = [jwk | {"kid": "hospital-key-1", "use": "sig", "alg": "RS256"}]
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = json.dumps({"keys": keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        yield _IdentityProvider(url, keys, requests, private_key)
    finally:
        server.shutdown()
        server.server_close()


def _oidc_settings(home: Path, idp: _IdentityProvider, **extra: Any) -> Settings:
    return load_settings(
        home=home,
        mode="dev",  # the local key set is served over plain HTTP
        jwt_algorithm="RS256",
        jwt_jwks_url=idp.url,
        jwt_jwks_issuer=ISSUER,
        jwt_roles_claim="realm_access.roles",
        **extra,
    )


def test_made_up_key_ids_do_not_make_each_request_fetch_the_key_set(
    tmp_path: Path, idp: _IdentityProvider
) -> None:
    settings = _oidc_settings(tmp_path, idp, jwt_jwks_refetch_interval_s=300)
    with _api(settings) as client:
        me = client.get("/api/me", headers={"Authorization": f"Bearer {idp.token('dr-who')}"})
        assert me.json() == {
            "name": "dr-who",
            "roles": ["radiologist"],
            "method": "oidc",
            "hospitals": [],  # the token carries no hospitals claim: it sees no study
            "platform_operator": False,
        }
        assert len(idp.requests) == 1
        for i in range(50):
            forged = idp.token("dr-who", kid=f"made-up-{i}")
            answer = client.get("/api/me", headers={"Authorization": f"Bearer {forged}"})
            assert answer.status_code == 401
            assert "not in the identity provider's key set" in answer.json()["detail"]
    assert len(idp.requests) == 1  # within the refetch interval: not one more fetch


def test_a_disabled_users_oidc_token_is_refused(tmp_path: Path, idp: _IdentityProvider) -> None:
    settings = _oidc_settings(tmp_path, idp)
    bearer = {"Authorization": f"Bearer {idp.token('dr-who')}"}
    with _api(settings) as client:
        assert client.get("/api/me", headers=bearer).status_code == 200  # no row needed
        accounts, db = _accounts(settings)
        accounts.add_user("dr-who", Role.RADIOLOGIST, actor=Actor.cli())
        accounts.set_disabled("dr-who", True, actor=Actor.cli())
        db.dispose()
        refused = client.get("/api/me", headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["detail"] == 'user "dr-who" is disabled'
