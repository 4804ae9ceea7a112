"""Tokens from a hospital's OIDC provider, checked against its JSON Web Key Set."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.config import load_settings
from core.db.models import Role
from core.exceptions import AuthenticationError
from core.security import AuthMethod, TokenService
from core.security._jwks import RemoteKeySet


@pytest.fixture(params=["file", "http"])
def jwks_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Publish a JWKS as a local file or from a real HTTP server on loopback."""
    servers: list[ThreadingHTTPServer] = []

    def publish(public_key: object, algorithm: str) -> str:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(public_key))
        jwk |= {"kid": "hospital-key-1", "use": "sig", "alg": algorithm}
        (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        if request.param == "file":
            return (tmp_path / "jwks.json").as_uri()
        handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/jwks.json"

    yield publish
    for server in servers:
        server.shutdown()
        server.server_close()


def _claims(**extra: object) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "sub": "dr-who",
        "aud": "radcloud",
        "iss": "https://idp.hospital.example",
        "exp": now + dt.timedelta(minutes=5),
        "realm_access": {"roles": ["radiologist"]},
    } | extra


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_identity_provider_token_is_accepted_with_nested_roles(
    tmp_path: Path, algorithm: str, jwks_url: Callable[..., str]
) -> None:
    key = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS256"
        else (ec.generate_private_key(ec.SECP256R1()))
    )
    settings = load_settings(
        home=tmp_path,
        mode="dev",  # the "http" key set is served over plain HTTP
        jwt_algorithm=algorithm,
        jwt_jwks_url=jwks_url(key.public_key(), algorithm),
        jwt_jwks_issuer="https://idp.hospital.example",
        jwt_roles_claim="realm_access.roles",
    )
    service = TokenService(settings, "s" * 48)
    token = jwt.encode(_claims(), key, algorithm=algorithm, headers={"kid": "hospital-key-1"})
    principal = service.verify(token)
    assert principal.name == "dr-who"
    assert principal.roles == frozenset({Role.RADIOLOGIST})
    assert principal.method is AuthMethod.OIDC

    other = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS256"
        else (ec.generate_private_key(ec.SECP256R1()))
    )
    forged = jwt.encode(_claims(), other, algorithm=algorithm, headers={"kid": "hospital-key-1"})
    with pytest.raises(AuthenticationError, match="signature is invalid"):
        service.verify(forged)
    wrong_issuer = jwt.encode(
        _claims(iss="https://evil.example"),
        key,
        algorithm=algorithm,
        headers={"kid": "hospital-key-1"},
    )
    with pytest.raises(AuthenticationError, match="issuer"):
        service.verify(wrong_issuer)
    no_role = jwt.encode(
        _claims(realm_access={"roles": ["nurse"]}),
        key,
        algorithm=algorithm,
        headers={"kid": "hospital-key-1"},
    )
    with pytest.raises(AuthenticationError, match="no radcloud role"):
        service.verify(no_role)


def test_external_algorithms_are_refused_without_a_key_set(tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    service = TokenService(load_settings(home=tmp_path), "s" * 48)
    token = jwt.encode(_claims(), key, algorithm="RS256")
    with pytest.raises(AuthenticationError, match='algorithm "RS256" is not accepted'):
        service.verify(token)
    unsigned = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(AuthenticationError, match='algorithm "none" is not accepted'):
        service.verify(unsigned)


def test_own_tokens_round_trip_and_carry_expiry(tmp_path: Path) -> None:
    service = TokenService(load_settings(home=tmp_path, token_ttl_minutes=5), "s" * 48)
    token = service.issue("alice", [Role.ADMIN, Role.ML_ENGINEER])
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == ["admin", "ml_engineer"]
    assert 290 <= claims["exp"] - claims["iat"] <= 300
    assert service.verify(token).roles == frozenset({Role.ADMIN, Role.ML_ENGINEER})


@dataclass
class _KeySetServer:
    """A JWKS endpoint on loopback that serves ``body`` and counts the fetches."""

    url: str = ""
    body: bytes = b""
    fetches: list[str] = field(default_factory=list)


@pytest.fixture
def key_set_server() -> Iterator[_KeySetServer]:
    published = _KeySetServer()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            published.fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(published.body)))
            self.end_headers()
            self.wfile.write(published.body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    published.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    yield published
    server.shutdown()
    server.server_close()


def _key_set(*keys: tuple[rsa.RSAPrivateKey, str]) -> bytes:
    jwks = []
    for key, kid in keys:
        public: dict[str, object] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwks.append(public | {"kid": kid, "use": "sig", "alg": "RS256"})
    return json.dumps({"keys": jwks}).encode()


def test_unknown_key_ids_refetch_the_key_set_once_per_interval(
    key_set_server: _KeySetServer,
) -> None:
    """A rotated key is found after at most one interval; made-up key IDs in between cost no
    fetch (the JWKS server counts what it is asked)."""
    old_key, new_key = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    now = [0.0]
    keys = RemoteKeySet(key_set_server.url, refetch_interval_s=60, clock=lambda: now[0])
    key_set_server.body = _key_set((old_key, "key-1"))
    assert keys.signing_key("key-1").key_id == "key-1"
    key_set_server.body = _key_set((old_key, "key-1"), (new_key, "key-2"))  # the provider rotates
    for second in range(50):
        now[0] = float(second)
        with pytest.raises(AuthenticationError, match="not in the identity provider"):
            keys.signing_key(f"made-up-{second}")
    assert len(key_set_server.fetches) == 1
    now[0] = 60.0
    assert keys.signing_key("key-2").key_id == "key-2"  # one refetch: the rotated key
    with pytest.raises(AuthenticationError, match="not in the identity provider"):
        keys.signing_key("made-up-again")
    assert len(key_set_server.fetches) == 2


def test_a_broken_key_set_refuses_the_token_and_keeps_the_known_keys(
    key_set_server: _KeySetServer,
) -> None:
    key = rsa.generate_private_key(65537, 2048)
    now = [0.0]
    keys = RemoteKeySet(key_set_server.url, refetch_interval_s=60, clock=lambda: now[0])
    key_set_server.body = b"<html>maintenance</html>"
    with pytest.raises(AuthenticationError, match="key set cannot be fetched"):
        keys.signing_key("key-1")
    with pytest.raises(AuthenticationError, match="not in the identity provider"):
        keys.signing_key("key-1")  # the failed fetch started the interval too
    assert len(key_set_server.fetches) == 1
    now[0] = 60.0
    key_set_server.body = _key_set((key, "key-1"))
    assert keys.signing_key("key-1").key_id == "key-1"
    now[0] = 400.0  # old enough to fetch again, and the provider is down
    key_set_server.body = b'{"keys": []}'
    assert keys.signing_key("key-1").key_id == "key-1"
    assert len(key_set_server.fetches) == 3
