"""Authentication and role checks for routes, as FastAPI dependencies.

Credentials: ``Authorization: Bearer <JWT>``, ``Authorization: Bearer rck_...`` (an API key)
or ``X-API-Key: rck_...``. Every failure is an audit event: 110114 User Authentication for a
missing or bad credential (HTTP 401), 110113 Security Alert for a role refused (HTTP 403).
The principal carries its hospital scope (:mod:`core.tenancy`), which every study a route
touches is checked against by the domain services.

:func:`require_purpose` admits only tokens that state one of the purposes a route allows
(:class:`~core.security.Purpose`, a context token of ``POST /api/auth/context-token`` or an
OIDC token's claims); a token without a purpose, an API key included, is refused with 403
(110113), never taken for "any"; an expired one is 401 as everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Request

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import Role
from core.exceptions import PurposeRequiredError
from core.security import (
    Actor,
    Door,
    Principal,
    Purpose,
    admit_request,
    authenticate_headers,
)
from serving.api.context import ApiContext

__all__ = [
    "audit_request",
    "authenticate",
    "client_address",
    "context",
    "request_actor",
    "require_purpose",
    "require_roles",
]


def context(request: Request) -> ApiContext:
    """The API process's :class:`ApiContext`."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str | None:
    """The calling network address, for audit records."""
    return request.client.host if request.client else None


def request_actor(request: Request, principal: Principal) -> Actor:
    """Who makes ``request``: the services the route calls audit what it does as this actor."""
    return Actor.from_principal(principal, Door.HTTP, client_address(request))


def audit_request(
    request: Request,
    event_code: AuditEventCode,
    *,
    principal: Principal | None = None,
    action: AuditAction = AuditAction.EXECUTE,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    user_name: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Record an audit event for ``request``: caller, role and address filled in.

    ``user_name`` names the subject when there is no authenticated ``principal`` (a failed
    sign-in). Returns the record's sequence number.
    """
    return context(request).audit.record(
        event_code,
        action=action,
        outcome=outcome,
        user_name=principal.name if principal else user_name,
        role=principal.role if principal else None,
        source_address=client_address(request),
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        detail=detail,
    )


def authenticate(request: Request) -> Principal:
    """Identify the caller from its bearer token or API key
    (:func:`core.security.authenticate_headers`).

    Raises
    ------
    AuthenticationError
        No credential, or one that is invalid, expired or revoked.
    """
    ctx = context(request)
    return authenticate_headers(
        ctx.accounts,
        ctx.tokens,
        authorization=request.headers.get("authorization"),
        api_key=request.headers.get("x-api-key"),
    )


def require_roles(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency that admits callers holding any of ``roles`` (all roles when none given);
    refusals are audited (:func:`core.security.admit_request`)."""
    allowed = frozenset(roles or Role)

    def dependency(request: Request) -> Principal:
        ctx = context(request)
        principal = admit_request(
            ctx.accounts,
            ctx.tokens,
            ctx.audit,
            authorization=request.headers.get("authorization"),
            api_key=request.headers.get("x-api-key"),
            roles=allowed,
            route=f"{request.method} {request.url.path}",
            address=client_address(request),
        )
        request.state.principal = principal
        return principal

    return dependency


def require_purpose(
    *purposes: Purpose, roles: Iterable[Role] = ()
) -> Callable[[Request], Principal]:
    """A dependency that admits callers whose token states one of ``purposes`` (and who hold
    one of ``roles``; any role when none given).

    A treatment token is bound to one patient (``principal.patient_key``): the route checks
    that what it serves is that patient's. A research token names no patient: the route serves
    de-identified data only.

    Raises
    ------
    ValueError
        No purpose given (at import of the route: a missing purpose is never "any").
    """
    if not purposes:
        raise ValueError("require_purpose needs at least one purpose")
    allowed = frozenset(Purpose(purpose) for purpose in purposes)
    by_role = require_roles(*roles)

    def dependency(request: Request) -> Principal:
        principal = by_role(request)
        if principal.purpose not in allowed:
            audit_request(
                request,
                AuditEventCode.SECURITY_ALERT,
                principal=principal,
                outcome=AuditOutcome.MINOR_FAILURE,
                resource_type="route",
                resource_id=f"{request.method} {request.url.path}",
                detail={
                    "reason": "purpose of use not allowed",
                    "purpose": principal.purpose,
                    "allowed": sorted(allowed),
                },
            )
            raise PurposeRequiredError(principal.purpose, sorted(allowed))
        return principal

    return dependency
