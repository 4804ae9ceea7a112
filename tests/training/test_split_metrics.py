"""Patient-level split and evaluation metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.metrics import (
    binary_metrics,
    choose_threshold,
    dice,
    plot_curves,
    plot_roc,
    quality_at,
    roc_auc,
)
from training.split import Part, Split


def test_split_is_written_once_and_never_moves_a_patient(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    first = Split.load_or_create(path)
    patients = [f"P{n:03d}" for n in range(200)]
    assert first.update(patients) == 200
    counts = first.counts()
    assert 110 <= counts["train"] <= 170
    assert counts["validation"] > 10 and counts["test"] > 10

    again = Split.load_or_create(path, salt="a different salt is ignored")
    assert again.salt == first.salt
    assert again.update([*patients, *[f"N{n}" for n in range(50)]]) == 50
    assert all(again.part(p) is first.part(p) for p in patients)
    assert again.part("P000") in set(Part)


def test_split_rejects_bad_fractions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        Split.load_or_create(tmp_path / "s.json", fractions=(0.5, 0.5, 0.5))


def test_auc_matches_rank_definition_with_ties() -> None:
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    # pairs (pos, neg): count pos > neg as 1, ties as 0.5
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert roc_auc(labels, scores) == pytest.approx(expected)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])


def test_threshold_keeps_sensitivity_and_metrics_follow() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100, int), np.ones(50, int)]
    scores = np.r_[rng.normal(0, 1, 100), rng.normal(2, 1, 50)]
    threshold = choose_threshold(labels, scores, min_sensitivity=0.9)
    metrics = binary_metrics(labels, scores, threshold)
    assert metrics.sensitivity >= 0.9
    assert 0.4 < metrics.specificity < 1.0
    assert metrics.auc > 0.85
    assert (metrics.positives, metrics.negatives) == (50, 100)


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def test_plots_are_png_files(tmp_path: Path) -> None:
    curves = plot_curves({"loss": [1.0, 0.6, 0.4]}, tmp_path / "curves.png", "loss")
    roc = plot_roc({"model": ([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.6])}, tmp_path / "roc.png", "ROC")
    for path in (curves, roc):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000


def test_quality_at_takes_the_last_validation_before_each_time_and_stops_at_the_run_end() -> None:
    history = {
        "cpu seconds": [90.0, 300.0, 660.0],
        "validation AUC": [0.6, 0.8, 0.9],
        "validation Dice": [0.1, 0.3, 0.5],
    }
    rows = quality_at(history, minutes=(1, 2, 8, 11, 16))
    assert [r["minutes"] for r in rows] == [1, 2, 8, 11]  # the run lasted under 16 minutes
    assert rows[0]["validation AUC"] is None and rows[0]["at minutes"] is None
    assert (rows[1]["validation AUC"], rows[1]["at minutes"]) == (0.6, 1.5)
    assert (rows[2]["validation AUC"], rows[2]["validation Dice"]) == (0.8, 0.3)
    assert rows[3]["validation AUC"] == 0.9
    assert quality_at({"cpu seconds": []}) == []
