"""Evaluation that can show the bar: a trained model on stored held-out studies
(:mod:`training.heldout`), scored as serving scores them.

- Scores: each study goes through serving's pre-processing (:func:`training.stream.
  prepare_study`) and the card's study score; head-CT Dice is measured on the native grid (the
  lesion probability mapped back by :func:`models.preprocessing.restore_to_source`, as serving
  does before writing the SEG, thresholded at 0.5).
- Calibration: Platt scaling fitted on the validation studies (:func:`fit_platt`), the operating
  threshold chosen there on the calibrated probability (sensitivity >= 0.9), both then applied
  unchanged to the test studies; a reliability plot checks the calibration on test.
- Test metrics: AUC with a bootstrap 95 % interval, sensitivity and specificity at the
  threshold, Dice on positives, all by finding, size and contrast stratum, the hand rule and the
  oracle on the same studies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import rankdata

from models.preprocessing import restore_to_source
from training.heldout import load_records, load_truth
from training.metrics import binary_metrics, choose_threshold, dice, roc_auc
from training.stream import prepare_study
from training.tasks import TaskSpec

__all__ = [
    "HeldoutScores",
    "auc_interval",
    "calibrate",
    "fit_platt",
    "plot_reliability",
    "score_heldout",
    "strata",
    "test_report",
]

logger = logging.getLogger(__name__)

_EPS = 1e-6


@dataclass
class HeldoutScores:
    """A model's raw scores (and native-grid Dice) on stored held-out studies."""

    records: list[dict[str, Any]]
    scores: list[float]
    dices: dict[int, float] = field(default_factory=dict)  # positives, segmentation only

    @property
    def labels(self) -> list[int]:
        """1 for a study with a finding."""
        return [int(record["label"]) for record in self.records]


def score_heldout(
    spec: TaskSpec, model: torch.nn.Module, folder: Path, *, limit: int | None = None
) -> HeldoutScores:
    """Score every stored study of ``folder`` (``limit``: the first ones only)."""
    records = load_records(folder)[:limit]
    model.eval()
    result = HeldoutScores(records, [])
    with torch.no_grad():
        for record in records:
            study = prepare_study(
                spec, load_truth(folder, record), record["index"], keep_trace=True
            )
            output = model(study.image[None]).float()
            result.scores.append(float(spec.study_score(output)[0]))
            if spec.segmentation and study.label == 1:
                lesion = torch.softmax(output[0], dim=0)[1:]
                native = restore_to_source(study.transforms, study.prepared, lesion)[0]
                result.dices[record["index"]] = dice(native >= 0.5, study.truth.mask > 0)
    return result


def _logit(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(clipped / (1.0 - clipped)))


def fit_platt(labels: list[int], scores: list[float]) -> tuple[float, float]:
    """Slope and intercept of ``p = sigmoid(slope * logit(raw) + intercept)`` by maximum
    likelihood (Newton's method, a small ridge keeps separable data finite)."""
    x, y = _logit(np.asarray(scores, dtype=np.float64)), np.asarray(labels, dtype=np.float64)
    weights = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(design @ weights)))
        gradient = design.T @ (p - y) + 1e-3 * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if float(np.abs(step).max()) < 1e-9:
            break
    return float(weights[0]), float(weights[1])


def calibrate(scores: list[float], slope: float, intercept: float) -> list[float]:
    """Calibrated probabilities of raw scores (the card's :class:`ScoreCalibration`)."""
    z = slope * _logit(np.asarray(scores, dtype=np.float64)) + intercept
    return [float(v) for v in 1.0 / (1.0 + np.exp(-z))]


def auc_interval(
    labels: list[int], scores: list[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95 % interval of the AUC (positives and negatives resampled separately)."""
    y, s = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64)
    positives, negatives = s[y], s[~y]
    if positives.size == 0 or negatives.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        p = positives[rng.integers(0, positives.size, positives.size)]
        n = negatives[rng.integers(0, negatives.size, negatives.size)]
        ranks = rankdata(np.concatenate([p, n]))
        u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2
        values[r] = u / (p.size * n.size)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def strata(task: str, record: dict[str, Any]) -> dict[str, str]:
    """The strata a positive study belongs to: finding, size, contrast."""
    if record["label"] == 0:
        return {}
    if task == "head-ct":
        volume = float(record.get("volume_ml", 0.0))
        size = "tiny (<0.5 ml)" if volume < 0.5 else "small (0.5-5 ml)" if volume < 5 else "large"
        contrast = "low contrast" if record.get("low_contrast") else "usual contrast"
    else:
        millimetres = float(record.get("size_mm", 0.0))
        size = (
            "small (<8 mm)"
            if millimetres < 8
            else "medium (8-15 mm)"
            if millimetres < 15
            else "large"
        )
        low = 0.1 if record["finding"] == "nodule" else 0.02
        contrast = "low contrast" if float(record.get("contrast", 1.0)) < low else "usual contrast"
    return {"finding": record["finding"], "size": size, "contrast": contrast}


def _stratum_metrics(
    rows: list[int], labels: np.ndarray, columns: dict[str, np.ndarray], threshold: float
) -> dict[str, Any]:
    """AUC of one stratum's positives against all negatives, sensitivity at the threshold."""
    negatives = np.flatnonzero(labels == 0)
    chosen = np.concatenate([np.asarray(rows, dtype=np.int64), negatives])
    out: dict[str, Any] = {"positives": len(rows)}
    for name, values in columns.items():
        if name == "oracle":
            continue
        out[f"{name} AUC"] = roc_auc(labels[chosen], values[chosen])
    out["model sensitivity"] = float((columns["model"][rows] >= threshold).mean())
    return out


def test_report(
    spec: TaskSpec,
    validation: HeldoutScores,
    test: HeldoutScores,
    *,
    plots_dir: Path,
    name: str,
) -> dict[str, Any]:
    """Calibrate and choose the threshold on ``validation``; measure everything on ``test``;
    write the ROC and reliability plots. Returns the results (JSON-ready)."""
    slope, intercept = fit_platt(validation.labels, validation.scores)
    validation_p = calibrate(validation.scores, slope, intercept)
    threshold = choose_threshold(validation.labels, validation_p, min_sensitivity=0.9)
    test_p = np.asarray(calibrate(test.scores, slope, intercept))
    labels = np.asarray(test.labels)
    at = binary_metrics(labels, test_p, threshold).to_json()
    low, high = auc_interval(test.labels, list(test_p))
    baseline = np.asarray([record["baseline"] for record in test.records])
    results: dict[str, Any] = {
        "model": spec.model_name,
        "test": {**at, "auc_95ci": [low, high]},
        "calibration": {"method": "platt", "slope": slope, "intercept": intercept},
        "threshold_applies_to": "Platt-calibrated probability",
        "validation": {
            "studies": len(validation.records),
            "auc": roc_auc(validation.labels, validation.scores),
        },
        "baseline": {
            "auc": roc_auc(labels, baseline),
            "auc_95ci": list(auc_interval(test.labels, list(baseline))),
        },
    }
    positives = [i for i, record in enumerate(test.records) if record["label"] == 1]
    oracle_pos = _floats(test.records, positives, "oracle_positive")
    if oracle_pos:
        twins = [float(test.records[i]["oracle_negative"]) for i in positives]
        oracle_labels = [1] * len(positives) + [0] * len(twins)
        results["oracle"] = {
            "auc": roc_auc(oracle_labels, oracle_pos + twins),
            "scored": "each positive and its lesion-free twin (matched filter, known signal)",
        }
    if spec.segmentation:
        results["test"]["lesion_dice"] = float(np.mean(list(test.dices.values())))
        oracle_dices = _floats(test.records, positives, "oracle_dice")
        if oracle_dices:
            results["oracle"]["dice"] = float(np.mean(oracle_dices))
    columns = {"model": test_p, "baseline": baseline}
    groups_by_kind: dict[str, dict[str, list[int]]] = {}
    for i in positives:
        for kind, value in strata(spec.task.value, test.records[i]).items():
            groups_by_kind.setdefault(kind, {}).setdefault(value, []).append(i)
    breakdown: dict[str, dict[str, Any]] = {}
    for kind, groups in groups_by_kind.items():
        breakdown[kind] = {}
        for value, rows in sorted(groups.items()):
            entry = _stratum_metrics(rows, labels, columns, threshold)
            if spec.segmentation:
                entry["model Dice"] = float(
                    np.mean([test.dices[test.records[i]["index"]] for i in rows])
                )
                entry["oracle Dice"] = _mean_key(test.records, rows, "oracle_dice")
            entry["oracle AUC"] = _oracle_auc(test.records, rows)
            breakdown[kind][value] = entry
    results["breakdown"] = breakdown
    results["plots"] = [
        str(
            _plot_roc(
                labels,
                {"model": test_p, "hand rule": baseline},
                plots_dir / f"{name}-roc.png",
                name,
            )
        ),
        str(plot_reliability(labels, test_p, plots_dir / f"{name}-reliability.png", name)),
    ]
    return results


def _floats(records: list[dict[str, Any]], rows: list[int], key: str) -> list[float]:
    """``key`` of each row's record as floats; empty when any of them lacks it."""
    values = [records[i].get(key) for i in rows]
    return [float(v) for v in values if v is not None] if None not in values else []


def _mean_key(records: list[dict[str, Any]], rows: list[int], key: str) -> float | None:
    values = _floats(records, rows, key)
    return float(np.mean(values)) if values else None


def _oracle_auc(records: list[dict[str, Any]], rows: list[int]) -> float | None:
    pos = _floats(records, rows, "oracle_positive")
    neg = _floats(records, rows, "oracle_negative")
    if not pos or not neg:
        return None
    return roc_auc([1] * len(pos) + [0] * len(neg), pos + neg)


def _plot_roc(labels: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
    from training.metrics import plot_roc

    return plot_roc({k: (labels, v) for k, v in curves.items()}, path, f"{title} (SYNTHETIC test)")


def plot_reliability(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> Path:
    """Reliability diagram: observed frequency of findings per bin of predicted probability."""
    bins = np.linspace(0.0, 1.0, 11)
    which = np.clip(np.digitize(probabilities, bins) - 1, 0, 9)
    centres, observed, counts = [], [], []
    for b in range(10):
        chosen = which == b
        if chosen.any():
            centres.append(float(probabilities[chosen].mean()))
            observed.append(float(labels[chosen].mean()))
            counts.append(int(chosen.sum()))
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    axis.plot(centres, observed, marker="o", label="model (test)")
    for x, y, n in zip(centres, observed, counts, strict=True):
        axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("calibrated probability (bin mean)")
    axis.set_ylabel("observed fraction with a finding")
    axis.set_title(f"{title}: reliability")
    axis.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def finite(value: float | None) -> float | None:
    """``None`` for NaN (JSON and cards)."""
    return None if value is None or math.isnan(value) else float(value)


ScoreFunction = Callable[[TaskSpec, torch.nn.Module, Path], HeldoutScores]
