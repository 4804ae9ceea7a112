"""Tokens from a hospital's OIDC provider, checked against its JSON Web Key Set."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
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


def test_unknown_key_ids_refetch_the_key_set_once_per_interval(tmp_path: Path) -> None:
    """A rotated key is found after at most one interval; made-up key IDs in between cost no
    fetch (the JWKS server counts what it is asked)."""
    old_key, new_key = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    served: list[dict[str, object]] = []
    fetches: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            body = json.dumps({"keys": served}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, object]:
        public: dict[str, object] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        return public | {"kid": kid, "use": "sig", "alg": "RS256"}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = [0.0]
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        keys = RemoteKeySet(url, refetch_interval_s=60, clock=lambda: now[0])
        served.append(jwk(old_key, "key-1"))
        assert keys.signing_key("key-1").key_id == "key-1"
        served[:] = [jwk(old_key, "key-1"), jwk(new_key, "key-2")]  # the provider rotates
        for second in range(50):
            now[0] = float(second)
            with pytest.raises(AuthenticationError, match="not in the identity provider"):
                keys.signing_key(f"made-up-{second}")
        assert len(fetches) == 1
        now[0] = 60.0
        assert keys.signing_key("key-2").key_id == "key-2"  # one refetch: the rotated key
        with pytest.raises(AuthenticationError, match="not in the identity provider"):
            keys.signing_key("made-up-again")
        assert len(fetches) == 2
    finally:
        server.shutdown()
        server.server_close()
