"""Sign-in (OAuth2 password grant), purpose-bound context tokens, and who-am-I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from pydantic import BaseModel, Field

from core.db.models import Role
from core.identity import PatientIdentity, issue_context_token
from core.security import Actor, Door, Principal, Purpose
from serving.api.security import client_address, context, request_actor, require_roles

router = APIRouter(prefix="/api", tags=["auth"])


class TokenResponse(BaseModel):
    """An OAuth2 bearer token response (RFC 6749 5.1)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class ContextTokenRequest(BaseModel):
    """What a context token is for (SMART launch context, imaging access)."""

    purpose: Purpose
    patient: str | None = Field(None, max_length=40, description="radcloud patient key")
    reason: str | None = Field(
        None, max_length=512, description="break-glass reason, where no care relationship"
    )


class ContextTokenResponse(TokenResponse):
    """A short-lived bearer token stating its purpose of use (and patient)."""

    purpose: Purpose
    patient: str | None
    break_glass: bool


class Me(BaseModel):
    """The authenticated caller."""

    name: str
    roles: list[str]
    method: str
    hospitals: list[str]  # whose studies the caller sees
    platform_operator: bool  # sees every hospital's
    purpose: str | None = None  # a context token's purpose of use
    patient: str | None = None  # the patient key a treatment token is bound to


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


@router.post("/auth/context-token")
def context_token(
    request: Request,
    body: ContextTokenRequest,
    principal: Annotated[
        Principal,
        Depends(require_roles(Role.PEER_HOSPITAL, Role.RADIOLOGIST, Role.ADMIN, Role.RESEARCHER)),
    ],
) -> ContextTokenResponse:
    """Issue a short-lived token bound to a purpose of use (treatment: one patient; research)."""
    ctx = context(request)
    try:
        issued = issue_context_token(
            principal,
            body.purpose,
            identity=PatientIdentity(ctx.db, ctx.audit),
            tokens=ctx.tokens,
            audit=ctx.audit,
            settings=ctx.settings,
            actor=request_actor(request, principal),
            patient_key=body.patient,
            reason=body.reason,
        )
    except ValueError as exc:  # treatment without a patient, research with one
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return ContextTokenResponse(
        access_token=issued.token,
        expires_in=issued.expires_in,
        purpose=issued.purpose,
        patient=issued.patient_key,
        break_glass=issued.break_glass,
    )


@router.get("/me", response_model_exclude_none=True)  # purpose, patient: context tokens
def me(principal: Annotated[Principal, Depends(require_roles())]) -> Me:
    """The caller's name, roles, hospitals and how they authenticated."""
    return Me(
        name=principal.name,
        roles=sorted(principal.roles),
        method=principal.method,
        hospitals=sorted(principal.scope.hospitals),
        platform_operator=principal.scope.platform_operator,
        purpose=principal.purpose,
        patient=principal.patient_key,
    )
