"""The triage pipeline: a ready study → AI results in the archive, the database and the worklist.

:class:`TriagePipeline` consumes ``study.ready``, ``study.updated`` and ``study.reprocess``
events from the outbox at least once. For one event it:

1. claims it (:mod:`serving.triage.outbox`: ``available_at`` moves past a lease, so a second
   worker leaves it alone);
2. puts the study on the worklist (AI pending) so it is visible before any result;
3. downloads the study's series from the image archive (:mod:`serving.triage.fetch`) and
   picks, for each production model, the series its card's ``series_selection`` accepts
   (:mod:`serving.triage.selection`: modality, body part, 2D/3D, orientation, slices);
4. skips (model, version) pairs that already have a result, unless the event says ``force``
   (idempotent per study and model version); the production versions read here are the ones
   the study runs on to its end, whatever is promoted meanwhile (``predict`` asks the model's
   deployment for that version);
5. pre-processes on this worker's CPU, sends the tensor to the model's Serve deployment
   (batched there), and interprets the logits: score, critical flag at the card's threshold,
   lesion mask and volume;
6. stores a DICOM SEG (when there is a lesion) and a TID 1500 SR in the archive as new series of
   the study, marked AI-generated and unverified (:mod:`serving.triage.writeback`);
7. in one transaction (:mod:`serving.triage.persist`): the result row (scores, findings, model
   version, per-stage timings), the worklist priority, a critical-finding notification, and
   the event marked processed;
8. for a model with a shadow version, runs it on the same input and records only a
   ``shadow_results`` row (:mod:`serving.triage.shadow`): nothing a reader or the archive sees.

A study that cannot be processed gets a ``failed`` result with the reason (``unsupported``,
``inconsistent_series``, ``decode_failed``, ``no_model``) and is read without AI; it never
blocks other studies. Errors of the platform (the archive down, serving down) leave the event in
the outbox with a retry time instead, so nothing is lost while a part is away.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.archive import ImageArchive
from core.audit import AuditTrail
from core.config import Settings
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study
from imaging.exceptions import ImagingError, InconsistentSeriesError
from imaging.volume import load_series
from models.registry import ModelRegistry
from serving.exceptions import FailureReason, PlatformUnavailableError, UnprocessableStudyError
from serving.inference import ModelOutput, interpret, prepare
from serving.triage.fetch import fetch_series
from serving.triage.outbox import claim_next, retry_later
from serving.triage.persist import (
    NO_MODEL,
    CriticalHook,
    ModelRun,
    Outcome,
    OutcomeHook,
    ResultStore,
    ServedModel,
)
from serving.triage.selection import SeriesData, select_series
from serving.triage.shadow import LiveRun, ShadowRunner
from serving.triage.writeback import write_back

__all__ = ["Predict", "TriagePipeline"]

logger = logging.getLogger(__name__)

#: ``predict(model_name, model_version, input) -> (logits, model_version)``: the version asked
#: for is the production version when the study's processing started (studies in flight finish
#: on it through a promotion); raises PlatformUnavailableError when serving cannot answer.
Predict = Callable[[str, str, np.ndarray], tuple[np.ndarray, str]]


class TriagePipeline:
    """Processes study events; one instance per triage worker (thread-safe per call).

    Parameters
    ----------
    settings
        The instance's settings.
    db, audit
        The application database and audit trail.
    archive
        The image archive (``core.archive.open_archive``).
    registry
        The model registry (production versions are served).
    predict
        Sends one pre-processed input to a model deployment.
    served
        The models that have a deployment (None: every production model).
    on_critical, on_outcome
        Hooks called inside the result transaction: ``on_critical(session, study, result)``
        (notifications) and ``on_outcome(session, study, score, critical, failed, threshold)``
        (worklist: the most urgent model's score and operating threshold).
    on_ready
        ``on_ready(session, study)``: the study is on the worklist before AI results.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditTrail,
        archive: ImageArchive,
        *,
        registry: ModelRegistry,
        predict: Predict,
        served: set[str] | None = None,
        on_ready: Callable[[Session, Study], None] | None = None,
        on_outcome: OutcomeHook | None = None,
        on_critical: CriticalHook | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.archive = archive
        self.registry = registry
        self.predict = predict
        self.served = served
        self.on_ready = on_ready
        self.results = ResultStore(db, audit, on_outcome=on_outcome, on_critical=on_critical)
        self.shadows = ShadowRunner(settings, db, registry, predict)

    # -- the outbox --------------------------------------------------------------------------

    def claim_next(self) -> OutboxEvent | None:
        """Take the oldest due study event (see :func:`serving.triage.outbox.claim_next`)."""
        return claim_next(self.db, dt.timedelta(seconds=self.settings.triage_lease_s))

    def run_once(self) -> Outcome | None:
        """Claim and process one event; None when none is due."""
        event = self.claim_next()
        if event is None:
            return None
        try:
            return self.process(event)
        except PlatformUnavailableError as exc:
            retry_later(self.db, event, str(exc))
        except Exception as exc:
            logger.exception("triage of %s failed", event.key)
            retry_later(self.db, event, f"{FailureReason.INTERNAL}: {type(exc).__name__}: {exc}")
        return None

    # -- one event ---------------------------------------------------------------------------

    def production_models(self) -> list[ServedModel]:
        """The models serving runs (production stage)."""
        found = []
        for name in self.registry.names():
            if self.served is not None and name not in self.served:
                continue
            model = self.registry.production(name)
            if model is not None:
                found.append(ServedModel(name, str(model.version), model.card))
        return found

    def process(self, event: OutboxEvent) -> Outcome:
        """Run every applicable production model on the event's study and store the results."""
        uid = str(event.payload.get("study_instance_uid") or event.key)
        force = bool(event.payload.get("force"))
        outcome = Outcome(uid)
        study_id, done = self._prepare(uid)
        fetch_started = time.perf_counter()
        try:
            series = fetch_series(self.archive, event.payload)
        except UnprocessableStudyError as failure:
            fetch = {"fetch_s": time.perf_counter() - fetch_started}
            self.results.store(event, study_id, [(NO_MODEL, failure, {}, fetch)], outcome)
            return outcome
        fetch_s = time.perf_counter() - fetch_started
        models = self.production_models()
        runs: list[ModelRun] = []
        live: list[LiveRun] = []
        rejected: list[str] = []
        for model in models:
            if (model.name, model.version) in done and not force:
                outcome.skipped.append(f"{model.name} v{model.version}: already processed")
                continue
            chosen, reasons = select_series(model.card.series_selection, series)
            if chosen is None:
                rejected.extend(f"{model.name}: {r}" for r in reasons)
                continue
            timings = {"fetch_s": fetch_s}
            try:
                output, version, findings = self._run(model, chosen, timings, live)
                runs.append(
                    (ServedModel(model.name, version, model.card), output, findings, timings)
                )
            except UnprocessableStudyError as failure:
                runs.append((model, failure, {"series_instance_uid": chosen.uid}, timings))
        if not runs and not outcome.skipped:
            detail = "; ".join(rejected) if rejected else "no series"
            reason = FailureReason.NO_MODEL if not models else FailureReason.UNSUPPORTED
            if not models:
                detail = "no model is in production"
            runs.append(
                (NO_MODEL, UnprocessableStudyError(reason, detail), {}, {"fetch_s": fetch_s})
            )
        self.results.store(event, study_id, runs, outcome)
        if live:
            try:
                self.shadows.run(study_id, live)
            except Exception:  # the study is triaged: a shadow never fails nor retries it
                logger.exception("shadow runs on %s failed", uid)
        return outcome

    def _prepare(self, uid: str) -> tuple[int, set[tuple[str, str]]]:
        """Put the study on the worklist; return its id and the (model, version) pairs done."""
        with self.db.write_session() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()
            if study is None:
                raise UnprocessableStudyError(
                    FailureReason.INTERNAL, f"study {uid} is not in the database"
                )
            if self.on_ready is not None:
                self.on_ready(session, study)
            done = {
                (r.model_name, r.model_version)
                for r in session.scalars(
                    select(InferenceResult).where(
                        InferenceResult.study_id == study.id,
                        InferenceResult.status == InferenceStatus.SUCCEEDED,
                    )
                )
            }
            return study.id, done

    def _run(
        self,
        model: ServedModel,
        series: SeriesData,
        timings: dict[str, float],
        live: list[LiveRun],
    ) -> tuple[ModelOutput, str, dict[str, Any]]:
        started = time.perf_counter()
        try:
            volume = load_series(series.datasets)
        except InconsistentSeriesError as exc:
            raise UnprocessableStudyError(FailureReason.INCONSISTENT_SERIES, str(exc)) from exc
        except ImagingError as exc:
            raise UnprocessableStudyError(FailureReason.DECODE_FAILED, str(exc)) from exc
        except Exception as exc:  # pixel decoders raise their own types
            raise UnprocessableStudyError(
                FailureReason.DECODE_FAILED, f"{type(exc).__name__}: {exc}"
            ) from exc
        prepared = prepare(model.card, volume)
        timings["preprocess_s"] = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.thread_time()
        logits, version = self.predict(model.name, model.version, prepared.array)
        timings["inference_s"] = time.perf_counter() - started
        card = (
            model.card if version == model.version else self.registry.get(model.name, version).card
        )
        started = time.perf_counter()
        output = interpret(card, prepared, logits)
        timings["postprocess_s"] = time.perf_counter() - started
        latency_ms = (timings["inference_s"] + timings["postprocess_s"]) * 1000.0
        cpu_ms = (time.thread_time() - cpu) * 1000.0
        started = time.perf_counter()
        findings = write_back(
            self.archive, series, output, name=model.name, version=version, card=card
        )
        timings["writeback_s"] = time.perf_counter() - started
        live.append(LiveRun(model.name, version, prepared, output, latency_ms, cpu_ms))
        return output, version, findings
