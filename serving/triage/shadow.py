"""Running a model's shadow version on a live study, beside production, unseen.

After the production results of a study are stored (worklist, notifications and archive
written), :class:`ShadowRunner` sends the same pre-processed input to the model's shadow
version (``radcloud models shadow NAME VERSION``: :meth:`models.registry.ModelRegistry.shadow`),
interprets its logits as production's are, and records a ``shadow_results`` row: score,
positive call at the shadow card's threshold, mask summary (voxels, volume, Dice with
production's mask), the latency and worker CPU time of the step, and production's figures on the
same input. It writes nothing else: no result row, no worklist change, no notification, no SEG
or SR. A failing shadow never fails the study (a ``failed`` row, logged); under load it is shed
first: while more live study events than ``triage_shadow_max_backlog`` wait in the outbox, a
``shed`` row is recorded instead of a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sqlalchemy import func, select

from core.config import Settings
from core.db import Database
from core.db.models import OutboxEvent, ShadowResult, utcnow
from core.events import STUDY_READY, STUDY_UPDATED
from imaging.synthetic import dice
from models.registry import ModelRegistry, RegisteredModel
from serving.inference import ModelOutput, Prepared, interpret

__all__ = ["LiveRun", "ShadowRunner", "ShadowStatus"]

logger = logging.getLogger(__name__)

_LIVE_TOPICS = (STUDY_READY.value, STUDY_UPDATED.value)


class ShadowStatus(StrEnum):
    """The ``status`` of a shadow result."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SHED = "shed"


@dataclass
class LiveRun:
    """Production's run of one model on the study: its input and output, and the latency and
    worker CPU time of the model call with the interpretation."""

    name: str
    version: str
    prepared: Prepared
    output: ModelOutput
    latency_ms: float
    cpu_ms: float


class ShadowRunner:
    """Runs the shadow versions of a study's models (see the module docstring).

    Parameters
    ----------
    settings, db, registry
        The instance's settings (the shedding backlog), database and model registry.
    predict
        ``predict(name, version, input) -> (logits, version)``, as the pipeline's.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: ModelRegistry,
        predict: Callable[[str, str, np.ndarray], tuple[np.ndarray, str]],
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.predict = predict

    def run(self, study_id: int, live: Sequence[LiveRun]) -> int:
        """Run the shadow of each model of ``live`` that has one; return how many rows were
        recorded."""
        recorded = 0
        for run in live:
            shadow = self.registry.shadow(run.name)
            if shadow is None or str(shadow.version) == run.version:
                continue
            row = ShadowResult(
                study_id=study_id,
                model_name=run.name,
                model_version=str(shadow.version),
                production_version=run.version,
                production_score=run.output.score,
                production_positive=run.output.critical,
                production_latency_ms=run.latency_ms,
                production_cpu_ms=run.cpu_ms,
                findings={},
            )
            backlog = self._backlog()
            if backlog > self.settings.triage_shadow_max_backlog:
                row.status = ShadowStatus.SHED.value
                row.error = (
                    f"{backlog} live study events waiting "
                    f"(triage_shadow_max_backlog {self.settings.triage_shadow_max_backlog})"
                )
                logger.info("%s v%s shadow shed: %s", run.name, shadow.version, row.error)
            else:
                self._run_one(shadow, run, row)
            self._record(row)
            recorded += 1
        return recorded

    def _run_one(self, shadow: RegisteredModel, run: LiveRun, row: ShadowResult) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            logits, _ = self.predict(run.name, str(shadow.version), run.prepared.array)
            output = interpret(shadow.card, run.prepared, logits)
        except Exception as exc:  # noqa: BLE001 - a shadow never fails the study it runs on
            logger.warning("%s v%s shadow failed: %s", run.name, shadow.version, exc)
            row.status = ShadowStatus.FAILED.value
            row.error = f"{type(exc).__name__}: {exc}"[:2000]
            return
        row.latency_ms = (time.perf_counter() - started) * 1000.0
        row.cpu_ms = (time.thread_time() - cpu) * 1000.0
        row.status = ShadowStatus.SUCCEEDED.value
        row.score, row.positive = output.score, output.critical
        if output.mask is not None:
            row.findings = {
                "lesion_voxels": output.lesion_voxels,
                "lesion_volume_ml": output.lesion_volume_ml,
                "production_lesion_voxels": run.output.lesion_voxels,
            }
            if run.output.mask is not None:
                row.findings["mask_dice"] = dice(output.mask, run.output.mask)

    def _backlog(self) -> int:
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.topic.in_(_LIVE_TOPICS), OutboxEvent.processed_at.is_(None))
                )
                or 0
            )

    def _record(self, row: ShadowResult) -> None:
        """Insert ``row``, or replace the study's earlier row of that version (a reprocess)."""
        with self.db.write_session() as session:
            earlier = session.scalars(
                select(ShadowResult).where(
                    ShadowResult.study_id == row.study_id,
                    ShadowResult.model_name == row.model_name,
                    ShadowResult.model_version == row.model_version,
                )
            ).first()
            if earlier is not None:
                session.delete(earlier)
                session.flush()
            row.created_at = utcnow()
            session.add(row)
