"""Administration: users, service-account API keys, and the audit trail (role ``admin``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, model_validator

from core.db.models import Role
from core.exceptions import PermissionDeniedError
from core.security import Principal, UserInfo
from serving.api.security import context, request_actor, require_roles

router = APIRouter(prefix="/api", tags=["admin"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


class UserIn(BaseModel):
    """A user to create."""

    name: str = Field(min_length=1, max_length=128)
    role: Role
    password: str | None = Field(None, min_length=12, repr=False)
    hospitals: list[str] = Field(default_factory=list, max_length=100)
    platform_operator: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> UserIn:
        if self.hospitals and self.platform_operator:
            raise ValueError("give hospitals or platform_operator, not both")
        return self


class UserOut(BaseModel):
    """A user as admins see it."""

    name: str
    role: Role
    has_password: bool
    disabled: bool
    hospitals: list[str]
    platform_operator: bool
    identified_hospitals: list[str]


class ApiKeyIn(BaseModel):
    """A service account to create."""

    name: str = Field(min_length=1, max_length=128)
    role: Role
    hospital: str | None = Field(None, min_length=1, max_length=128)
    platform_operator: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> ApiKeyIn:
        if self.hospital and self.platform_operator:
            raise ValueError("give hospital or platform_operator, not both")
        return self


class ApiKeyOut(BaseModel):
    """A new API key: ``key`` is shown this once."""

    name: str
    role: Role
    key: str
    hospital: str | None
    platform_operator: bool


def _require_platform_operator(principal: Principal) -> None:
    if not principal.scope.platform_operator:
        raise PermissionDeniedError(
            f"{principal.role} of {principal.scope.describe()}", ["platform operator"]
        )


class AssignmentIn(BaseModel):
    """A hospital to assign a user, and whether an ml_engineer sees its identified data."""

    hospital: str = Field(min_length=1, max_length=128)
    identified: bool = False


@router.get("/users")
def list_users(request: Request, admin: Admin) -> list[UserOut]:
    """The users this administrator manages (assigned one of its hospitals; a platform
    operator: all), their roles and hospitals."""
    return [_user_out(user) for user in context(request).accounts.list_users(admin.scope)]


@router.post("/users/{name}/hospitals")
def assign_hospital(request: Request, name: str, body: AssignmentIn, admin: Admin) -> UserOut:
    """Assign user ``name`` a hospital (one of the administrator's own; again for an assigned
    one: set ``identified``); audited."""
    try:
        user = context(request).accounts.assign_hospital(
            name, body.hospital, identified=body.identified, actor=request_actor(request, admin)
        )
    except ValueError as exc:  # a platform operator is assigned no hospital
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    return _user_out(user)


@router.delete("/users/{name}/hospitals/{hospital}")
def unassign_hospital(request: Request, name: str, hospital: str, admin: Admin) -> UserOut:
    """Withdraw user ``name``'s assignment to ``hospital`` (one of the administrator's own),
    at once, tokens included; audited."""
    user = context(request).accounts.unassign_hospital(
        name, hospital, actor=request_actor(request, admin)
    )
    return _user_out(user)


@router.post("/users", status_code=status.HTTP_201_CREATED)
def add_user(request: Request, body: UserIn, admin: Admin) -> UserOut:
    """Create a user with a role, assigned hospitals or a platform operator (and optionally a
    password for sign-in)."""
    actor = request_actor(request, admin)
    user = context(request).accounts.add_user(
        body.name,
        body.role,
        body.password,
        hospitals=body.hospitals,
        platform_operator=body.platform_operator,
        actor=actor,
    )
    return _user_out(user)


def _user_out(user: UserInfo) -> UserOut:
    return UserOut(
        **(
            vars(user)
            | {
                "hospitals": list(user.hospitals),
                "identified_hospitals": list(user.identified_hospitals),
            }
        )
    )


@router.post("/apikeys", status_code=status.HTTP_201_CREATED)
def create_api_key(request: Request, body: ApiKeyIn, admin: Admin) -> ApiKeyOut:
    """Create a service account's API key of one hospital (or a platform operator's); the key
    is in this answer only."""
    actor = request_actor(request, admin)
    new = context(request).accounts.create_api_key(
        body.name,
        body.role,
        hospital=body.hospital,
        platform_operator=body.platform_operator,
        actor=actor,
    )
    return ApiKeyOut(
        name=new.name,
        role=new.role,
        key=new.key,
        hospital=new.hospital,
        platform_operator=new.platform_operator,
    )


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
    """Audit records, newest first, filtered by resource, user or event code (platform
    operators only: the trail names every hospital's studies)."""
    _require_platform_operator(admin)
    return context(request).audit.search(
        actor=request_actor(request, admin),
        resource_id=resource_id,
        user_name=user_name,
        event_code=event_code,
        limit=limit,
    )


@router.get("/audit/verify")
def verify_audit(request: Request, admin: Admin) -> dict[str, Any]:
    """Recompute the keyed audit chain: whether it is intact, and the first bad record and why
    (platform operators and each hospital's admins, its auditors: the answer names record
    numbers and reasons, nothing of any study)."""
    report = context(request).audit.verify(actor=request_actor(request, admin))
    first = report.first_bad
    return {
        "ok": report.ok,
        "records": report.records,
        "first_bad": None if first is None else {"seq": first.seq, "reason": first.reason},
        "problems": report.problems,
    }
