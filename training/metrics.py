"""Evaluation metrics and plots: AUC, an operating point, sensitivity/specificity, Dice; the
training curves and the ROC as PNG files."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import ArrayLike

from imaging.synthetic import dice, roc_auc, roc_curve

__all__ = [
    "BinaryMetrics",
    "binary_metrics",
    "choose_threshold",
    "dice",
    "plot_curves",
    "plot_quality_vs_time",
    "plot_roc",
    "quality_at",
    "roc_auc",
    "roc_curve",
]


def choose_threshold(
    labels: ArrayLike, scores: ArrayLike, *, min_sensitivity: float = 0.9
) -> float:
    """The highest threshold whose sensitivity is at least ``min_sensitivity`` (a triage tool
    should miss few critical studies); chosen on validation data, reported on test data."""
    _, tpr, thresholds = roc_curve(labels, scores)
    ok = np.flatnonzero(tpr >= min_sensitivity)
    index = int(ok[0]) if ok.size else len(thresholds) - 1
    return float(thresholds[index]) if np.isfinite(thresholds[index]) else float(np.max(scores))


@dataclass(frozen=True)
class BinaryMetrics:
    """Triage performance at one operating threshold."""

    auc: float
    threshold: float
    sensitivity: float
    specificity: float
    positives: int
    negatives: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> BinaryMetrics:
    """AUC (NaN when one class is absent), and sensitivity and specificity at ``threshold``
    (score ≥ threshold is positive)."""
    y = np.asarray(labels, dtype=np.int64)
    values = np.asarray(scores, dtype=np.float64)
    predicted = values >= threshold
    positives, negatives = int(y.sum()), int((1 - y).sum())
    auc = roc_auc(y, values) if positives and negatives else float("nan")
    sensitivity = float((predicted & (y == 1)).sum() / max(positives, 1))
    specificity = float((~predicted & (y == 0)).sum() / max(negatives, 1))
    return BinaryMetrics(auc, threshold, sensitivity, specificity, positives, negatives)


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """Training curves (one line per series in ``history``, by epoch) as a PNG."""
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in history.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_roc(curves: dict[str, tuple[ArrayLike, ArrayLike]], path: Path, title: str) -> Path:
    """ROC curves (one per named (labels, scores) pair, AUC in the legend) as a PNG."""
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        if len(set(np.asarray(labels).tolist())) < 2:
            axis.plot(fpr, tpr, label=f"{name} (AUC undefined: one class only)")
        else:
            auc = roc_auc(np.asarray(labels), np.asarray(scores, dtype=np.float64))
            axis.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def quality_at(
    history: dict[str, list[float]],
    minutes: tuple[float, ...] = (2, 4, 8, 16, 32, 64),
    clock: str = "cpu seconds",
) -> list[dict[str, float | None]]:
    """What a run stopped after each of ``minutes`` (process CPU minutes by default) would have
    had: the last validation at or before that time (``None`` before the first one, and no
    row past the end of the run)."""
    times = np.asarray(history.get(clock, []), dtype=float) / 60.0
    rows: list[dict[str, float | None]] = []
    for limit in minutes:
        if not times.size or limit > times[-1] + 1e-9:
            break  # the run did not last that long
        done = np.flatnonzero(times <= limit + 1e-9)
        index = int(done[-1]) if done.size else None
        row: dict[str, float | None] = {
            "minutes": float(limit),
            "at minutes": float(times[index]) if index is not None else None,
        }
        for name in ("validation AUC", "validation Dice"):
            if name in history:
                row[name] = float(history[name][index]) if index is not None else None
        rows.append(row)
    return rows


def plot_quality_vs_time(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """Validation AUC (and Dice) against training time, wall-clock and process CPU minutes:
    what a run of a given length buys."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100, sharey=True)
    for axis, clock in zip(axes, ("seconds", "cpu seconds"), strict=True):
        minutes = np.asarray(history[clock]) / 60.0
        for name in ("validation AUC", "validation Dice"):
            if name in history:
                axis.plot(minutes, history[name], marker="o", label=name)
        axis.set_xlabel("wall-clock minutes" if clock == "seconds" else "process CPU minutes")
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
