"""Administration: users, service-account API keys, and the audit trail (role ``admin``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, Field

from core.db.models import Role
from core.security import Principal
from serving.api.security import context, request_actor, require_roles

router = APIRouter(prefix="/api", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


class UserIn(BaseModel):
    """A user to create."""

    name: str = Field(min_length=1, max_length=128)
    role: Role
    password: str | None = Field(None, min_length=12, repr=False)


class UserOut(BaseModel):
    """A user as admins see it."""

    name: str
    role: Role
    has_password: bool
    disabled: bool


class ApiKeyIn(BaseModel):
    """A service account to create."""

    name: str = Field(min_length=1, max_length=128)
    role: Role


class ApiKeyOut(BaseModel):
    """A new API key: ``key`` is shown this once."""

    name: str
    role: Role
    key: str


@router.get("/users")
def list_users(request: Request, _admin: Admin) -> list[UserOut]:
    """All users and their roles."""
    return [UserOut(**vars(user)) for user in context(request).accounts.list_users()]


@router.post("/users", status_code=status.HTTP_201_CREATED)
def add_user(request: Request, body: UserIn, admin: Admin) -> UserOut:
    """Create a user with a role (and optionally a password for sign-in)."""
    actor = request_actor(request, admin)
    user = context(request).accounts.add_user(body.name, body.role, body.password, actor=actor)
    return UserOut(**vars(user))


@router.post("/apikeys", status_code=status.HTTP_201_CREATED)
def create_api_key(request: Request, body: ApiKeyIn, admin: Admin) -> ApiKeyOut:
    """Create a service account's API key; the key is in this answer only."""
    actor = request_actor(request, admin)
    new = context(request).accounts.create_api_key(body.name, body.role, actor=actor)
    return ApiKeyOut(name=new.name, role=new.role, key=new.key)


@router.get("/audit")
def search_audit(
    request: Request,
    admin: Admin,
    *,
    resource_id: str | None = None,
    user_name: str | None = None,
    event_code: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Audit records, newest first, filtered by resource, user or event code."""
    return context(request).audit.search(
        actor=request_actor(request, admin),
        resource_id=resource_id,
        user_name=user_name,
        event_code=event_code,
        limit=limit,
    )


@router.get("/audit/verify")
def verify_audit(request: Request, admin: Admin) -> dict[str, Any]:
    """Recompute the audit hash chain and list any breaks."""
    report = context(request).audit.verify(actor=request_actor(request, admin))
    return {"ok": report.ok, "records": report.records, "problems": report.problems}
