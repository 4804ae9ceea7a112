"""Recording one event's outcome: result rows, the worklist priority, critical-finding
notifications, the event marked processed (one transaction), then the audit records.

The study's combined AI outcome handed to the worklist is that of its most urgent model (the
highest score relative to the model's operating threshold, among each model's newest version);
critical when any model says so; failed only when no model succeeded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study, utcnow
from models.card import ModelCard
from serving.exceptions import UnprocessableStudyError
from serving.inference import ModelOutput

__all__ = [
    "NO_MODEL",
    "CriticalHook",
    "ModelRun",
    "Outcome",
    "OutcomeHook",
    "ResultStore",
    "ServedModel",
]

logger = logging.getLogger(__name__)


class OutcomeHook(Protocol):
    """Called with a study's combined AI outcome inside the result transaction."""

    def __call__(
        self,
        session: Session,
        study: Study,
        *,
        score: float | None,
        critical: bool,
        failed: bool,
        threshold: float | None,
        calibrated: bool | None,
    ) -> None: ...


#: ``on_critical(session, study, result)``: called per critical result in the transaction.
CriticalHook = Callable[[Session, Study, InferenceResult], None]


@dataclass
class ServedModel:
    """A production model version serving runs."""

    name: str
    version: str
    card: ModelCard


# The "model" of a result row for a study that failed before any model ran (no card needed).
NO_MODEL = ServedModel("(none)", "-", None)  # type: ignore[arg-type]

#: One model's run on the study: the model, its output (or why it failed), the result's
#: findings and per-stage timings.
ModelRun = tuple[
    ServedModel, ModelOutput | UnprocessableStudyError, dict[str, Any], dict[str, float]
]


@dataclass
class Outcome:
    """What processing one event produced (for logs, tests and the demo)."""

    study_instance_uid: str
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class ResultStore:
    """Writes the results of one event and audits them.

    Parameters
    ----------
    db, audit
        The application database and audit trail.
    on_outcome, on_critical
        Hooks called inside the result transaction (see :class:`OutcomeHook`,
        :data:`CriticalHook`).
    """

    def __init__(
        self,
        db: Database,
        audit: AuditTrail,
        *,
        on_outcome: OutcomeHook | None = None,
        on_critical: CriticalHook | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.on_outcome = on_outcome
        self.on_critical = on_critical

    def store(
        self, event: OutboxEvent, study_id: int, runs: Sequence[ModelRun], outcome: Outcome
    ) -> None:
        """Record ``runs`` for the study, mark ``event`` processed; add the rows to ``outcome``."""
        now = utcnow()
        critical_rows: list[InferenceResult] = []
        with self.db.write_session() as session:
            study = session.get(Study, study_id)
            assert study is not None  # noqa: S101 - read above; studies are never deleted
            for model, output, findings, stage_timings in runs:
                row = _result_row(session, study_id, model)
                timings = dict(stage_timings)
                timings["total_s"] = sum(v for k, v in timings.items() if k.endswith("_s"))
                timings["time_to_triage_s"] = (now - study.last_received_at).total_seconds()
                row.timings = timings
                row.created_at = now
                if isinstance(output, UnprocessableStudyError):
                    row.status = InferenceStatus.FAILED
                    row.score, row.critical, row.findings = None, False, findings
                    row.error = str(output)[:2000]
                else:
                    row.status = InferenceStatus.SUCCEEDED
                    row.score = output.score
                    row.critical = output.critical
                    row.findings = findings
                    row.error = None
                    if output.critical:
                        critical_rows.append(row)
                session.flush()
                outcome.results.append(
                    {
                        "model": model.name,
                        "version": model.version,
                        "status": row.status.value,
                        "score": row.score,
                        "critical": row.critical,
                        "error": row.error,
                        "timings": timings,
                    }
                )
            self._hooks(session, study, critical_rows)
            stored = session.get(OutboxEvent, event.id)
            if stored is not None:
                stored.processed_at = now
                stored.attempts += 1
                stored.last_error = None
            hospital_id = study.hospital_id
            patient_id = study.patient_id
        self._audit(event, outcome, hospital_id=hospital_id, patient_id=patient_id)
        logger.info("triaged %s: %s", event.key, _summary(outcome))

    def _hooks(self, session: Session, study: Study, critical_rows: list[InferenceResult]) -> None:
        succeeded = [
            r
            for r in session.scalars(
                select(InferenceResult).where(InferenceResult.study_id == study.id)
            )
            if r.status == InferenceStatus.SUCCEEDED
        ]
        latest = [r for r in succeeded if r.score is not None and _latest(r, succeeded)]
        # The most urgent model speaks for the study: highest score relative to its threshold.
        lead = max(latest, key=_urgency, default=None)
        if self.on_outcome is not None:
            self.on_outcome(
                session,
                study,
                score=lead.score if lead is not None else None,
                critical=any(r.critical for r in latest),
                failed=not succeeded,
                threshold=_threshold(lead) if lead is not None else None,
                calibrated=bool((lead.findings or {}).get("calibrated")) if lead else None,
            )
        if self.on_critical is not None:
            for row in critical_rows:
                self.on_critical(session, study, row)

    def _audit(
        self,
        event: OutboxEvent,
        outcome: Outcome,
        *,
        hospital_id: int | None,
        patient_id: str | None,
    ) -> None:
        for result in outcome.results:
            self.audit.record(
                AuditEventCode.APPLICATION_ACTIVITY,
                action=AuditAction.CREATE,
                user_name="triage",
                role="service",
                resource_type="study",
                resource_id=event.key,
                patient_id=patient_id,
                detail={
                    "what": "AI result (unverified)",
                    "hospital_id": hospital_id,
                    **{
                        k: result[k]
                        for k in ("model", "version", "status", "score", "critical", "error")
                    },
                },
            )


def _result_row(session: Session, study_id: int, model: ServedModel) -> InferenceResult:
    """The study's result row of ``model`` (a new pending one if it has none)."""
    row = session.scalars(
        select(InferenceResult).where(
            InferenceResult.study_id == study_id,
            InferenceResult.model_name == model.name,
            InferenceResult.model_version == model.version,
        )
    ).first()
    if row is None:
        row = InferenceResult(
            study_id=study_id,
            model_name=model.name,
            model_version=model.version,
            status=InferenceStatus.PENDING,
        )
        session.add(row)
    return row


def _summary(outcome: Outcome) -> str:
    return (
        ", ".join(
            f"{r['model']} v{r['version']} {r['status']}"
            + (
                f" score {r['score']:.3f}{' CRITICAL' if r['critical'] else ''}"
                if r["score"] is not None
                else ""
            )
            for r in outcome.results
        )
        or "nothing to do"
    )


def _threshold(row: InferenceResult) -> float | None:
    value = (row.findings or {}).get("threshold")
    return float(value) if value is not None else None


def _urgency(row: InferenceResult) -> float:
    threshold = _threshold(row)
    score = float(row.score or 0.0)
    return score / threshold if threshold else score


def _latest(row: InferenceResult, rows: list[InferenceResult]) -> bool:
    """Whether ``row`` is the newest version's result of its model among ``rows``."""

    def number(version: str) -> float:
        try:
            return float(version)
        except ValueError:
            return -math.inf

    same = [r for r in rows if r.model_name == row.model_name]
    return number(row.model_version) >= max(number(r.model_version) for r in same)
