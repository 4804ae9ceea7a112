"""Administration: users, service-account API keys, and the audit trail (role ``admin``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, Field

from core.audit import AuditAction, AuditEventCode
from core.db.models import Role
from core.security import Principal
from serving.api.security import audit_request, context, require_roles

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
    ctx = context(request)
    user = ctx.accounts.add_user(body.name, body.role, body.password)
    audit_request(
        request,
        AuditEventCode.SECURITY_ALERT,
        principal=admin,
        action=AuditAction.CREATE,
        resource_type="user",
        resource_id=body.name,
        detail={"change": "user created", "role": body.role},
    )
    return UserOut(**vars(user))


@router.post("/apikeys", status_code=status.HTTP_201_CREATED)
def create_api_key(request: Request, body: ApiKeyIn, admin: Admin) -> ApiKeyOut:
    """Create a service account's API key; the key is in this answer only."""
    ctx = context(request)
    new = ctx.accounts.create_api_key(body.name, body.role)
    audit_request(
        request,
        AuditEventCode.SECURITY_ALERT,
        principal=admin,
        action=AuditAction.CREATE,
        resource_type="api_key",
        resource_id=body.name,
        detail={"change": "API key created", "role": body.role},
    )
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
    ctx = context(request)
    records = ctx.audit.search(
        resource_id=resource_id, user_name=user_name, event_code=event_code, limit=limit
    )
    audit_request(
        request,
        AuditEventCode.AUDIT_LOG_USED,
        principal=admin,
        action=AuditAction.READ,
        detail={"filters": {"resource_id": resource_id, "user_name": user_name}},
    )
    return records


@router.get("/audit/verify")
def verify_audit(request: Request, admin: Admin) -> dict[str, Any]:
    """Recompute the audit hash chain and list any breaks."""
    ctx = context(request)
    report = ctx.audit.verify()
    audit_request(
        request,
        AuditEventCode.AUDIT_LOG_USED,
        principal=admin,
        action=AuditAction.EXECUTE,
        detail={"verified": report.ok, "records": report.records},
    )
    return {"ok": report.ok, "records": report.records, "problems": report.problems}
