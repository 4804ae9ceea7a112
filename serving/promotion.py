"""Promotion and rollback of a model version on the running service, with guard rails and the
catch-up of the studies that arrived while a model had no production version.

Serving needs no restart (:class:`serving.deployments.ModelServer` is multiplexed by version):
the registry's production version is what the triage pipeline reads when it starts a study, and
what it asks the model's deployment for; a study in flight finishes on the version it started
with. :func:`promote_model` and :func:`rollback_model` are what ``radcloud models promote|rollback``
and ``POST /api/models/{name}/promote|rollback`` call; both are audited (110100 Application
Activity on the model), a refusal with its reason.

Guard rails (:func:`promotion_problems`): a promotion is refused when

- a headline figure of the version's card (AUC, sensitivity, specificity, Dice) is below the
  floor that ``radcloud models verify`` sets for the production version
  (:func:`serving.verify.floors` of the production card on a set of verify's default size,
  :data:`FLOOR_STUDIES` studies, half positive), or the card lacks a figure the production card
  has;
- its input contract differs from the production version's: the modality, the resampled
  spacing, the number of input channels;

unless it is forced with a written reason, which the audit record keeps with the overridden
problems. A first promotion has nothing to compare with; a rollback is always allowed.

Catch-up (:func:`queue_catch_up`): when a model gains its first production version, the studies
that were triaged without one (a failed ``no_model`` or ``unsupported`` result and no result of
this model), that have a series of the card's modalities, arrived at most
``triage_catch_up_max_age_hours`` ago and are not queued already, newest first, are queued as
``study.catch_up`` events (the payload of their last arrival event), at most
``triage_catch_up_max_studies`` waiting at once. The triage workers take one only when no live
event is due (:func:`serving.triage.outbox.claim_next`). :func:`core.events.catch_up_backlog`
counts them for ``radcloud status``; ``/metrics`` shows them as
``radcloud_outbox_pending{topic="study.catch_up"}``.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditedChange, AuditEventCode, AuditTrail
from core.config import Settings
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study, utcnow
from core.events import STUDY_CATCH_UP, STUDY_READY, STUDY_UPDATED
from core.security import Actor
from models.card import ModelCard
from models.registry import ModelRegistry, RegisteredModel
from serving.exceptions import FailureReason, PromotionRefusedError
from serving.triage.outbox import TOPICS
from serving.triage.persist import NO_MODEL

__all__ = [
    "FLOOR_STUDIES",
    "Promotion",
    "audited_model_change",
    "promote_model",
    "promotion_problems",
    "queue_catch_up",
    "rollback_model",
]

logger = logging.getLogger(__name__)

FLOOR_STUDIES = 100
"""The set size the floors are computed for: ``radcloud models verify``'s default."""
_FIGURES = ("auc", "sensitivity", "specificity", "dice")
_MIN_DICE_SD = 0.1  # as serving.verify: a card carries no measured spread
_MISSED = (f"{FailureReason.NO_MODEL}:%", f"{FailureReason.UNSUPPORTED}:%")


@dataclass
class Promotion:
    """What a promotion or rollback did."""

    name: str
    version: int
    previous: int | None
    forced: bool = False
    overridden: list[str] = field(default_factory=list)
    caught_up: int = 0


def promotion_problems(candidate: ModelCard, production: ModelCard | None) -> list[str]:
    """Why ``candidate`` should not replace ``production`` (empty: nothing against it).

    Parameters
    ----------
    candidate
        The card of the version to promote.
    production
        The card of the production version, or None when there is none.
    """
    from serving.verify import floors

    if production is None:
        return []
    problems = []
    half = FLOOR_STUDIES // 2
    floor = floors(production, half, FLOOR_STUDIES - half, dice_sd=_MIN_DICE_SD)
    for figure in _FIGURES:
        if figure not in floor:
            continue
        value = getattr(candidate.metrics, figure)
        if value is None:
            problems.append(f"the card has no {figure} (production's floor {floor[figure]:.3f})")
        elif value < floor[figure]:
            problems.append(
                f"{figure} {value:.3f} is below the floor {floor[figure]:.3f} of production "
                f"v{production.version} ({figure} {getattr(production.metrics, figure):.3f})"
            )
    new, old = candidate.inputs, production.inputs
    if new.modality != old.modality:
        problems.append(f'input modality "{new.modality}": production takes "{old.modality}"')
    if new.spacing_mm != old.spacing_mm:
        problems.append(
            f"input spacing {_spacing(new.spacing_mm)}: production takes {_spacing(old.spacing_mm)}"
        )
    if new.shape[0] != old.shape[0]:
        problems.append(f"{new.shape[0]} input channels: production takes {old.shape[0]}")
    return problems


def _spacing(spacing: tuple[float, ...] | None) -> str:
    return "none (resized)" if spacing is None else f"{list(spacing)} mm"


def promote_model(
    registry: ModelRegistry,
    audit: AuditTrail,
    settings: Settings,
    name: str,
    version: int,
    *,
    actor: Actor,
    force: bool = False,
    reason: str | None = None,
) -> Promotion:
    """Make ``version`` of ``name`` production on the running service (audited).

    Parameters
    ----------
    registry, audit, settings
        The model registry, the audit trail (its database gets the catch-up events) and the
        settings (the catch-up bounds).
    name, version
        The model and the version to promote.
    actor
        Who promotes.
    force, reason
        Promote despite the guard rails; ``reason`` (required with ``force``) is audited.

    Raises
    ------
    PromotionRefusedError
        A guard rail says no and ``force`` is not set, or ``force`` comes without a reason.
    ModelNotFoundError
        No such model or version.
    """
    written = (reason or "").strip()
    detail: dict[str, object] = {"version": version, "forced": force}
    if written:
        detail["force_reason"] = written
    with audited_model_change(audit, name, actor, "promoted", **detail) as change:
        if force and not written:
            raise PromotionRefusedError(name, version, ["forced without a written reason"])
        candidate = registry.get(name, version)
        before = registry.production(name)
        problems = (
            []
            if before is None or before.version == candidate.version
            else (promotion_problems(candidate.card, before.card))
        )
        if problems and not force:
            raise PromotionRefusedError(name, candidate.version, problems)
        change.detail |= {"archived": before.version if before else None}
        if problems:
            change.detail["overridden"] = problems
        caught_up = 0
        if before is None:
            caught_up = queue_catch_up(change.session, settings, candidate)
            change.detail["catch_up_queued"] = caught_up
        registry.promote(name, candidate.version)  # last: a refusal above changes nothing
    logger.info(
        "%s v%d promoted by %s%s",
        name,
        candidate.version,
        actor.name,
        " (forced)" if problems else "",
    )
    return Promotion(
        name=name,
        version=candidate.version,
        previous=before.version if before else None,
        forced=bool(problems),
        overridden=problems,
        caught_up=caught_up,
    )


def audited_model_change(
    audit: AuditTrail, name: str, actor: Actor, change: str, **detail: object
) -> AbstractContextManager[AuditedChange]:
    """:meth:`~core.audit.AuditTrail.audited` for a change of which version of model ``name``
    serves or shadows (110100 Application Activity on the model; a refusal is recorded with its
    reason): promote, rollback, shadow."""
    return audit.audited(
        AuditEventCode.APPLICATION_ACTIVITY,
        actor=actor,
        action=AuditAction.UPDATE,
        resource_type="model",
        resource_id=name,
        detail={"change": change, **detail},
    )


def rollback_model(
    registry: ModelRegistry, audit: AuditTrail, name: str, *, actor: Actor
) -> Promotion:
    """Restore the production version before the current one (audited; no guard rail).

    Raises
    ------
    StageError
        ``name`` has no production version, or none before it.
    ModelNotFoundError
        No such model.
    """
    with audited_model_change(audit, name, actor, "rolled back") as change:
        before = registry.production(name)
        restored = registry.rollback(name)
        change.detail |= {
            "archived": before.version if before else None,
            "version": restored.version,
        }
    logger.info("%s rolled back to v%d by %s", name, restored.version, actor.name)
    return Promotion(
        name=name, version=restored.version, previous=before.version if before else None
    )


def queue_catch_up(session: Session, settings: Settings, model: RegisteredModel) -> int:
    """Queue the studies that arrived without a production ``model`` (see the module
    docstring) in ``session``; return how many."""
    room = settings.triage_catch_up_max_studies - _pending(session)
    if room <= 0:
        return 0
    cutoff = utcnow() - dt.timedelta(hours=settings.triage_catch_up_max_age_hours)
    missed = select(InferenceResult.study_id).where(
        InferenceResult.model_name == NO_MODEL.name,
        InferenceResult.status == InferenceStatus.FAILED,
        or_(*(InferenceResult.error.like(prefix) for prefix in _MISSED)),
    )
    has_result = select(InferenceResult.study_id).where(InferenceResult.model_name == model.name)
    queued = select(OutboxEvent.key).where(
        OutboxEvent.topic.in_(TOPICS), OutboxEvent.processed_at.is_(None)
    )
    candidates = session.execute(
        select(Study.study_instance_uid)
        .where(
            Study.id.in_(missed),
            Study.id.not_in(has_result),
            Study.study_instance_uid.not_in(queued),
            Study.ready_at >= cutoff,
        )
        .order_by(Study.ready_at.desc())
    ).scalars()
    modalities = set(model.card.series_selection.modalities)
    count = 0
    for uid in candidates:
        arrival = session.scalars(
            select(OutboxEvent)
            .where(
                OutboxEvent.key == uid,
                OutboxEvent.topic.in_((STUDY_READY.value, STUDY_UPDATED.value)),
            )
            .order_by(OutboxEvent.id.desc())
            .limit(1)
        ).first()
        if arrival is None:
            continue
        series = arrival.payload.get("series") or []
        if not any(s.get("modality") in modalities for s in series):
            continue
        session.add(OutboxEvent(topic=STUDY_CATCH_UP.value, key=uid, payload=arrival.payload))
        count += 1
        if count >= room:
            break
    logger.info(
        "%s: %d studies that arrived without a production version queued", model.name, count
    )
    return count


def _pending(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.topic == STUDY_CATCH_UP.value, OutboxEvent.processed_at.is_(None))
        )
        or 0
    )
