"""The triage pipeline: a ready study → AI results in Orthanc, the database and the worklist.

:class:`TriagePipeline` consumes ``study.ready``, ``study.updated`` and ``study.reprocess``
events from the outbox at least once. For one event it:

1. claims it (``available_at`` moves past a lease, so a second worker leaves it alone);
2. puts the study on the worklist (AI pending) so it is visible before any result;
3. downloads the study's series from Orthanc and picks, for each production model, the series
   its card's ``series_selection`` accepts (modality, body part, 2D/3D, orientation, slices);
4. skips (model, version) pairs that already have a result, unless the event says ``force``
   (idempotent per study and model version);
5. pre-processes on this worker's CPU, sends the tensor to the model's Serve deployment
   (batched there), and interprets the logits: score, critical flag at the card's threshold,
   lesion mask and volume;
6. stores a DICOM SEG (when there is a lesion) and a TID 1500 SR in Orthanc as new series of
   the study, marked AI-generated and unverified;
7. in one transaction: the result row (scores, findings, model version, per-stage timings),
   the worklist priority, a critical-finding notification, and the event marked processed.

A study that cannot be processed gets a ``failed`` result with the reason (``unsupported``,
``inconsistent_series``, ``decode_failed``, ``no_model``) and is read without AI; it never
blocks other studies. Errors of the platform (Orthanc down, serving down) leave the event in
the outbox with a retry time instead, so nothing is lost while a part is away.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import random
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import or_, select

from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.config import Settings
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study, utcnow
from imaging.exceptions import ImagingError, InconsistentSeriesError
from imaging.seg import HEMORRHAGE, AlgorithmIdentity, write_segmentation
from imaging.sr import Finding, write_measurement_report
from imaging.volume import load_series
from models.card import ModelCard, SeriesSelection
from models.registry import ModelRegistry
from serving.inference import ModelOutput, interpret, prepare

__all__ = [
    "TOPICS",
    "FailureReason",
    "PlatformUnavailableError",
    "Predict",
    "TriagePipeline",
    "UnprocessableStudyError",
    "release_claims",
    "select_series",
]

logger = logging.getLogger(__name__)

TOPICS = ("study.ready", "study.updated", "study.reprocess")
_LEASE = dt.timedelta(minutes=5)
_AI_MODALITIES = {"SEG", "SR", "PR", "KO"}  # our own results and other non-image series

#: ``predict(model_name, input) -> (logits, model_version)``; raises PlatformUnavailableError when
#: serving cannot answer.
Predict = Callable[[str, np.ndarray], tuple[np.ndarray, str]]


class FailureReason:
    """Why a study could not be processed (the prefix of ``InferenceResult.error``)."""

    UNSUPPORTED = "unsupported"
    INCONSISTENT_SERIES = "inconsistent_series"
    DECODE_FAILED = "decode_failed"
    NO_MODEL = "no_model"
    INTERNAL = "internal"


class UnprocessableStudyError(Exception):
    """This study cannot be processed by this model: recorded, not retried."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PlatformUnavailableError(Exception):
    """A part radcloud depends on (Orthanc, a model deployment) did not answer: retry later."""


class OutcomeHook(Protocol):
    """Called with a study's combined AI outcome inside the result transaction."""

    def __call__(
        self,
        session: Any,
        study: Study,
        *,
        score: float | None,
        critical: bool,
        failed: bool,
        threshold: float | None,
    ) -> None: ...


@dataclass
class SeriesData:
    """One series of the study, downloaded from Orthanc."""

    uid: str
    modality: str
    datasets: list[Dataset]

    @property
    def first(self) -> Dataset:
        return self.datasets[0]


@dataclass
class Outcome:
    """What processing one event produced (for logs, tests and the demo)."""

    study_instance_uid: str
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _orientation(ds: Dataset) -> str:
    values = ds.get("ImageOrientationPatient")
    if not values or len(values) != 6:
        return "unknown"
    normal = np.cross(np.asarray(values[:3], float), np.asarray(values[3:], float))
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]


def _rejection(selection: SeriesSelection, series: SeriesData) -> str | None:  # noqa: PLR0911
    """Why ``selection`` does not take ``series`` (None: it does)."""
    first = series.first
    modality = _text(first, "Modality")
    if modality not in selection.modalities:
        return f"modality {modality or '?'} not in {selection.modalities}"
    body = _text(first, "BodyPartExamined")
    described = f"{_text(first, 'StudyDescription')} {_text(first, 'SeriesDescription')}"
    if body not in selection.body_parts and not any(p in described for p in selection.body_parts):
        return f"body part {body or '?'} not in {selection.body_parts}"
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in series.datasets)
    if selection.dimensionality == "3d":
        if frames < selection.min_slices:
            return f"{frames} slices: at least {selection.min_slices} needed"
        orientation = _orientation(first)
        if selection.orientation not in {"any", orientation}:
            return f"{orientation} slices: {selection.orientation} needed"
        thickness = first.get("SliceThickness")
        limit = selection.max_slice_thickness_mm
        if limit is not None and thickness is not None and float(thickness) > limit:
            return f"slice thickness {float(thickness):g} mm > {limit:g} mm"
    elif frames != 1:
        return f"{frames} images: a single radiograph needed"
    view = _text(first, "ViewPosition")
    if selection.view_positions and view and view not in selection.view_positions:
        return f"view {view} not in {selection.view_positions}"
    return None


def select_series(
    selection: SeriesSelection, series: Iterable[SeriesData]
) -> tuple[SeriesData | None, list[str]]:
    """The series a model takes (the one with most images when several qualify), and why each
    other series was passed over."""
    chosen: SeriesData | None = None
    reasons: list[str] = []
    for candidate in series:
        why = _rejection(selection, candidate)
        if why is not None:
            reasons.append(f"{candidate.uid}: {why}")
        elif chosen is None or len(candidate.datasets) > len(chosen.datasets):
            chosen = candidate
    return chosen, reasons


@dataclass
class _Model:
    name: str
    version: str
    card: ModelCard


# The "model" of a result row for a study that failed before any model ran (no card needed).
_NO_MODEL = _Model("(none)", "-", None)  # type: ignore[arg-type]


def release_claims(db: Database) -> int:
    """Make every pending study event due now; return how many were held.

    Serving calls this as it starts, before any triage worker runs: serving is the outbox's only
    consumer (one per database), so a lease still in the future belongs to a worker of a serving
    that has stopped (killed mid-event, or claiming while it shut down) and would otherwise keep
    its study from triage for up to 5 minutes. Events waiting out a retry back-off are retried
    at once too: whatever was down may be back.
    """
    with db.session() as session:
        released = (
            session.query(OutboxEvent)
            .filter(
                OutboxEvent.topic.in_(TOPICS),
                OutboxEvent.processed_at.is_(None),
                OutboxEvent.available_at > utcnow(),
            )
            .update({OutboxEvent.available_at: None}, synchronize_session=False)
        )
    if released:
        logger.info("%d study event(s) held by a stopped triage worker are due again", released)
    return int(released)


class TriagePipeline:
    """Processes study events; one instance per triage worker (thread-safe per call).

    Parameters
    ----------
    settings
        The instance's settings.
    db, audit
        The application database and audit trail.
    orthanc
        A pyorthanc client (``core.archive.orthanc_client``).
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
        orthanc: Any,
        *,
        registry: ModelRegistry,
        predict: Predict,
        served: set[str] | None = None,
        on_ready: Callable[[Any, Study], None] | None = None,
        on_outcome: OutcomeHook | None = None,
        on_critical: Callable[[Any, Study, InferenceResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.orthanc = orthanc
        self.registry = registry
        self.predict = predict
        self.served = served
        self.on_ready = on_ready
        self.on_outcome = on_outcome
        self.on_critical = on_critical

    # -- the outbox --------------------------------------------------------------------------

    def claim_next(self) -> OutboxEvent | None:
        """Take the oldest due study event (lease: ``available_at`` moves 5 minutes ahead)."""
        now = utcnow()
        with self.db.session() as session:
            event = session.scalars(
                select(OutboxEvent)
                .where(
                    OutboxEvent.topic.in_(TOPICS),
                    OutboxEvent.processed_at.is_(None),
                    or_(OutboxEvent.available_at.is_(None), OutboxEvent.available_at <= now),
                )
                .order_by(OutboxEvent.id)
                .limit(1)
            ).first()
            if event is None:
                return None
            claimed = (
                session.query(OutboxEvent)
                .filter(
                    OutboxEvent.id == event.id,
                    or_(OutboxEvent.available_at.is_(None), OutboxEvent.available_at <= now),
                )
                .update({OutboxEvent.available_at: now + _LEASE}, synchronize_session=False)
            )
            if claimed != 1:
                return None
            session.expunge(event)
            return event

    def run_once(self) -> Outcome | None:
        """Claim and process one event; None when none is due."""
        event = self.claim_next()
        if event is None:
            return None
        try:
            return self.process(event)
        except PlatformUnavailableError as exc:
            self._retry_later(event, str(exc))
        except Exception as exc:
            logger.exception("triage of %s failed", event.key)
            self._retry_later(event, f"{FailureReason.INTERNAL}: {type(exc).__name__}: {exc}")
        return None

    def _retry_later(self, event: OutboxEvent, error: str) -> None:
        with self.db.session() as session:
            row = session.get(OutboxEvent, event.id)
            if row is None or row.processed_at is not None:
                return
            row.attempts += 1
            backoff = min(300.0, 2.0 ** min(row.attempts, 8)) * random.uniform(0.8, 1.2)  # noqa: S311
            row.available_at = utcnow() + dt.timedelta(seconds=backoff)
            row.last_error = error[:2000]
        logger.warning("study event %s (%s) will be retried: %s", event.id, event.key, error)

    # -- one event ---------------------------------------------------------------------------

    def production_models(self) -> list[_Model]:
        """The models serving runs (production stage)."""
        found = []
        for name in self.registry.names():
            if self.served is not None and name not in self.served:
                continue
            model = self.registry.production(name)
            if model is not None:
                found.append(_Model(name, str(model.version), model.card))
        return found

    def process(self, event: OutboxEvent) -> Outcome:
        """Run every applicable production model on the event's study and store the results."""
        uid = str(event.payload.get("study_instance_uid") or event.key)
        force = bool(event.payload.get("force"))
        outcome = Outcome(uid)
        with self.db.session() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()
            if study is None:
                raise UnprocessableStudyError(
                    FailureReason.INTERNAL, f"study {uid} is not in the database"
                )
            study_id = study.id
            if self.on_ready is not None:
                self.on_ready(session, study)
            done = {
                (r.model_name, r.model_version)
                for r in session.scalars(
                    select(InferenceResult).where(
                        InferenceResult.study_id == study_id,
                        InferenceResult.status == InferenceStatus.SUCCEEDED,
                    )
                )
            }
        fetch_started = time.perf_counter()
        try:
            series = self._download(event.payload)
        except UnprocessableStudyError as failure:
            fetch = {"fetch_s": time.perf_counter() - fetch_started}
            self._store(event, study_id, [(_NO_MODEL, failure, {}, fetch)], outcome)
            return outcome
        fetch_s = time.perf_counter() - fetch_started
        models = self.production_models()
        results: list[
            tuple[_Model, ModelOutput | UnprocessableStudyError, dict[str, Any], dict[str, float]]
        ] = []
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
                output, version, findings = self._run(model, chosen, timings)
                results.append((_Model(model.name, version, model.card), output, findings, timings))
            except UnprocessableStudyError as failure:
                results.append((model, failure, {"series_instance_uid": chosen.uid}, timings))
        if not results and not outcome.skipped:
            detail = "; ".join(rejected) if rejected else "no series"
            reason = FailureReason.NO_MODEL if not models else FailureReason.UNSUPPORTED
            if not models:
                detail = "no model is in production"
            results.append(
                (_NO_MODEL, UnprocessableStudyError(reason, detail), {}, {"fetch_s": fetch_s})
            )
        self._store(event, study_id, results, outcome)
        return outcome

    def _download(self, payload: dict[str, Any]) -> list[SeriesData]:
        """The study's image series from Orthanc (our own SEG/SR series left out)."""
        orthanc_study = payload.get("orthanc_study_id")
        try:
            if payload.get("series"):
                ids = [
                    s["orthanc_series_id"] for s in payload["series"] if s.get("orthanc_series_id")
                ]
            else:
                ids = self._get_json(f"/studies/{orthanc_study}")["Series"]
            found = []
            for series_id in ids:
                info = self._get_json(f"/series/{series_id}")
                modality = str(info.get("MainDicomTags", {}).get("Modality", "")).upper()
                if modality in _AI_MODALITIES:
                    continue
                answer = self.orthanc.get(f"/series/{series_id}/archive", timeout=120)
                if answer.status_code == 404:
                    continue  # deleted meanwhile
                answer.raise_for_status()
                datasets = self._read_archive(answer.content)
                if datasets:
                    uid = str(datasets[0].get("SeriesInstanceUID", series_id))
                    found.append(SeriesData(uid, modality, datasets))
            return found
        except PlatformUnavailableError:
            raise
        except Exception as exc:
            if _is_http_error(exc):
                raise PlatformUnavailableError(f"Orthanc: {exc}") from exc
            raise

    def _get_json(self, path: str) -> Any:
        answer = self.orthanc.get(path, timeout=30)
        if answer.status_code == 404:
            raise UnprocessableStudyError(FailureReason.INTERNAL, f"Orthanc has no {path}")
        answer.raise_for_status()
        return answer.json()

    @staticmethod
    def _read_archive(content: bytes) -> list[Dataset]:
        datasets: list[Dataset] = []
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            for name in archive.namelist():
                if name.endswith("/"):
                    continue
                try:
                    datasets.append(pydicom.dcmread(DicomBytesIO(archive.read(name))))
                except Exception as exc:
                    raise UnprocessableStudyError(
                        FailureReason.DECODE_FAILED, f"{name} is not readable DICOM: {exc}"
                    ) from exc
        return datasets

    def _run(
        self, model: _Model, series: SeriesData, timings: dict[str, float]
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
        started = time.perf_counter()
        logits, version = self.predict(model.name, prepared.array)
        timings["inference_s"] = time.perf_counter() - started
        card = (
            model.card if version == model.version else self.registry.get(model.name, version).card
        )
        started = time.perf_counter()
        output = interpret(card, prepared, logits)
        timings["postprocess_s"] = time.perf_counter() - started
        started = time.perf_counter()
        findings = self._write_back(model.name, version, card, series, output)
        timings["writeback_s"] = time.perf_counter() - started
        return output, version, findings

    def _write_back(
        self, name: str, version: str, card: ModelCard, series: SeriesData, output: ModelOutput
    ) -> dict[str, Any]:
        """Store a SEG (when a lesion was found) and an SR in Orthanc; return their UIDs."""
        algorithm = AlgorithmIdentity(
            name=name, version=version, parameters={"threshold": f"{output.threshold:.4f}"}
        )
        findings: dict[str, Any] = {
            "series_instance_uid": series.uid,
            "threshold": output.threshold,
        }
        segmentation = None
        report: list[Finding] = []
        if output.mask is not None and output.lesion_voxels > 0:
            segmentation = write_segmentation(series.datasets, output.mask, [HEMORRHAGE], algorithm)
            findings["seg_sop_instance_uid"] = str(segmentation.SOPInstanceUID)
            findings["seg_series_instance_uid"] = str(segmentation.SeriesInstanceUID)
            findings["lesion_volume_ml"] = output.lesion_volume_ml
            slices = np.flatnonzero(output.mask.reshape(output.mask.shape[0], -1).any(axis=1))
            findings["lesion_slices"] = [int(s) for s in slices]
            report.append(
                Finding(
                    label=HEMORRHAGE.label,
                    segment_number=1,
                    score=output.score,
                    critical=output.critical,
                    volume_mm3=(output.lesion_volume_ml or 0.0) * 1000.0,
                )
            )
        elif output.critical:
            report.append(
                Finding(
                    label=card.outputs.channel_def.get(0, "finding"),
                    score=output.score,
                    critical=True,
                )
            )
        sr = write_measurement_report(
            series.datasets, segmentation, report, algorithm, study_level_score=output.score
        )
        findings["sr_sop_instance_uid"] = str(sr.SOPInstanceUID)
        for dataset in (segmentation, sr):
            if dataset is not None:
                self._store_instance(dataset)
        return findings

    def _store_instance(self, dataset: Dataset) -> None:
        buffer = DicomBytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        try:
            answer = self.orthanc.post("/instances", content=buffer.getvalue(), timeout=60)
            answer.raise_for_status()
        except Exception as exc:
            if _is_http_error(exc):
                raise PlatformUnavailableError(f"Orthanc refused the AI result: {exc}") from exc
            raise

    def _store(
        self,
        event: OutboxEvent,
        study_id: int,
        results: list[
            tuple[_Model, ModelOutput | UnprocessableStudyError, dict[str, Any], dict[str, float]]
        ],
        outcome: Outcome,
    ) -> None:
        now = utcnow()
        critical_rows: list[InferenceResult] = []
        with self.db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None  # noqa: S101 - read above; studies are never deleted
            for model, output, findings, stage_timings in results:
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
            succeeded = [
                r
                for r in session.scalars(
                    select(InferenceResult).where(InferenceResult.study_id == study_id)
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
                )
            if self.on_critical is not None:
                for row in critical_rows:
                    self.on_critical(session, study, row)
            stored = session.get(OutboxEvent, event.id)
            if stored is not None:
                stored.processed_at = now
                stored.attempts += 1
                stored.last_error = None
            hospital_id = study.hospital_id
            patient_id = study.patient_id
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
        logger.info(
            "triaged %s: %s",
            event.key,
            ", ".join(
                f"{r['model']} v{r['version']} {r['status']}"
                + (
                    f" score {r['score']:.3f}{' CRITICAL' if r['critical'] else ''}"
                    if r["score"] is not None
                    else ""
                )
                for r in outcome.results
            )
            or "nothing to do",
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


def _is_http_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPError | ConnectionError | TimeoutError)
