"""Serving's Prometheus metrics: figures read from a populated database, parsed as a scraper would.

The ``/metrics`` route is checked in process (model statistics from ``app.state``) and on the real
API started by ``radcloud up`` (credentials and roles).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import load_settings
from core.db import Database, upgrade, write_transaction
from core.db.models import (
    InferenceResult,
    InferenceStatus,
    OutboxEvent,
    Role,
    ShadowResult,
    Study,
    StudyState,
    utcnow,
)
from core.security import Actor
from serving.api.app import create_app
from serving.metrics import render_metrics
from tests.conftest import Stack
from tests.helpers import served

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MODEL_STATS: dict[str, dict[str, Any]] = {
    "chest-xr-densenet": {
        "version": "7",
        "backend": "onnxruntime",
        "device": "cpu",
        "requests": 25,
        "batches": 10,
        "batch_size_counts": {1: 3, "8": 5, 4: 2},  # keys as ints or as JSON strings
        "inference_seconds_sum": 1.5,
    }
}


def _samples(body: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _timings(total: float, triage: float) -> dict[str, float]:
    return {
        "fetch_s": 0.2,
        "preprocess_s": 0.03,
        "inference_s": 0.4,
        "postprocess_s": 0.05,
        "writeback_s": 1.2,
        "total_s": total,
        "time_to_triage_s": triage,
    }


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()


def _populate(db: Database) -> None:
    now = utcnow()
    results: list[tuple[InferenceStatus, str | None, dict[str, Any], dt.datetime]] = [
        (InferenceStatus.SUCCEEDED, None, _timings(1.9, 12.0), now - dt.timedelta(minutes=5)),
        (InferenceStatus.SUCCEEDED, None, _timings(3.0, 45.0), now - dt.timedelta(minutes=1)),
        (InferenceStatus.SUCCEEDED, None, _timings(2.0, 7000.0), now - dt.timedelta(hours=30)),
        (InferenceStatus.SUCCEEDED, None, {"total_s": "n/a", "time_to_triage_s": -1}, now),
        (InferenceStatus.FAILED, "decode_failed: JPEG 2000 stream truncated", {}, now),
        (InferenceStatus.FAILED, "decode_failed: bad frame", {}, now),
        (InferenceStatus.FAILED, "unsupported: modality MR", {}, now),
        (InferenceStatus.FAILED, "something unexpected", {}, now),
        (InferenceStatus.PENDING, None, {}, now),
    ]
    with write_transaction(db, 1) as session:
        for status, error, timings, created in results:
            study = Study(study_instance_uid=f"2.25.{uuid.uuid4().int}", state=StudyState.READY)
            session.add(study)
            session.flush()
            session.add(
                InferenceResult(
                    study_id=study.id,
                    model_name="head-ct-haemorrhage",
                    model_version="3",
                    status=status,
                    error=error,
                    timings=timings,
                    created_at=created,
                )
            )
            session.add(  # a shadow of version 4 ran, failed or was shed beside it
                ShadowResult(
                    study_id=study.id,
                    model_name="head-ct-haemorrhage",
                    model_version="4",
                    production_version="3",
                    status=("succeeded", "failed", "shed")[study.id % 3],
                    findings={},
                )
            )
        session.add_all(
            [
                OutboxEvent(topic="study.ready", key="a", payload={}, attempts=0),
                OutboxEvent(
                    topic="study.ready",
                    key="b",
                    payload={},
                    attempts=2,
                    available_at=now + dt.timedelta(seconds=30),
                    created_at=now - dt.timedelta(minutes=10),
                ),
                OutboxEvent(topic="study.ready", key="c", payload={}, processed_at=now),
                OutboxEvent(topic="notification.critical", key="d", payload={}, attempts=1),
                OutboxEvent(topic="notification.critical", key="e", payload={}, processed_at=now),
                OutboxEvent(
                    topic="notification.critical",
                    key="f",
                    payload={},
                    processed_at=now,
                    attempts=3,
                    last_error="gave up after 3 attempts; last error: HTTP 500",
                ),
            ]
        )


def test_queue_results_failures_and_notifications(db: Database) -> None:
    _populate(db)
    body, content_type = render_metrics(db, {})
    assert content_type.startswith("text/plain")
    samples = _samples(body)

    assert _get(samples, "radcloud_metrics_database_up") == 1
    assert _get(samples, "radcloud_outbox_pending", topic="study.ready") == 2
    assert _get(samples, "radcloud_outbox_retrying", topic="study.ready") == 1
    assert _get(samples, "radcloud_outbox_pending", topic="notification.critical") == 1
    assert _get(samples, "radcloud_outbox_oldest_pending_age_seconds", topic="study.ready") >= 600
    for state, count in (("sent", 1), ("failed", 1), ("pending", 1)):
        assert _get(samples, "radcloud_notifications", state=state) == count

    model = "head-ct-haemorrhage"
    assert _get(samples, "radcloud_inference_results", model=model, status="succeeded") == 4
    assert _get(samples, "radcloud_inference_results", model=model, status="failed") == 4
    assert _get(samples, "radcloud_inference_results", model=model, status="pending") == 1
    assert _get(samples, "radcloud_inference_failures", model=model, reason="decode_failed") == 2
    assert _get(samples, "radcloud_inference_failures", model=model, reason="unsupported") == 1
    assert _get(samples, "radcloud_inference_failures", model=model, reason="other") == 1
    shadowed = [
        _get(samples, "radcloud_shadow_results", model=model, version="4", status=status)
        for status in ("succeeded", "failed", "shed")
    ]
    assert sum(shadowed) == 9 and min(shadowed) == 3


def test_latency_histograms_cover_the_recent_window(db: Database) -> None:
    _populate(db)
    samples = _samples(render_metrics(db, {})[0])
    model = "head-ct-haemorrhage"

    # the 30-hour-old result and the row with unusable timings are left out
    assert _get(samples, "radcloud_time_to_triage_seconds_count", model=model) == 2
    assert _get(samples, "radcloud_time_to_triage_seconds_sum", model=model) == 57.0
    assert _get(samples, "radcloud_time_to_triage_seconds_bucket", model=model, le="10.0") == 0
    assert _get(samples, "radcloud_time_to_triage_seconds_bucket", model=model, le="20.0") == 1
    assert _get(samples, "radcloud_time_to_triage_seconds_bucket", model=model, le="60.0") == 2
    assert _get(samples, "radcloud_time_to_triage_seconds_bucket", model=model, le="+Inf") == 2

    stage = "radcloud_triage_stage_seconds"
    for name in ("fetch", "preprocess", "inference", "postprocess", "writeback", "total"):
        assert _get(samples, f"{stage}_count", model=model, stage=name) == 2
    assert _get(samples, f"{stage}_sum", model=model, stage="total") == pytest.approx(4.9)
    assert _get(samples, f"{stage}_bucket", model=model, stage="writeback", le="1.0") == 0
    assert _get(samples, f"{stage}_bucket", model=model, stage="writeback", le="2.5") == 2

    newest_only = _samples(render_metrics(db, {}, max_rows=2)[0])  # 45 s and "n/a"
    assert _get(newest_only, "radcloud_time_to_triage_seconds_sum", model=model) == 45.0
    wider = _samples(render_metrics(db, {}, window_hours=48)[0])
    assert _get(wider, "radcloud_time_to_triage_seconds_count", model=model) == 3


def test_model_server_statistics(db: Database) -> None:
    samples = _samples(render_metrics(db, MODEL_STATS)[0])
    labels = {"model": "chest-xr-densenet", "version": "7"}
    info = labels | {"backend": "onnxruntime", "device": "cpu"}
    assert _get(samples, "radcloud_model_info", **info) == 1
    assert _get(samples, "radcloud_model_requests_total", **labels) == 25
    assert _get(samples, "radcloud_model_batches_total", **labels) == 10
    assert _get(samples, "radcloud_model_inference_seconds_total", **labels) == 1.5
    assert _get(samples, "radcloud_model_batch_size_count", **labels) == 10
    assert _get(samples, "radcloud_model_batch_size_sum", **labels) == 3 + 40 + 8
    assert _get(samples, "radcloud_model_batch_size_bucket", **labels, le="2.0") == 3
    assert _get(samples, "radcloud_model_batch_size_bucket", **labels, le="4.0") == 5
    assert _get(samples, "radcloud_model_batch_size_bucket", **labels, le="8.0") == 10


def test_unreadable_database_is_reported_not_raised(tmp_path: Path) -> None:
    empty = Database(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    samples = _samples(render_metrics(empty, MODEL_STATS)[0])
    empty.dispose()
    assert _get(samples, "radcloud_metrics_database_up") == 0
    assert (
        _get(samples, "radcloud_model_requests_total", model="chest-xr-densenet", version="7") == 25
    )


def test_route_takes_model_statistics_from_the_app(tmp_path: Path) -> None:
    app = create_app(load_settings(home=tmp_path, mode="dev"))

    async def model_stats() -> Mapping[str, Mapping[str, Any]]:
        return MODEL_STATS

    with served(app) as url:
        app.state.model_stats = model_stats  # as the serving layer sets it
        accounts = app.state.ctx.accounts
        key = accounts.create_api_key("prometheus", Role.ADMIN, actor=Actor.cli()).key
        answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200
    samples = _samples(answer.content)
    assert _get(samples, "radcloud_model_batches_total", model="chest-xr-densenet", version="7")
    assert _get(samples, "radcloud_metrics_database_up") == 1


@pytest.mark.integration
def test_metrics_route_on_the_real_api(stack: Stack) -> None:
    topic = f"test.metrics-{uuid.uuid4().hex[:8]}"
    db = stack.database()
    try:
        with write_transaction(db, 1) as session:
            session.add(OutboxEvent(topic=topic, key="x", payload={}))
    finally:
        db.dispose()
    key = stack.cli("apikeys", "create", f"prometheus-{topic}", "--role", "admin")
    api_key = key.stdout.strip().splitlines()[-1]

    with stack.client() as client:
        assert client.get("/metrics").status_code == 401
    with stack.client("radiologist") as client:
        assert client.get("/metrics").status_code == 403
    with httpx.Client(base_url=stack.settings.api_url, timeout=30) as client:
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {api_key}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = _samples(answer.content)
    assert _get(samples, "radcloud_outbox_pending", topic=topic) == 1
    assert _get(samples, "radcloud_metrics_database_up") == 1
