"""Builds the triage pipeline and the notifier from settings (used by the Serve deployments
and by tests that drive the pipeline without Ray)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.archive import open_archive
from core.audit import AuditTrail
from core.config import Settings
from core.db import Database, upgrade
from core.db.models import InferenceResult, Study
from core.secrets import load_secrets
from models.registry import ModelRegistry
from serving.notify import WebhookNotifier, enqueue_critical_finding, signing_key
from serving.triage import Predict, TriagePipeline
from serving.worklist import WorklistPolicy, ensure_worklist_item, record_ai_outcome

__all__ = ["build_notifier", "build_pipeline"]


def build_pipeline(
    settings: Settings, predict: Predict, served: set[str] | None = None
) -> TriagePipeline:
    """A triage pipeline with the worklist and notification hooks.

    Parameters
    ----------
    settings
        The instance's settings.
    predict
        Reaches the model deployments.
    served
        Names of the models that have a deployment (others are not run); None: all production
        models.
    """
    secrets = load_secrets(settings)
    db = Database.from_settings(settings)
    upgrade(db)
    policy = WorklistPolicy.from_settings(settings)

    def on_ready(session: Session, study: Study) -> None:
        ensure_worklist_item(session, study, policy)

    def on_outcome(
        session: Session,
        study: Study,
        *,
        score: float | None,
        critical: bool,
        failed: bool,
        threshold: float | None,
        calibrated: bool | None,
    ) -> None:
        chosen = policy.for_threshold(threshold) if threshold is not None else policy
        record_ai_outcome(
            session,
            study,
            score=score,
            critical=critical,
            failed=failed,
            policy=chosen,
            threshold=threshold,
            calibrated=calibrated,
        )

    def on_critical(session: Session, study: Study, result: InferenceResult) -> None:
        enqueue_critical_finding(session, study=study, result=result, settings=settings)

    return TriagePipeline(
        settings,
        db,
        AuditTrail.from_secrets(db, secrets),
        open_archive(settings, secrets),
        registry=ModelRegistry(settings.paths.models_dir),
        predict=predict,
        served=served,
        on_ready=on_ready,
        on_outcome=on_outcome,
        on_critical=on_critical,
    )


def build_notifier(settings: Settings) -> WebhookNotifier | None:
    """The critical-finding webhook notifier, or None when no webhook URL is configured."""
    if not getattr(settings, "notify_webhook_url", None):
        return None
    secrets = load_secrets(settings)
    db = Database.from_settings(settings)
    return WebhookNotifier(
        db,
        settings,
        signing_key(settings, secrets),
        AuditTrail.from_secrets(db, secrets),
    )
