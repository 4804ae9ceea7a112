"""The model registry's versions and stages (``GET /api/models``: the web app's Models page), its
production and shadow versions: ``POST /api/models/{name}/promote``, ``/rollback`` and
``/shadow``, ``GET /api/models/{name}/compare`` (roles ``admin`` and
``ml_engineer``, platform operators: a model serves every hospital). They take effect on the
running service at once, with the guard rails and the catch-up of :mod:`serving.promotion`, which
audits them; a shadow (:mod:`serving.shadow`) is audited likewise."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from core.db.models import Role
from core.exceptions import PermissionDeniedError
from core.security import Principal
from models.registry import ModelRegistry, RegisteredModel, Stage
from serving.api.security import context, request_actor, require_roles
from serving.promotion import Promotion, promote_model, rollback_model
from serving.shadow import compare_shadow, start_shadow, stop_shadow

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


class CardMetrics(BaseModel):
    """The headline figures of a version's card and what they were measured on."""

    evaluated_on: str
    auc: float | None
    sensitivity: float | None
    specificity: float | None
    dice: float | None


class InputContract(BaseModel):
    """What a version takes (the card's ``inputs``); a promotion must keep production's."""

    modality: str
    body_part: str
    shape: list[int]
    axes: str
    spacing_mm: list[float] | None
    dtype: str


class VersionOut(BaseModel):
    """One version of a model, its stage and card."""

    version: int
    stage: str
    created: dt.datetime
    production: bool
    shadow: bool
    threshold: float | None
    metrics: CardMetrics
    inputs: InputContract


class ModelOut(BaseModel):
    """A model's versions, oldest first, and which one is production and in shadow (null:
    none)."""

    name: str
    task: str
    production: int | None
    shadow: int | None
    versions: list[VersionOut]


def _version(model: RegisteredModel, shadow: int | None) -> VersionOut:
    card, inputs = model.card, model.card.inputs
    return VersionOut(
        version=model.version,
        stage=str(model.stage),
        created=card.created,
        production=model.stage == Stage.PRODUCTION,
        shadow=model.version == shadow,
        threshold=card.threshold.value if card.threshold else None,
        metrics=CardMetrics(
            evaluated_on=card.metrics.evaluated_on,
            auc=card.metrics.auc,
            sensitivity=card.metrics.sensitivity,
            specificity=card.metrics.specificity,
            dice=card.metrics.dice,
        ),
        inputs=InputContract(
            modality=inputs.modality,
            body_part=inputs.body_part,
            shape=list(inputs.shape),
            axes=inputs.axes,
            spacing_mm=list(inputs.spacing_mm) if inputs.spacing_mm is not None else None,
            dtype=inputs.dtype,
        ),
    )


@router.get("")
def list_models(request: Request, user: Engineer) -> list[ModelOut]:
    """Every registered model with its versions, stages, cards' figures and input contracts."""
    _platform_operator(user)
    registry = ModelRegistry(context(request).settings.paths.models_dir)
    found = []
    for name in registry.names():
        versions = registry.versions(name)
        shadow = registry.shadow(name)
        shadow_version = shadow.version if shadow else None
        found.append(
            ModelOut(
                name=name,
                task=str(versions[-1].card.task) if versions else "",
                production=next((v.version for v in versions if v.stage == Stage.PRODUCTION), None),
                shadow=shadow_version,
                versions=[_version(v, shadow_version) for v in versions],
            )
        )
    return found


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


class ShadowIn(BaseModel):
    """The version to run in shadow; null stops the shadow."""

    version: int | None = Field(None, ge=1)


class ShadowOut(BaseModel):
    """The shadow version now and the one before (null: none)."""

    name: str
    version: int | None
    previous: int | None


@router.post("/{name}/shadow")
def shadow(request: Request, name: str, body: ShadowIn, user: Engineer) -> ShadowOut:
    """Run a version in shadow on live studies (unseen by readers and the archive), or stop it."""
    _platform_operator(user)
    ctx = context(request)
    registry = ModelRegistry(ctx.settings.paths.models_dir)
    actor = request_actor(request, user)
    if body.version is None:
        previous = stop_shadow(registry, ctx.audit, name, actor=actor)
    else:
        previous = start_shadow(registry, ctx.audit, name, body.version, actor=actor)
    return ShadowOut(name=name, version=body.version, previous=previous)


@router.get("/{name}/compare")
def compare(
    request: Request, name: str, user: Engineer, version: str | None = None
) -> dict[str, Any]:
    """The shadow version against production on the same studies (``radcloud models compare``)."""
    _platform_operator(user)
    ctx = context(request)
    ModelRegistry(ctx.settings.paths.models_dir).get(name)  # 404 for an unknown model
    return compare_shadow(ctx.db, name, version=version).to_json()
