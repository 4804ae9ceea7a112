"""The model registry's production versions: ``POST /api/models/{name}/promote`` and
``/rollback`` (roles ``admin`` and ``ml_engineer``, platform operators: a model serves every
hospital). They take effect on the running service at once, with the guard rails and the
catch-up of :mod:`serving.promotion`, which audits them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from core.db.models import Role
from core.exceptions import PermissionDeniedError
from core.security import Principal
from models.registry import ModelRegistry
from serving.api.security import context, request_actor, require_roles
from serving.promotion import Promotion, promote_model, rollback_model

__all__ = ["router"]

router = APIRouter(prefix="/api/models", tags=["models"])
Engineer = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.ML_ENGINEER))]


class PromotionIn(BaseModel):
    """The version to promote; ``force`` with a written ``reason`` passes the guard rails."""

    version: int = Field(ge=1)
    force: bool = False
    reason: str | None = Field(None, max_length=2000)


class PromotionOut(BaseModel):
    """The production version now, the one before, and what the change did."""

    name: str
    version: int
    previous: int | None
    forced: bool
    overridden: list[str]
    caught_up: int


def _platform_operator(principal: Principal) -> None:
    if not principal.scope.platform_operator:
        raise PermissionDeniedError(
            f"{principal.role} of {principal.scope.describe()}", ["platform operator"]
        )


def _out(done: Promotion) -> PromotionOut:
    return PromotionOut(**vars(done))


@router.post("/{name}/promote")
def promote(request: Request, name: str, body: PromotionIn, user: Engineer) -> PromotionOut:
    """Make a version production on the running service (409 when a guard rail refuses)."""
    _platform_operator(user)
    ctx = context(request)
    done = promote_model(
        ModelRegistry(ctx.settings.paths.models_dir),
        ctx.audit,
        ctx.settings,
        name,
        body.version,
        actor=request_actor(request, user),
        force=body.force,
        reason=body.reason,
    )
    return _out(done)


@router.post("/{name}/rollback")
def rollback(request: Request, name: str, user: Engineer) -> PromotionOut:
    """Restore the production version before the current one (always allowed)."""
    _platform_operator(user)
    ctx = context(request)
    done = rollback_model(
        ModelRegistry(ctx.settings.paths.models_dir),
        ctx.audit,
        name,
        actor=request_actor(request, user),
    )
    return _out(done)
