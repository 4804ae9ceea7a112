"""Authentication and role checks for routes, as FastAPI dependencies.

Credentials: ``Authorization: Bearer <JWT>``, ``Authorization: Bearer rck_...`` (an API key)
or ``X-API-Key: rck_...``. Every failure is an audit event: 110114 User Authentication for a
missing or bad credential (HTTP 401), 110113 Security Alert for a role refused (HTTP 403).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from radcloud.audit import AuditAction, AuditEventCode, AuditOutcome
from radcloud.db.models import Role
from radcloud.exceptions import AuthenticationError, PermissionDeniedError
from radcloud.security import API_KEY_PREFIX, AuthMethod, Principal
from serving.api.context import ApiContext

__all__ = ["authenticate", "client_address", "context", "require_roles"]


def context(request: Request) -> ApiContext:
    """The API process's :class:`ApiContext`."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str | None:
    """The calling network address, for audit records."""
    return request.client.host if request.client else None


def authenticate(request: Request) -> Principal:
    """Identify the caller from its bearer token or API key.

    Raises
    ------
    AuthenticationError
        No credential, or one that is invalid, expired or revoked.
    """
    ctx = context(request)
    api_key = request.headers.get("x-api-key")
    header = request.headers.get("authorization")
    if api_key:
        return ctx.accounts.authenticate_api_key(api_key)
    if not header:
        raise AuthenticationError(
            "no credentials: send 'Authorization: Bearer <token>' or an 'X-API-Key' header"
        )
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationError("Authorization header must read 'Bearer <token>'")
    if credential.startswith(API_KEY_PREFIX):
        return ctx.accounts.authenticate_api_key(credential)
    principal = ctx.tokens.verify(credential)
    if principal.method is AuthMethod.TOKEN:
        ctx.accounts.check_user_active(principal.name)
    return principal


def require_roles(*roles: Role) -> Callable[[Request], Principal]:
    """A dependency that admits callers holding any of ``roles`` (all roles when none given)."""
    allowed = frozenset(roles or Role)

    def dependency(request: Request) -> Principal:
        ctx = context(request)
        try:
            principal = authenticate(request)
        except AuthenticationError as exc:
            ctx.audit.record(
                AuditEventCode.USER_AUTHENTICATION,
                action=AuditAction.EXECUTE,
                outcome=AuditOutcome.MINOR_FAILURE,
                source_address=client_address(request),
                resource_type="route",
                resource_id=f"{request.method} {request.url.path}",
                detail={"reason": exc.reason},
            )
            raise
        if not principal.roles & allowed:
            ctx.audit.record(
                AuditEventCode.SECURITY_ALERT,
                action=AuditAction.EXECUTE,
                outcome=AuditOutcome.MINOR_FAILURE,
                user_name=principal.name,
                role=principal.role,
                source_address=client_address(request),
                resource_type="route",
                resource_id=f"{request.method} {request.url.path}",
                detail={"reason": "role not allowed", "allowed": sorted(allowed)},
            )
            raise PermissionDeniedError(principal.role, sorted(allowed))
        request.state.principal = principal
        return principal

    return dependency
