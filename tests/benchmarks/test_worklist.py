"""The worklist simulator: its report's schema (a quick run) and the orderings it replays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.worklist import (
    ORDERINGS,
    SCENARIOS,
    Arrival,
    EmpiricalScores,
    Roster,
    Shift,
    generate_arrivals,
    run,
    simulate,
    table,
)
from serving.worklist import WorklistPolicy

ALWAYS_ONE_READER = Roster((Shift(0, 24, 1),))


def _study(ready: float, *, score: float | None, critical: bool = False) -> Arrival:
    return Arrival(
        ready=ready,
        modality="CT",
        critical=critical,
        score=score,
        ai_failed=score is None,
        ai_done=ready,
        read_min=10.0,
    )


def test_quick_run_writes_the_report_and_plot(tmp_path: Path) -> None:
    report = run(seeds=2, days=1, with_sweep=False, out_dir=tmp_path)
    written = json.loads((tmp_path / report["files"]["json"]).read_text())
    assert (tmp_path / report["files"]["png"]).read_bytes().startswith(b"\x89PNG")
    assert written["synthetic"] is True and "SYNTHETIC" in written["note"]
    assert written["seeds"] == 2
    assert written["policy"]["max_wait_min"] == {"critical": 30, "urgent": 120, "routine": 480}
    assert set(written["scenarios"]) == set(SCENARIOS)
    for scenario in written["scenarios"].values():
        assert 0 < scenario["utilisation"] < 1.5
        assert set(scenario["median_over_seeds"]) == set(ORDERINGS)
        for per in scenario["median_over_seeds"].values():
            for group in ("critical", "non_critical"):
                assert set(per[group]) == {"mean", "p95", "max"}
                assert set(per[group]["max"]) == {"median", "min", "max"}
        seed = scenario["per_seed"][0]
        assert seed["studies"] > seed["critical"] > 0
        assert set(seed["ai"]) == {
            "sensitivity",
            "specificity",
            "failed_fraction",
            "scored_fraction",
        }
    assert "| radcloud |" in table(written)


def test_the_stream_is_reproducible_and_labelled_by_ground_truth() -> None:
    stream = SCENARIOS["balanced"].stream
    first, again = generate_arrivals(stream, 7), generate_arrivals(stream, 7)
    assert first == again
    assert [a.ready for a in first] == sorted(a.ready for a in first)
    assert all(a.score is None for a in first if a.ai_failed)


def test_fifo_reads_in_ready_order_and_everyone_is_read() -> None:
    arrivals = [_study(t, score=s) for t, s in ((0, 0.1), (1, 0.9), (2, 0.2))]
    waits = simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "fifo")
    assert waits == [0, 9, 18]


def test_radcloud_order_is_the_worklist_policy() -> None:
    """A flagged study jumps the routine one; a study AI missed stays behind it."""
    arrivals = [
        _study(0, score=0.1),  # being read 0-10
        _study(1, score=0.1),  # routine, due 481
        _study(2, score=0.9, critical=True),  # critical, due 32: read at 10
        _study(3, score=None, critical=True),  # AI failed: routine, due 483
    ]
    radcloud = simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "radcloud")
    assert radcloud == [0, 19, 8, 27]
    assert simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "ai-first") == radcloud
    assert simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "fifo") == [0, 9, 18, 27]


def test_urgent_band_separates_radcloud_from_ai_first() -> None:
    arrivals = [_study(0, score=0.1), _study(1, score=0.1), _study(2, score=0.4)]
    assert simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "radcloud") == [0, 19, 8]
    assert simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "ai-first") == [0, 9, 18]


def test_unknown_ordering_and_an_empty_roster_are_refused() -> None:
    arrivals = [_study(0, score=0.1)]
    with pytest.raises(ValueError, match="unknown"):
        simulate(arrivals, WorklistPolicy(), ALWAYS_ONE_READER, "lifo")
    with pytest.raises(ValueError, match="unread"):
        simulate(arrivals, WorklistPolicy(), Roster(()), "fifo")


def _verification_file(path: Path, positives: list[float], negatives: list[float]) -> Path:
    studies = [{"label": 1, "score": v} for v in positives] + [
        {"label": 0, "score": v} for v in negatives
    ]
    payload = {"name": "head", "version": 3, "threshold": 0.6, "studies": studies}
    path.write_text(json.dumps(payload))
    return path


def test_measured_scores_replace_the_assumed_ones(tmp_path: Path) -> None:
    """With a model's measured scores for CT, every scored study is a CT study whose score is
    one its class produced, flagged at that model's threshold; other modalities get no AI."""
    measured = EmpiricalScores.load(
        _verification_file(tmp_path / "head.json", [0.7, 0.9, 0.55], [0.1, 0.2, 0.65])
    )
    assert measured.threshold == 0.6 and measured.model == "head v3"
    report = run(seeds=2, days=1, with_sweep=False, out_dir=tmp_path, scores={"CT": measured})
    assert report["ai_scores"]["CT"]["positives"] == 3
    scenario = SCENARIOS["balanced"]
    arrivals = generate_arrivals(
        scenario.stream.__class__(
            days=1, ai=scenario.stream.ai.__class__(empirical={"CT": measured})
        ),
        0,
    )
    scored = [a for a in arrivals if a.score is not None]
    assert scored and all(a.modality == "CT" and a.threshold == 0.6 for a in scored)
    for a in scored:
        assert a.score in (measured.positives if a.critical else measured.negatives)
    assert any(a.modality != "CT" for a in arrivals)
    # sensitivity at the model's own threshold: 2 of the 3 positive scores reach 0.6
    quality = report["scenarios"]["balanced"]["per_seed"][0]["ai"]
    assert 0.0 < quality["sensitivity"] < 1.0 and quality["scored_fraction"] < 1.0
