"""The guard rails of a promotion and the catch-up queue (serving/promotion.py) against a real
database of each engine; the running service is tests/serving/test_promotion_e2e.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from benchmarks._models import random_weight_card
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import (
    InferenceResult,
    InferenceStatus,
    OutboxEvent,
    Study,
    StudyState,
    utcnow,
)
from core.events import catch_up_backlog
from models.card import ModelCard
from models.registry import RegisteredModel, Stage
from serving.promotion import promotion_problems, queue_catch_up
from serving.triage.outbox import claim_next
from tests.fixture_models import SLIM_PARAMS
from training.tasks import Task, task_spec


def _card(version: int) -> ModelCard:
    spec = task_spec(Task.CHEST_XR)
    card, _ = random_weight_card(
        spec, {**spec.architecture_params, **SLIM_PARAMS[Task.CHEST_XR]}, 1.0, "test"
    )
    return card.model_copy(update={"version": version})


def test_a_first_promotion_and_an_equal_card_pass_the_guard_rails() -> None:
    assert promotion_problems(_card(1), None) == []
    assert promotion_problems(_card(2), _card(1)) == []


def test_a_card_below_the_production_floor_is_named() -> None:
    production = _card(1)  # AUC 0.5: floor 0.5 - 3 x 0.058 on 50 + 50 studies
    worse = _card(2).model_copy(
        update={"metrics": production.metrics.model_copy(update={"auc": 0.3})}
    )
    slightly = _card(3).model_copy(
        update={"metrics": production.metrics.model_copy(update={"auc": 0.45})}
    )
    [problem] = promotion_problems(worse, production)
    assert problem.startswith("auc 0.300 is below the floor 0.32")
    assert "production v1 (auc 0.500)" in problem
    assert promotion_problems(slightly, production) == []  # within three standard errors
    silent = _card(4).model_copy(
        update={"metrics": production.metrics.model_copy(update={"auc": None})}
    )
    assert promotion_problems(silent, production)[0].startswith("the card has no auc")


def test_another_input_contract_is_named() -> None:
    production = _card(1)
    inputs = production.inputs.model_copy(
        update={"modality": "CR", "spacing_mm": (0.5, 0.5), "shape": (3, 256, 256)}
    )
    problems = promotion_problems(_card(2).model_copy(update={"inputs": inputs}), production)
    assert problems == [
        'input modality "CR": production takes "DX"',
        "input spacing [0.5, 0.5] mm: production takes none (resized)",
        "3 input channels: production takes 1",
    ]


def _study(uid: str, ready_hours_ago: float) -> Study:
    ready = utcnow() - dt.timedelta(hours=ready_hours_ago)
    return Study(
        study_instance_uid=uid,
        state=StudyState.READY,
        first_received_at=ready,
        last_received_at=ready,
        ready_at=ready,
    )


def _arrival(uid: str, modality: str, *, processed: bool = True) -> OutboxEvent:
    return OutboxEvent(
        topic="study.ready",
        key=uid,
        payload={"study_instance_uid": uid, "series": [{"modality": modality}]},
        processed_at=utcnow() if processed else None,
    )


def test_catch_up_queues_the_studies_that_missed_a_model_behind_live_ones(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    upgrade(db)
    model = RegisteredModel("chest-xr-finding", 1, Stage.STAGED, tmp_path, _card(1))
    cases = {  # uid: (hours since ready, modality, its result, a live event pending)
        "1.1": (1, "DX", ("(none)", "no_model: no model is in production"), False),
        "1.2": (2, "CR", ("(none)", "unsupported: head-ct: modality DX"), False),
        "1.3": (100, "DX", ("(none)", "no_model: no model is in production"), False),  # too old
        "1.4": (1, "CT", ("(none)", "no_model: no model is in production"), False),  # not ours
        "1.5": (1, "DX", ("chest-xr-finding", None), False),  # has a result of the model
        "1.6": (1, "DX", ("(none)", "no_model: no model is in production"), True),  # queued
        "1.7": (1, "DX", ("(none)", "decode_failed: bad pixels"), False),  # not a missing model
    }
    with db.session() as session:
        for uid, (hours, modality, (model_name, error), live) in cases.items():
            study = _study(uid, hours)
            session.add(study)
            session.flush()
            session.add(_arrival(uid, modality, processed=not live))
            session.add(
                InferenceResult(
                    study_id=study.id,
                    model_name=model_name,
                    model_version="-" if error else "1",
                    status=InferenceStatus.FAILED if error else InferenceStatus.SUCCEEDED,
                    error=error,
                )
            )
    settings = load_settings(home=tmp_path, triage_catch_up_max_age_hours=48)
    with db.session() as session:
        assert queue_catch_up(session, settings, model) == 2
    queued = {"1.1", "1.2"}
    assert catch_up_backlog(db).pending == 2
    with db.session() as session:  # twice: each study waits once
        assert queue_catch_up(session, settings, model) == 0

    first = claim_next(db)
    assert first is not None and (first.topic, first.key) == ("study.ready", "1.6")  # live first
    taken = {claim_next(db), claim_next(db)}
    assert {(e.topic, e.key) for e in taken if e is not None} == {
        ("study.catch_up", uid) for uid in queued
    }
    assert claim_next(db) is None
    db.dispose()


def test_catch_up_is_bounded_in_size(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    upgrade(db)
    model = RegisteredModel("chest-xr-finding", 1, Stage.STAGED, tmp_path, _card(1))
    with db.session() as session:
        for number in range(5):
            uid = f"2.{number}"
            study = _study(uid, number)
            session.add(study)
            session.flush()
            session.add(_arrival(uid, "DX"))
            session.add(
                InferenceResult(
                    study_id=study.id,
                    model_name="(none)",
                    model_version="-",
                    status=InferenceStatus.FAILED,
                    error="no_model: no model is in production",
                )
            )
    settings = load_settings(home=tmp_path, triage_catch_up_max_studies=3)
    with db.session() as session:
        assert queue_catch_up(session, settings, model) == 3
    with db.session() as session:
        keys = [e.key for e in session.query(OutboxEvent).filter_by(topic="study.catch_up")]
    assert sorted(keys) == ["2.0", "2.1", "2.2"]  # the newest
    with db.session() as session:  # the backlog is full
        assert queue_catch_up(session, settings, model) == 0
    db.dispose()
