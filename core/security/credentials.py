"""Who makes an HTTP request, from its headers, for every door that takes radcloud's
credentials: the API (``serving.api.security``) and the gateway's STOW-RS door
(``dicom_gateway.stow_door``).

Credentials: ``Authorization: Bearer <JWT>``, ``Authorization: Bearer rck_...`` (an API key)
or ``X-API-Key: rck_...``. :func:`admit_request` also checks the roles and audits every refusal:
110114 User Authentication for a missing or bad credential (HTTP 401), 110113 Security Alert
for a role refused (HTTP 403).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db.models import Role
from core.exceptions import AuthenticationError, PermissionDeniedError
from core.security.accounts import API_KEY_PREFIX, Accounts
from core.security.principal import AuthMethod, Principal
from core.security.tokens import TokenService

__all__ = ["admit_request", "authenticate_headers"]


def authenticate_headers(
    accounts: Accounts,
    tokens: TokenService,
    *,
    authorization: str | None,
    api_key: str | None,
) -> Principal:
    """Identify the caller from its bearer token or API key.

    A user's token is refused when the user was disabled or removed since it was signed, and
    its hospitals are the user's as they are now, not as when the token was signed (an OIDC
    token's hospitals come from its claim).

    Parameters
    ----------
    accounts, tokens
        Where API keys and users are, and who verifies tokens.
    authorization
        The ``Authorization`` header, if any.
    api_key
        The ``X-API-Key`` header, if any (it wins over ``Authorization``).

    Raises
    ------
    AuthenticationError
        No credential, or one that is invalid, expired or revoked.
    """
    if api_key:
        return accounts.authenticate_api_key(api_key)
    if not authorization:
        raise AuthenticationError(
            "no credentials: send 'Authorization: Bearer <token>' or an 'X-API-Key' header"
        )
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationError("Authorization header must read 'Bearer <token>'")
    if credential.startswith(API_KEY_PREFIX):
        return accounts.authenticate_api_key(credential)
    principal = tokens.verify(credential)
    # A user disabled here is refused whoever signed the token; an OIDC user needs no row here.
    if principal.method is AuthMethod.TOKEN:
        return replace(principal, scope=accounts.active_user_scope(principal.name))
    accounts.check_user_active(principal.name, must_exist=False)
    return principal


def admit_request(
    accounts: Accounts,
    tokens: TokenService,
    audit: AuditTrail,
    *,
    authorization: str | None,
    api_key: str | None,
    roles: Iterable[Role],
    route: str,
    address: str | None,
) -> Principal:
    """:func:`authenticate_headers`, then admit a caller holding one of ``roles``; every
    refusal is audited.

    Parameters
    ----------
    accounts, tokens, authorization, api_key
        As :func:`authenticate_headers`.
    audit
        Where refusals are recorded.
    roles
        The roles admitted.
    route
        ``"METHOD /path"``, the refused resource in the record.
    address
        The caller's network address.

    Raises
    ------
    AuthenticationError
        As :func:`authenticate_headers` (audited as 110114 User Authentication).
    PermissionDeniedError
        The caller holds none of ``roles`` (audited as 110113 Security Alert).
    """
    allowed = frozenset(roles)
    try:
        principal = authenticate_headers(
            accounts, tokens, authorization=authorization, api_key=api_key
        )
    except AuthenticationError as exc:
        audit.record(
            AuditEventCode.USER_AUTHENTICATION,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            source_address=address,
            resource_type="route",
            resource_id=route,
            detail={"reason": exc.reason},
        )
        raise
    if not principal.roles & allowed:
        audit.record(
            AuditEventCode.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            user_name=principal.name,
            role=principal.role,
            source_address=address,
            resource_type="route",
            resource_id=route,
            detail={"reason": "role not allowed", "allowed": sorted(allowed)},
        )
        raise PermissionDeniedError(principal.role, sorted(allowed))
    return principal
