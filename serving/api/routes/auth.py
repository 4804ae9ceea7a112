"""Sign-in (OAuth2 password grant) and who-am-I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from pydantic import BaseModel

from core.security import Actor, Door, Principal
from serving.api.security import client_address, context, require_roles

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
    hospitals: list[str]  # whose studies the caller sees
    platform_operator: bool  # sees every hospital's


@router.post("/auth/token")
def sign_in(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> TokenResponse:
    """Exchange a user name and password for a bearer token (OAuth2 password grant)."""
    ctx = context(request)
    claimed = Actor(username, Door.HTTP, address=client_address(request))
    token = ctx.accounts.sign_in(username, password, ctx.tokens, actor=claimed)
    return TokenResponse(access_token=token, expires_in=ctx.settings.token_ttl_minutes * 60)


@router.get("/me")
def me(principal: Annotated[Principal, Depends(require_roles())]) -> Me:
    """The caller's name, roles, hospitals and how they authenticated."""
    return Me(
        name=principal.name,
        roles=sorted(principal.roles),
        method=principal.method,
        hospitals=sorted(principal.scope.hospitals),
        platform_operator=principal.scope.platform_operator,
    )
