"""Hand-rule baselines for the synthetic tasks, to print beside a model's metrics.

Head CT, "brightest brain": the highest 3 x 3 mean HU inside the brain region. The brain region
is what the skull (HU > 300) encloses, 2 pixels away from bone, on slices whose enclosed area is
at least half the largest (no skull base, no vertex); calcium (HU > 100) and 2 pixels around it
are left out, as a reader ignores calcified pineal, choroid plexus and falx.

Chest radiograph, "brightest spot in the lungs": the highest 7 x 7 local mean inside the lung
fields, less their median, over their interquartile range (so exposure does not matter). The
lung fields are the darkest 30 % of the smoothed body inside the central part of the image, the
largest region on each side, closed, filled and eroded.

Both are deliberately simple: the confounders of the phantoms (calcifications, partial-volume
bone, streaks; rib crossings, vessels, nipple shadows) are what they fall for, and a
pneumothorax (darker, not brighter) is invisible to the chest rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.stats import rankdata

from imaging.synthetic.dataset import (
    DEFAULT_POSITIVE_FRACTION,
    positive_indices,
    render_ground_truth,
)
from imaging.synthetic.dicom import (
    InvalidParameterError,
    SyntheticFinding,
    SyntheticTask,
    normalise_task,
)

__all__ = [
    "BaselineReport",
    "baseline_score",
    "evaluate_baseline",
    "intracranial_mask",
    "lung_field_mask",
    "roc_auc",
    "roc_curve",
]

logger = logging.getLogger(__name__)

_BONE_HU = 300.0
_CALCIUM_HU = 100.0
_RULES = {
    SyntheticTask.HEAD_CT: "max 3x3-mean HU in the brain region, calcium (>100 HU) excluded",
    SyntheticTask.CHEST_XR: "max 7x7 local mean in the lung fields, (value - median) / IQR",
}


class BaselineReport(TypedDict):
    """What :func:`evaluate_baseline` measured."""

    task: str
    rule: str
    studies: int
    seed: int
    positives: int
    negatives: int
    auc: float
    auc_by_finding: dict[str, float]
    """AUC of the studies with each finding against all normal studies."""


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve, as the Mann-Whitney U statistic (ties count one half): the
    one implementation in radcloud, arguments in scikit-learn's order ``(labels, scores)``
    (:func:`training.metrics.roc_auc` is this function).

    Raises
    ------
    InvalidParameterError
        The lengths differ, or ``labels`` lacks a 0 or a 1.
    """
    values, truth = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    if values.shape != truth.shape or values.ndim != 1:
        raise InvalidParameterError("scores", values.shape, f"one score per label {truth.shape}")
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        raise InvalidParameterError(
            "labels", f"{positives} positive, {negatives} negative", "both classes"
        )
    ranks = rankdata(values)
    u = float(ranks[truth].sum()) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates for every distinct threshold, from (0, 0), and the
    thresholds (tied scores move together, so the area under the points is :func:`roc_auc`):
    the one implementation, for training's plots and the shadow comparison
    (:func:`training.metrics.roc_curve` is this function)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = 1 + distinct - tps
    positives, negatives = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    fpr = np.r_[0.0, fps / negatives]
    tpr = np.r_[0.0, tps / positives]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two binary masks (non-zero is inside; 1.0 when both are empty): the
    one implementation, used by training's evaluation and serving's verification.

    Raises
    ------
    InvalidParameterError
        The masks' shapes differ.
    """
    if prediction.shape != truth.shape:
        raise InvalidParameterError(
            "prediction", prediction.shape, f"a mask of shape {truth.shape}"
        )
    p, t = prediction.astype(bool), truth.astype(bool)
    total = int(p.sum() + t.sum())
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def intracranial_mask(hu: np.ndarray) -> np.ndarray:
    """Brain region of a head CT ``(slices, rows, columns)`` in HU, as the head CT rule uses it."""
    region = np.zeros(hu.shape, dtype=bool)
    for k, plane in enumerate(hu):
        bone = plane > _BONE_HU
        region[k] = ndimage.binary_fill_holes(bone) & ~ndimage.binary_dilation(bone, iterations=2)
    area = region.sum(axis=(1, 2))
    if area.max(initial=0) > 0:
        region[area < 0.5 * area.max()] = False
    return region


def lung_field_mask(pixels: np.ndarray) -> np.ndarray:
    """Lung fields of a chest radiograph ``(rows, columns)``, MONOCHROME2 stored values."""
    smooth = ndimage.gaussian_filter(np.asarray(pixels, dtype=np.float32), 5.0)
    rows, columns = smooth.shape
    central = np.zeros(smooth.shape, dtype=bool)
    central[int(rows * 0.04) : int(rows * 0.93), int(columns * 0.05) : int(columns * 0.95)] = True
    body = (smooth > 0.12 * np.percentile(smooth, 99)) & central
    if not body.any():
        return np.zeros(smooth.shape, dtype=bool)
    dark = (smooth < np.percentile(smooth[body], 30)) & body
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.zeros(smooth.shape, dtype=bool)
    sizes = ndimage.sum_labels(dark, labels, np.arange(1, count + 1))
    centres = ndimage.center_of_mass(dark, labels, np.arange(1, count + 1))
    keep = []
    for left in (True, False):
        side = [n for n in range(count) if (centres[n][1] < columns / 2) == left]
        if side:
            keep.append(1 + max(side, key=lambda n: sizes[n]))
    lungs = np.isin(labels, keep)
    disk = np.hypot(*np.mgrid[-14:15, -14:15]) <= 14
    lungs = ndimage.binary_closing(np.pad(lungs, 16), structure=disk)[16:-16, 16:-16]
    return np.asarray(ndimage.binary_erosion(ndimage.binary_fill_holes(lungs), iterations=4))


def baseline_score(
    task: SyntheticTask | str, volume_or_image: np.ndarray, *, layout: str = "zyx"
) -> float:
    """The hand rule's suspicion score of one study (higher: more likely a finding).

    Parameters
    ----------
    task
        ``"head-ct"`` or ``"chest-xr"``.
    volume_or_image
        A head CT in HU, or a radiograph in MONOCHROME2 stored values, laid out as ``layout``
        says; a radiograph may also be 2D ``(rows, columns)``.
    layout
        ``"zyx"``: ``(slices, rows, columns)`` as :attr:`SyntheticStudy.image`; ``"xyz"``:
        ``(columns, rows, slices)`` as the data of a NIfTI file in the DICOM grid
        (``np.asarray(nibabel.load(path).dataobj)`` of the masks or ``imaging.nifti``).

    Returns
    -------
    float
        Head CT: HU; chest: interquartile ranges above the lung median. The lowest value
        (-1024 or 0) when no brain or lung region is found.

    Raises
    ------
    InvalidParameterError
        The array does not have the task's shape, or ``layout`` is unknown.
    """
    task = normalise_task(task)
    image = np.asarray(volume_or_image, dtype=np.float32)
    if layout not in {"zyx", "xyz"}:
        raise InvalidParameterError("layout", layout, '"zyx" or "xyz"')
    if layout == "xyz":
        image = image.T  # (columns, rows[, slices]) -> ([slices,] rows, columns)
    if task is SyntheticTask.HEAD_CT:
        if image.ndim != 3:
            raise InvalidParameterError(
                "volume_or_image", image.shape, "(slices, rows, columns) in HU"
            )
        region = intracranial_mask(image)
        calcium = ndimage.binary_dilation(
            image > _CALCIUM_HU, structure=np.ones((1, 5, 5), dtype=bool)
        )
        region &= ~calcium
        if not region.any():
            return -1024.0
        return float(ndimage.uniform_filter(image, (1, 3, 3))[region].max())
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise InvalidParameterError(
            "volume_or_image", image.shape, "(rows, columns) or (1, rows, columns)"
        )
    lungs = lung_field_mask(image)
    if not lungs.any():
        return 0.0
    values = image[lungs]
    spread = max(float(np.subtract(*np.percentile(values, [75, 25]))), 1.0)
    peak = float(ndimage.uniform_filter(image, 7)[lungs].max())
    return (peak - float(np.median(values))) / spread


def evaluate_baseline(
    task: SyntheticTask | str,
    n_studies: int,
    seed: int,
    *,
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
) -> BaselineReport:
    """AUC of :func:`baseline_score` on the studies ``write_dataset(task, n_studies, seed)`` writes.

    Parameters
    ----------
    task
        ``"head-ct"`` or ``"chest-xr"``.
    n_studies
        Number of studies; both classes must occur.
    seed
        Dataset seed.
    positive_fraction
        Fraction of studies with a finding.

    Returns
    -------
    BaselineReport
        The AUC overall and per finding, with the counts and the rule in words.

    Raises
    ------
    InvalidParameterError
        A parameter is out of range or a class would be empty.
    """
    task = normalise_task(task)
    abnormal = positive_indices(n_studies, seed, positive_fraction)
    scores, labels, findings = [], [], []
    for index in range(n_studies):
        truth = render_ground_truth(task, index, seed, positive=index in abnormal)
        scores.append(baseline_score(task, truth.image))
        labels.append(truth.label)
        findings.append(truth.finding)
    by_finding = {}
    normal = [n for n, f in enumerate(findings) if f is SyntheticFinding.NONE]
    for finding in sorted({f for f in findings if f is not SyntheticFinding.NONE}):
        chosen = normal + [n for n, f in enumerate(findings) if f is finding]
        by_finding[finding.value] = roc_auc(
            [labels[n] for n in chosen], [scores[n] for n in chosen]
        )
    report = BaselineReport(
        task=task.value,
        rule=_RULES[task],
        studies=n_studies,
        seed=seed,
        positives=sum(labels),
        negatives=n_studies - sum(labels),
        auc=roc_auc(labels, scores),
        auc_by_finding=by_finding,
    )
    logger.info("baseline %s: AUC %.3f on %d studies", task.value, report["auc"], n_studies)
    return report
