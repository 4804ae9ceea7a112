"""Shadow evaluation's parts one at a time (serving/shadow.py, serving/triage/shadow.py, the
registry's shadow version): the comparison against a direct computation, the shadow runner on a
real database with a registered model (the model call is a stand-in), and the registry's rules.
The whole path through a running stack is in tests/serving/test_promotion_e2e.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import Hospital, Label, OutboxEvent, ShadowResult, Study, StudyState
from imaging.synthetic import generate_study
from imaging.volume import load_series
from models.exceptions import StageError
from models.registry import ModelRegistry
from serving.inference import interpret, prepare
from serving.shadow import ShadowPair, compare_shadow, comparison, read_truth
from serving.triage.shadow import LiveRun, ShadowRunner
from tests.fixture_models import register_fixture_version
from training.tasks import Task


def _direct_auc(labels: list[bool], scores: list[float]) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties one half."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)
    )
    return wins / (len(positives) * len(negatives))


def test_comparison_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    pairs = []
    for index in range(40):
        score, production = float(rng.random()), float(rng.random())
        pairs.append(
            ShadowPair(
                study_instance_uid=f"1.2.{index}",
                score=score,
                positive=score >= 0.4,
                production_score=production,
                production_positive=production >= 0.6,
                latency_ms=float(rng.uniform(5, 50)),
                cpu_ms=float(rng.uniform(1, 5)),
                production_latency_ms=float(rng.uniform(5, 50)),
                production_cpu_ms=float(rng.uniform(1, 5)),
                mask_dice=float(rng.random()) if index % 2 else None,
            )
        )
    truth = {f"1.2.{i}": bool(rng.random() < 0.4) for i in range(0, 40, 2)}  # half the studies
    truth["9.9.9"] = True  # a study without a pair counts nowhere

    result = comparison("m", pairs, {"synthetic": truth}, versions=["2"], shed=3, failed=1)

    assert result.studies == 40 and (result.shed, result.failed) == (3, 1)
    same = [p.positive == p.production_positive for p in pairs]
    assert result.agreement.fraction == pytest.approx(sum(same) / 40)
    assert result.agreement.only_shadow == sum(
        p.positive and not p.production_positive for p in pairs
    )
    assert (
        result.agreement.both_positive
        + result.agreement.both_negative
        + result.agreement.only_shadow
        + result.agreement.only_production
    ) == 40
    dices = [p.mask_dice for p in pairs if p.mask_dice is not None]
    assert result.mask_dice_mean == pytest.approx(sum(dices) / len(dices))
    known = [p for p in pairs if p.study_instance_uid in truth]
    labels = [truth[p.study_instance_uid] for p in known]
    for arm, score_of, call_of in (
        ("shadow", lambda p: p.score, lambda p: p.positive),
        ("production", lambda p: p.production_score, lambda p: p.production_positive),
    ):
        figures = result.truths["synthetic"][arm]
        assert (figures.studies, figures.positives) == (20, sum(labels))
        assert figures.auc == pytest.approx(_direct_auc(labels, [score_of(p) for p in known]))
        calls = [call_of(p) for p in known]
        true_positive = sum(c and y for c, y in zip(calls, labels, strict=True))
        true_negative = sum(not c and not y for c, y in zip(calls, labels, strict=True))
        assert figures.sensitivity == pytest.approx(true_positive / sum(labels))
        assert figures.specificity == pytest.approx(true_negative / (20 - sum(labels)))
    latencies = sorted(p.latency_ms for p in pairs)
    assert result.latency_ms["shadow"]["p50"] == pytest.approx((latencies[19] + latencies[20]) / 2)
    assert result.cpu_ms["production"]["mean"] == pytest.approx(
        sum(p.production_cpu_ms or 0.0 for p in pairs) / 40
    )


def test_a_truth_with_one_class_has_no_auc() -> None:
    pair = ShadowPair("1.2.3", 0.9, True, 0.1, False, 10.0, 1.0)
    result = comparison("m", [pair], {"r": {"1.2.3": True}})
    figures = result.truths["r"]["shadow"]
    assert (figures.auc, figures.sensitivity, figures.specificity) == (None, 1.0, None)
    assert result.roc == {}  # no curve without both classes


def _trapezoid_area(points: list[tuple[float, float]]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))


def test_the_roc_curves_and_pairs_are_what_plots_need() -> None:
    """Each arm's ROC curve runs from (0, 0) to (1, 1), never back, and encloses the AUC the
    figures report (ties included); the JSON carries every study's pair of scores."""
    rng = np.random.default_rng(11)
    pairs = [
        ShadowPair(
            f"1.3.{i}",
            round(float(rng.random()), 1),
            bool(i % 3),
            float(rng.random()),
            bool(i % 2),
            10.0,
            1.0,
        )
        for i in range(30)
    ]  # scores rounded to tenths: many ties
    truth = {p.study_instance_uid: bool(rng.random() < 0.5) for p in pairs}
    result = comparison("m", pairs, {"synthetic": truth})
    for arm in ("shadow", "production"):
        curve = result.roc["synthetic"][arm]
        assert curve[0] == (0.0, 0.0) and curve[-1] == (1.0, 1.0)
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(curve))
        assert _trapezoid_area(curve) == pytest.approx(result.truths["synthetic"][arm].auc)
    sent = result.to_json()
    assert [
        (p["study_instance_uid"], p["score"], p["production_score"]) for p in sent["pairs"]
    ] == [(p.study_instance_uid, p.score, p.production_score) for p in pairs]
    assert sent["roc"]["synthetic"]["shadow"][-1] == (1.0, 1.0)


def test_the_registry_keeps_one_shadow_beside_production(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    name = register_fixture_version(tmp_path, Task.CHEST_XR, 1.0).name
    register_fixture_version(tmp_path, Task.CHEST_XR, 1.0)
    register_fixture_version(tmp_path, Task.CHEST_XR, 1.0)
    registry.promote(name, 1)
    with pytest.raises(StageError, match="is production"):
        registry.set_shadow(name, 1)
    assert registry.set_shadow(name, 2) is None
    replaced = registry.set_shadow(name, 3)
    assert replaced is not None and replaced.version == 2
    shadow = registry.shadow(name)
    assert shadow is not None and shadow.version == 3
    registry.promote(name, 3)  # a shadow that becomes production is no shadow any more
    assert registry.shadow(name) is None
    registry.set_shadow(name, 2)
    assert [e.action for e in registry.history(name)][-1] == "shadow"
    stopped = registry.set_shadow(name, None)
    assert stopped is not None and stopped.version == 2 and registry.shadow(name) is None


def test_the_shadow_runner_records_runs_failures_and_sheds_under_load(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, triage_shadow_max_backlog=1)
    db = Database.from_settings(settings)
    upgrade(db)
    models = settings.paths.models_dir
    name = register_fixture_version(models, Task.CHEST_XR, 1.0).name  # none positive
    shadow = register_fixture_version(models, Task.CHEST_XR, 0.0)  # every study positive
    registry = ModelRegistry(models)
    registry.promote(name, 1)
    study = generate_study("chest-xr", 0, seed=3, positive=False)
    prepared = prepare(shadow.card, load_series(study.datasets))
    logits = np.zeros((1,), dtype=np.float32)
    production = interpret(registry.get(name, 1).card, prepared, logits)
    with db.write_session() as session:
        row = Study(
            study_instance_uid=study.study_instance_uid,
            hospital=Hospital(name="H"),
            state=StudyState.READY,
        )
        session.add(row)
        session.flush()
        study_id = row.id
    live = [LiveRun(name, "1", prepared, production, latency_ms=12.0, cpu_ms=2.0)]
    asked: list[tuple[str, str]] = []

    def predict(model: str, version: str, array: np.ndarray) -> tuple[np.ndarray, str]:
        asked.append((model, version))
        if len(asked) == 2:
            raise RuntimeError("the shadow's replica is away")
        return logits, version

    runner = ShadowRunner(settings, db, registry, predict)
    assert runner.run(study_id, live) == 0  # no shadow: nothing runs
    registry.set_shadow(name, shadow.version)

    def rows() -> list[ShadowResult]:
        with db.session() as session:
            return list(session.scalars(select(ShadowResult)))

    assert runner.run(study_id, live) == 1
    [first] = rows()
    assert asked == [(name, str(shadow.version))]
    assert (first.status, first.positive, first.production_positive) == ("succeeded", True, False)
    assert first.score == pytest.approx(0.5) and first.production_latency_ms == 12.0
    assert first.latency_ms is not None and first.cpu_ms is not None

    runner.run(study_id, live)  # the same study again: its row is replaced, not doubled
    [failed] = rows()
    assert failed.status == "failed" and "replica is away" in str(failed.error)

    with db.write_session() as session:
        session.add_all(
            OutboxEvent(topic="study.ready", key=f"1.9.{i}", payload={}) for i in range(2)
        )
    runner.run(study_id, live)
    [shed] = rows()
    assert shed.status == "shed" and len(asked) == 2 and "2 live study events" in str(shed.error)

    # compare reads the rows: the shed one counts as shed, labels of signed reports as truth
    with db.write_session() as session:
        session.add(Label(study_id=study_id, finding="nodule", present=True, author="r"))
    result = compare_shadow(db, name)
    assert (result.studies, result.shed, result.versions) == (0, 1, [])
    db.dispose()


def test_read_truth_takes_a_synthetic_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("study_instance_uid,patient_id,label\n1.2.3,P,1\n1.2.4,Q,0\n")
    assert read_truth(path) == {"1.2.3": True, "1.2.4": False}
