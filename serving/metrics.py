"""Prometheus metrics of serving, read from the application database at scrape time.

:func:`render_metrics` builds a fresh registry per scrape with two collectors, so any API or
serving process can answer ``GET /metrics`` with the same figures (nothing is counted in process
memory, nothing is lost on restart):

- from the database: outbox queue depth by topic (unprocessed, waiting for a retry, age of the
  oldest), inference results by model and status, failures by reason (the ``"<reason>: ..."``
  prefix of ``InferenceResult.error``), notifications sent / given up / pending, and two
  histograms over the results of the last ``window_hours`` (at most ``max_rows`` rows, newest
  first): time to triage and per-stage latency, from ``InferenceResult.timings``. These
  histograms describe a sliding window, not a running count: query them with
  ``histogram_quantile(0.95, radcloud_time_to_triage_seconds_bucket)``, not ``rate()``.
- from the model servers (passed in by the caller): requests, batches and inference seconds per
  model, the batch-size histogram, and an info metric with version, backend and device.

The figures hold no patient data: models, stages, topics and counts only.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, ShadowResult, utcnow
from serving.notify import GAVE_UP, TOPIC_CRITICAL

__all__ = [
    "FAILURE_REASONS",
    "STAGES",
    "render_metrics",
]

logger = logging.getLogger(__name__)

STAGES = ("fetch", "preprocess", "inference", "postprocess", "writeback", "total")
"""Stages timed by the triage pipeline: ``timings["<stage>_s"]`` in seconds."""
FAILURE_REASONS = ("unsupported", "inconsistent_series", "decode_failed", "no_model", "internal")
"""Reasons the pipeline writes as ``"<reason>: <detail>"``; anything else counts as ``other``."""

DEFAULT_WINDOW_HOURS = 24.0
DEFAULT_MAX_ROWS = 10_000
TIME_TO_TRIAGE_BUCKETS = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


class _Histogram:
    """Observations bucketed as Prometheus wants them (cumulative, with ``+Inf``)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), -1)
        self.counts[index] += count
        self.total += value * count

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, result = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            result.append(("+Inf" if math.isinf(bound) else repr(bound), float(cumulative)))
        return result


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds, else None (odd values are skipped)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _failure_reason() -> Any:
    error = InferenceResult.error
    whens = [(error.like(f"{reason}:%") | (error == reason), reason) for reason in FAILURE_REASONS]
    return case(*whens, else_="other")


class _DatabaseCollector(Collector):
    """Queue depth, results, failures, notifications and latencies from the database."""

    def __init__(self, db: Database, window_hours: float, max_rows: int) -> None:
        self._db = db
        self._window = dt.timedelta(hours=window_hours)
        self._max_rows = max_rows

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "radcloud_metrics_database_up", "1 when the application database could be read"
        )
        try:
            families = list(self._families())
        except SQLAlchemyError:
            logger.exception("metrics: reading the application database failed")
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _families(self) -> Iterator[Metric]:
        now = utcnow()
        with self._db.session() as session:
            outbox = session.execute(
                select(
                    OutboxEvent.topic,
                    func.count(),
                    func.sum(case((OutboxEvent.attempts > 0, 1), else_=0)),
                    func.min(OutboxEvent.created_at),
                )
                .where(OutboxEvent.processed_at.is_(None))
                .group_by(OutboxEvent.topic)
            ).all()
            outcome = case((OutboxEvent.last_error.like(f"{GAVE_UP}%"), "failed"), else_="sent")
            notifications = session.execute(
                select(outcome, func.count())
                .where(OutboxEvent.topic == TOPIC_CRITICAL, OutboxEvent.processed_at.is_not(None))
                .group_by(outcome)
            ).all()
            by_status = session.execute(
                select(InferenceResult.model_name, InferenceResult.status, func.count()).group_by(
                    InferenceResult.model_name, InferenceResult.status
                )
            ).all()
            reason = _failure_reason()
            failures = session.execute(
                select(InferenceResult.model_name, reason, func.count())
                .where(InferenceResult.status == InferenceStatus.FAILED)
                .group_by(InferenceResult.model_name, reason)
            ).all()
            shadows = session.execute(
                select(
                    ShadowResult.model_name,
                    ShadowResult.model_version,
                    ShadowResult.status,
                    func.count(),
                ).group_by(ShadowResult.model_name, ShadowResult.model_version, ShadowResult.status)
            ).all()
            recent = session.execute(
                select(InferenceResult.model_name, InferenceResult.timings)
                .where(
                    and_(
                        InferenceResult.status == InferenceStatus.SUCCEEDED,
                        InferenceResult.created_at >= now - self._window,
                    )
                )
                .order_by(InferenceResult.created_at.desc())
                .limit(self._max_rows)
            ).all()

        pending = GaugeMetricFamily(
            "radcloud_outbox_pending", "Outbox events not yet processed", labels=["topic"]
        )
        retrying = GaugeMetricFamily(
            "radcloud_outbox_retrying",
            "Outbox events not yet processed that failed at least once (waiting for a retry)",
            labels=["topic"],
        )
        oldest = GaugeMetricFamily(
            "radcloud_outbox_oldest_pending_age_seconds",
            "Age of the oldest unprocessed outbox event",
            labels=["topic"],
        )
        for topic, count, with_attempts, first in outbox:
            pending.add_metric([topic], count)
            retrying.add_metric([topic], with_attempts)
            oldest.add_metric([topic], max(0.0, (now - first).total_seconds()) if first else 0.0)
        yield from (pending, retrying, oldest)

        sent = GaugeMetricFamily(
            "radcloud_notifications",
            "Critical-finding notifications by state (sent, failed: given up, pending)",
            labels=["state"],
        )
        states = {"sent": 0, "failed": 0, "pending": 0} | {str(s): int(n) for s, n in notifications}
        states["pending"] = next((n for topic, n, *_ in outbox if topic == TOPIC_CRITICAL), 0)
        for state, count in sorted(states.items()):
            sent.add_metric([state], count)
        yield sent

        results = GaugeMetricFamily(
            "radcloud_inference_results",
            "Inference result rows by model and status",
            labels=["model", "status"],
        )
        for model, status, count in by_status:
            results.add_metric([model, str(status)], count)
        yield results

        failed = GaugeMetricFamily(
            "radcloud_inference_failures",
            "Failed inference results by model and reason",
            labels=["model", "reason"],
        )
        for model, why, count in failures:
            failed.add_metric([model, why], count)
        yield failed

        shadow = GaugeMetricFamily(
            "radcloud_shadow_results",
            "Shadow versions' runs beside production by model, version and status (succeeded, "
            "failed: the study was not affected, shed: not run under load)",
            labels=["model", "version", "status"],
        )
        for model, version, outcome_of_run, count in shadows:
            shadow.add_metric([model, version, outcome_of_run], count)
        yield shadow

        yield from self._latencies(recent)

    def _latencies(self, rows: Sequence[Any]) -> Iterator[Metric]:
        triage: dict[str, _Histogram] = defaultdict(lambda: _Histogram(TIME_TO_TRIAGE_BUCKETS))
        stages: dict[tuple[str, str], _Histogram] = defaultdict(lambda: _Histogram(STAGE_BUCKETS))
        for model, timings in rows:
            if not isinstance(timings, Mapping):
                continue
            value = _seconds(timings.get("time_to_triage_s"))
            if value is not None:
                triage[model].observe(value)
            for stage in STAGES:
                value = _seconds(timings.get(f"{stage}_s"))
                if value is not None:
                    stages[(model, stage)].observe(value)
        window = f"{self._window.total_seconds() / 3600:g} h"
        family = HistogramMetricFamily(
            "radcloud_time_to_triage_seconds",
            f"Last instance received to result stored, succeeded results of the last {window}",
            labels=["model"],
        )
        for model, histogram in sorted(triage.items()):
            family.add_metric([model], histogram.buckets(), histogram.total)
        yield family
        family = HistogramMetricFamily(
            "radcloud_triage_stage_seconds",
            f"Triage pipeline time per stage, succeeded results of the last {window}",
            labels=["model", "stage"],
        )
        for (model, stage), histogram in sorted(stages.items()):
            family.add_metric([model, stage], histogram.buckets(), histogram.total)
        yield family


class _ModelStatsCollector(Collector):
    """Per-model serving statistics handed over by the caller."""

    def __init__(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "radcloud_model_info",
            "Models being served: version, backend and device (value 1)",
            labels=["model", "version", "backend", "device"],
        )
        requests = CounterMetricFamily(
            "radcloud_model_requests", "Inference requests served", labels=["model", "version"]
        )
        batches = CounterMetricFamily(
            "radcloud_model_batches", "Batches run by the model", labels=["model", "version"]
        )
        seconds = CounterMetricFamily(
            "radcloud_model_inference_seconds",
            "Time spent running batches",
            labels=["model", "version"],
        )
        sizes = HistogramMetricFamily(
            "radcloud_model_batch_size", "Requests per batch", labels=["model", "version"]
        )
        for model, stats in sorted(self._stats.items()):
            version = str(stats.get("version", ""))
            labels = [model, version]
            info.add_metric(
                [model, version, str(stats.get("backend", "")), str(stats.get("device", ""))], 1
            )
            requests.add_metric(labels, float(stats.get("requests", 0)))
            batches.add_metric(labels, float(stats.get("batches", 0)))
            seconds.add_metric(labels, float(stats.get("inference_seconds_sum", 0.0)))
            histogram = _Histogram(BATCH_SIZE_BUCKETS)
            for size, count in dict(stats.get("batch_size_counts") or {}).items():
                histogram.observe(float(size), int(count))
            sizes.add_metric(labels, histogram.buckets(), histogram.total)
        return [info, requests, batches, seconds, sizes]


def render_metrics(
    db: Database,
    model_stats: Mapping[str, Mapping[str, Any]],
    *,
    window_hours: float = DEFAULT_WINDOW_HOURS,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[bytes, str]:
    """Serving's metrics in the Prometheus text format.

    Parameters
    ----------
    db
        The application database, read now.
    model_stats
        Per model name: ``{"version": str, "backend": str, "device": str, "requests": int,
        "batches": int, "batch_size_counts": {size: count}, "inference_seconds_sum": float}``.
    window_hours, max_rows
        The latency histograms cover succeeded results of the last ``window_hours``, at most
        the newest ``max_rows`` of them.

    Returns
    -------
    tuple of (bytes, str)
        The exposition body and its content type.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(db, window_hours, max_rows))
    registry.register(_ModelStatsCollector(model_stats))
    return generate_latest(registry), CONTENT_TYPE_LATEST
