"""Bearer tokens: JWTs signed by radcloud (HS256), or by a hospital's OIDC provider (JWKS).

radcloud's own tokens (``radcloud token NAME``, ``POST /api/auth/token``) are HS256 with the
generated signing key, issuer ``jwt_issuer`` and audience ``jwt_audience``. When
``jwt_algorithm`` is RS256 or ES256, tokens of that algorithm are also accepted if a key of
``jwt_jwks_url`` (an HTTPS URL, or a key-set file copied to local disk) verifies them and
their issuer is ``jwt_jwks_issuer``; their roles come from the ``jwt_roles_claim`` claim (a
dotted path such as ``realm_access.roles`` is followed), their hospitals from the
``jwt_hospitals_claim`` claim (:mod:`core.tenancy`; an OIDC user is never a platform operator,
an OIDC ``ml_engineer`` gets no hospital's identified data,
and radcloud's own tokens carry no hospitals: the API reads a user's from the database on every
request). The algorithm is fixed per key type, so a token cannot choose how it is checked (no
``alg`` confusion). A key set fetched over HTTP(S) is fetched again for an unknown key ID at
most every ``jwt_jwks_refetch_interval_s`` (:class:`~core.security._jwks.RemoteKeySet`).

Purpose of use: a token may state ``purpose`` (``treatment`` or ``research``), with a
treatment token's ``patient`` (a radcloud patient key) and break-glass ``reason``
(:class:`~core.security.principal.Purpose`; radcloud issues such tokens through
:func:`core.identity.issue_context_token`). An OIDC token's come from the
``jwt_purpose_claim``, ``jwt_patient_claim`` and ``jwt_reason_claim`` claims. A token naming
an unknown purpose, or a treatment token without a patient, is refused; a token without a
purpose is valid, with no purpose (never "any").
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from core.config import JwtAlgorithm, Settings
from core.db.models import Role
from core.exceptions import AuthenticationError
from core.security._jwks import RemoteKeySet
from core.security.principal import AuthMethod, Principal, Purpose
from core.tenancy import HospitalScope

__all__ = ["TokenService"]

_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAudienceError, "token audience is not this service"),
    (jwt.InvalidIssuerError, "token issuer is not trusted"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.PyJWKClientError, "token signing key is not in the identity provider's key set"),
    (jwt.DecodeError, "token is malformed"),
    (jwt.InvalidTokenError, "token is invalid"),
)


def _reason(exc: Exception) -> str:
    for cls, reason in _ERRORS:
        if isinstance(exc, cls):
            return reason
    return "token is invalid"


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _roles(value: Any) -> frozenset[Role]:
    names = [value] if isinstance(value, str) else list(value or [])
    known = {role.value for role in Role}
    return frozenset(Role(name) for name in names if isinstance(name, str) and name in known)


def _hospitals(value: Any) -> HospitalScope:
    names = [value] if isinstance(value, str) else list(value or [])
    return HospitalScope.of(name for name in names if isinstance(name, str) and name.strip())


class TokenService:
    """Issues radcloud's tokens and verifies any accepted bearer token.

    Parameters
    ----------
    settings
        Issuer, audience, lifetime and the external identity provider's settings.
    signing_key
        The HS256 secret (from :func:`core.secrets.load_secrets`).
    """

    def __init__(self, settings: Settings, signing_key: str) -> None:
        self._settings = settings
        self._key = signing_key
        self._jwks: RemoteKeySet | jwt.PyJWKSet | None = None
        url = settings.jwt_jwks_url
        if settings.jwt_algorithm is not JwtAlgorithm.HS256 and url:
            if url.startswith(("http://", "https://")):
                self._jwks = RemoteKeySet(
                    url, refetch_interval_s=settings.jwt_jwks_refetch_interval_s
                )
            else:  # a key set copied to local disk (file:// URL or path)
                path = Path(url.removeprefix("file://"))
                self._jwks = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))

    def issue(
        self,
        name: str,
        roles: Iterable[Role],
        ttl: dt.timedelta | None = None,
        *,
        purpose: Purpose | str | None = None,
        patient_key: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Sign a token for ``name`` with ``roles`` valid for ``ttl`` (default from settings).

        Parameters
        ----------
        name, roles, ttl
            Who, with which roles, for how long.
        purpose, patient_key, reason
            A context token's purpose of use, the patient a treatment token is bound to, and
            its break-glass reason (:func:`core.identity.issue_context_token` checks them).

        Raises
        ------
        ValueError
            A treatment purpose without a patient key, or a patient key without treatment.
        """
        now = dt.datetime.now(dt.UTC)
        lifetime = ttl or dt.timedelta(minutes=self._settings.token_ttl_minutes)
        stated = Purpose(purpose) if purpose is not None else None
        if (stated is Purpose.TREATMENT) != (patient_key is not None):
            raise ValueError("a patient key goes with a treatment purpose, and only with it")
        claims: dict[str, Any] = {
            "sub": name,
            "roles": sorted(Role(role).value for role in roles),
            "iss": self._settings.jwt_issuer,
            "aud": self._settings.jwt_audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if stated is not None:
            claims["purpose"] = stated.value
        if patient_key is not None:
            claims["patient"] = patient_key
        if reason:
            claims["reason"] = reason
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """Check ``token`` and return who it names.

        Raises
        ------
        AuthenticationError
            Bad signature, expired, wrong issuer or audience, malformed, or no known role. The
            message never contains the token.
        """
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(_reason(exc)) from None
        try:
            if algorithm == "HS256":
                claims = self._decode_own(token)
                method = AuthMethod.TOKEN
            elif self._jwks is not None and algorithm == self._settings.jwt_algorithm.value:
                claims = self._decode_external(token)
                method = AuthMethod.OIDC
            else:
                raise AuthenticationError(f'token algorithm "{algorithm}" is not accepted')
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(_reason(exc)) from None
        roles_claim = "roles" if method is AuthMethod.TOKEN else self._settings.jwt_roles_claim
        roles = _roles(_claim(claims, roles_claim))
        if not roles:
            raise AuthenticationError(f'token carries no radcloud role in claim "{roles_claim}"')
        scope = HospitalScope()
        if method is AuthMethod.OIDC and not roles <= {Role.ML_ENGINEER, Role.RESEARCHER}:
            # an ml_engineer sees identified data only by a user's grant here, never by a
            # claim; a researcher never sees any
            scope = _hospitals(_claim(claims, self._settings.jwt_hospitals_claim))
        purpose, patient_key, reason = self._context(claims, method)
        return Principal(
            str(claims["sub"]),
            roles,
            method,
            claims.get("jti"),
            scope,
            purpose=purpose,
            patient_key=patient_key,
            reason=reason,
        )

    def _context(
        self, claims: dict[str, Any], method: AuthMethod
    ) -> tuple[Purpose | None, str | None, str | None]:
        """The purpose of use, patient key and reason a token's claims state."""
        own = method is AuthMethod.TOKEN
        names = (
            ("purpose", "patient", "reason")
            if own
            else (
                self._settings.jwt_purpose_claim,
                self._settings.jwt_patient_claim,
                self._settings.jwt_reason_claim,
            )
        )
        stated, patient, reason = (_claim(claims, name) for name in names)
        if stated is None:
            if patient is not None:
                raise AuthenticationError("token names a patient but no purpose of use")
            return None, None, None
        known = {purpose.value for purpose in Purpose}
        if not isinstance(stated, str) or stated not in known:
            raise AuthenticationError(
                f'token purpose of use "{stated}" is not known: expected one of '
                f"{', '.join(sorted(known))}"
            )
        purpose = Purpose(stated)
        if purpose is Purpose.TREATMENT and not (isinstance(patient, str) and patient.strip()):
            raise AuthenticationError("treatment token names no patient")
        if purpose is Purpose.RESEARCH and patient is not None:
            raise AuthenticationError("research token must not name a patient")
        return (
            purpose,
            patient if purpose is Purpose.TREATMENT else None,
            reason if isinstance(reason, str) and reason else None,
        )

    def _decode_own(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self._key,
            algorithms=["HS256"],
            audience=self._settings.jwt_audience,
            issuer=self._settings.jwt_issuer,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )

    def _decode_external(self, token: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token).get("kid")
        if isinstance(self._jwks, RemoteKeySet):
            key = self._jwks.signing_key(kid).key
        elif self._jwks is not None:
            try:
                key = self._jwks[str(kid)].key
            except KeyError:
                raise AuthenticationError(
                    f'token signing key "{kid}" is not in the key set'
                ) from None
        else:
            raise AuthenticationError("no identity provider key set is configured")
        return jwt.decode(
            token,
            key,
            algorithms=[self._settings.jwt_algorithm.value],
            audience=self._settings.jwt_audience,
            issuer=self._settings.jwt_jwks_issuer,
            options={"require": ["exp", "sub", "iss"]},
        )
