"""Sign-in (OAuth2 password grant) and who-am-I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel

from core.audit import AuditEventCode, AuditOutcome
from core.exceptions import AuthenticationError
from core.security import Principal
from serving.api.security import audit_request, context, require_roles

router = APIRouter(prefix="/api", tags=["auth"])


class TokenResponse(BaseModel):
    """An OAuth2 bearer token response (RFC 6749 5.1)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class Me(BaseModel):
    """The authenticated caller."""

    name: str
    roles: list[str]
    method: str


@router.post("/auth/token")
def sign_in(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> TokenResponse:
    """Exchange a user name and password for a bearer token (OAuth2 password grant)."""
    ctx = context(request)
    try:
        principal = ctx.accounts.authenticate_password(username, password)
    except AuthenticationError as exc:
        audit_request(
            request,
            AuditEventCode.USER_AUTHENTICATION,
            outcome=AuditOutcome.MINOR_FAILURE,
            user_name=username,
            detail={"reason": exc.reason, "method": "password"},
        )
        raise
    token = ctx.tokens.issue(principal.name, principal.roles)
    audit_request(
        request,
        AuditEventCode.USER_AUTHENTICATION,
        principal=principal,
        detail={"method": "password"},
    )
    return TokenResponse(access_token=token, expires_in=ctx.settings.token_ttl_minutes * 60)


@router.get("/me")
def me(principal: Annotated[Principal, Depends(require_roles())]) -> Me:
    """The caller's name, roles and how they authenticated."""
    return Me(name=principal.name, roles=sorted(principal.roles), method=principal.method)
