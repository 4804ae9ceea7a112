"""Verifying a model on fresh synthetic studies, through serving's own inference path.

:func:`verify_model` draws studies from :mod:`imaging.synthetic` (a seed training never
uses), turns each into what serving sees (DICOM instances → :func:`imaging.volume.load_series`)
and runs exactly the code the triage pipeline runs: :func:`serving.inference.prepare` (the
card's pre-processing, :mod:`models.preprocessing`), :meth:`ModelRunner.predict` on the
serving backend and :func:`serving.inference.interpret` (study score, calibration, operating
threshold, the lesion mask back on the source grid). It reports study-level AUC, sensitivity
and specificity at the card's threshold and, for segmenters, the lesion Dice on positives
(source grid), each with a stratified percentile bootstrap 95 % interval.

Floors (:func:`floors`): a model passes when each measured figure reaches its card's figure
minus three standard errors of a set of this size, so that a sound model fails about once in
a thousand runs per figure while a broken one (a corrupted bundle, pre-processing that drifted
from training) fails at once:

- AUC: the Hanley-McNeil (1982) standard error at the card's AUC for ``positives`` and
  ``negatives`` studies;
- sensitivity, specificity: the binomial standard error ``sqrt(p (1 - p) / n)`` at the card's
  value, ``p`` taken as at most 0.95 (so a card's 1.0 still allows a miss);
- Dice: the standard error of the mean, ``sd / sqrt(positives)``, with the per-study standard
  deviation ``sd`` measured on this set (at least 0.1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from imaging.synthetic import dice, generate_study, positive_indices, roc_auc
from imaging.volume import load_series
from models.card import ModelCard, Task
from models.registry import RegisteredModel
from serving.inference import Backend, ModelRunner, interpret, prepare

__all__ = [
    "DEFAULT_SEED",
    "FLOOR_STANDARD_ERRORS",
    "Estimate",
    "StudyCheck",
    "Verification",
    "floors",
    "verify_model",
]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 20_261_205  # training uses 0, the demo 1000 to 1 001 000
FLOOR_STANDARD_ERRORS = 3.0
_RATE_CAP = 0.95
_MIN_DICE_SD = 0.1
_SYNTHETIC_TASKS = {
    Task.HEAD_CT_TRIAGE: "head-ct",
    Task.HEAD_CT_LESION_SEG: "head-ct",
    Task.CHEST_XR_TRIAGE: "chest-xr",
}


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its bootstrap 95 % interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class StudyCheck:
    """One verification study and what the model said about it."""

    index: int
    label: int
    finding: str
    score: float
    raw_score: float | None
    critical: bool
    dice: float | None = None


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_model` measured, the floors and whether the model reaches them."""

    name: str
    version: int
    seed: int
    threshold: float
    calibrated: bool
    studies: list[StudyCheck]
    auc: Estimate
    sensitivity: Estimate
    specificity: Estimate
    dice: Estimate | None
    floors: dict[str, float] = field(default_factory=dict)

    @property
    def positives(self) -> int:
        """Studies with a finding."""
        return sum(s.label for s in self.studies)

    @property
    def negatives(self) -> int:
        """Studies without a finding."""
        return len(self.studies) - self.positives

    def measured(self) -> dict[str, Estimate]:
        """The figures by name (``auc``, ``sensitivity``, ``specificity``, ``dice``)."""
        figures = {
            "auc": self.auc,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
        }
        return figures | ({"dice": self.dice} if self.dice is not None else {})

    @property
    def failures(self) -> list[str]:
        """What fails: each figure below its floor ("name value < floor"; a NaN is below any
        floor), and studies without a finite score."""
        measured = self.measured()
        found = [
            f"{name} {measured[name].value:.3f} < floor {floor:.3f}"
            for name, floor in self.floors.items()
            if name in measured and not measured[name].value >= floor
        ]
        unscored = sum(not math.isfinite(s.score) for s in self.studies)
        if unscored:
            found.append(f"{unscored} of {len(self.studies)} studies have no finite score")
        return found

    def to_json(self) -> dict[str, object]:
        """The figures, floors and every study's score (``radcloud models verify --save``: the
        worklist simulator draws real scores from it)."""
        return {
            "name": self.name,
            "version": self.version,
            "seed": self.seed,
            "threshold": self.threshold,
            "calibrated": self.calibrated,
            "synthetic": True,
            "measured": {k: asdict(v) for k, v in self.measured().items()},
            "floors": self.floors,
            "passed": self.passed,
            "studies": [asdict(s) for s in self.studies],
        }

    @property
    def passed(self) -> bool:
        """Whether every figure reaches its floor."""
        return not self.failures


def _hanley_mcneil(auc: float, positives: int, negatives: int) -> float:
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    variance = (
        auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def _rate_error(rate: float, count: int) -> float:
    capped = min(rate, _RATE_CAP)
    return math.sqrt(capped * (1.0 - capped) / count)


def floors(
    card: ModelCard, positives: int, negatives: int, dice_sd: float | None = None
) -> dict[str, float]:
    """The lowest figures a sound model with ``card`` reaches on a set of this size.

    Each floor is the card's figure minus :data:`FLOOR_STANDARD_ERRORS` standard errors (see
    the module docstring); a figure the card does not have gets no floor.

    Parameters
    ----------
    card
        The model's card (its ``metrics``).
    positives, negatives
        Studies with and without a finding in the set.
    dice_sd
        The per-study Dice standard deviation measured on the set (segmenters).
    """
    metrics, z = card.metrics, FLOOR_STANDARD_ERRORS
    found: dict[str, float] = {}
    if metrics.auc is not None and positives and negatives:
        found["auc"] = metrics.auc - z * _hanley_mcneil(metrics.auc, positives, negatives)
    if metrics.sensitivity is not None and positives:
        found["sensitivity"] = metrics.sensitivity - z * _rate_error(metrics.sensitivity, positives)
    if metrics.specificity is not None and negatives:
        found["specificity"] = metrics.specificity - z * _rate_error(metrics.specificity, negatives)
    if metrics.dice is not None and dice_sd is not None and positives:
        sd = max(dice_sd, _MIN_DICE_SD)
        found["dice"] = metrics.dice - z * sd / math.sqrt(positives)
    return found


def _bootstrap(
    statistic: Callable[[np.ndarray], float],
    labels: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Percentile 95 % interval, resampling positives and negatives separately."""
    groups = [np.flatnonzero(labels == value) for value in (0, 1)]
    values = []
    for _ in range(resamples):
        chosen = np.concatenate([rng.choice(g, size=g.size) for g in groups if g.size])
        values.append(statistic(chosen))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _estimate(
    statistic: Callable[[np.ndarray], float],
    labels: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> Estimate:
    value = statistic(np.arange(labels.size))
    low, high = _bootstrap(statistic, labels, resamples, rng)
    return Estimate(value, low, high)


def _summarise(
    model: RegisteredModel,
    seed: int,
    checks: Sequence[StudyCheck],
    threshold: float,
    resamples: int,
) -> Verification:
    labels = np.array([c.label for c in checks])
    scores = np.array([c.score for c in checks])
    critical = np.array([c.critical for c in checks])
    rng = np.random.default_rng(seed)

    def auc(rows: np.ndarray) -> float:
        return roc_auc(labels[rows], scores[rows])

    def sensitivity(rows: np.ndarray) -> float:
        positive = rows[labels[rows] == 1]
        return float(critical[positive].mean())

    def specificity(rows: np.ndarray) -> float:
        negative = rows[labels[rows] == 0]
        return float((~critical[negative]).mean())

    dice_values = [c.dice for c in checks if c.label == 1 and c.dice is not None]
    dice = None
    dice_sd = None
    if dice_values:
        per_study = np.array(dice_values)
        ones = np.ones(per_study.size, dtype=int)
        dice = _estimate(lambda rows: float(per_study[rows].mean()), ones, resamples, rng)
        dice_sd = float(per_study.std(ddof=1)) if per_study.size > 1 else None
    positives = int(labels.sum())
    return Verification(
        name=model.name,
        version=model.version,
        seed=seed,
        threshold=threshold,
        calibrated=model.card.calibration is not None,
        studies=list(checks),
        auc=_estimate(auc, labels, resamples, rng),
        sensitivity=_estimate(sensitivity, labels, resamples, rng),
        specificity=_estimate(specificity, labels, resamples, rng),
        dice=dice,
        floors=floors(model.card, positives, labels.size - positives, dice_sd),
    )


def verify_model(
    model: RegisteredModel,
    *,
    studies: int = 100,
    seed: int = DEFAULT_SEED,
    positive_fraction: float = 0.5,
    backend: Backend | str = Backend.ONNX,
    device: str = "cpu",
    resamples: int = 1000,
    on_study: Callable[[int, int], None] | None = None,
) -> Verification:
    """Score ``model`` on fresh synthetic studies through serving's inference path.

    Parameters
    ----------
    model
        The registry version (it needs an operating threshold, as serving does).
    studies
        How many studies to draw (at least 4).
    seed
        Their dataset seed (default: one no training run uses).
    positive_fraction
        The share of studies with a finding (exactly ``round(studies * fraction)``).
    backend, device
        How to run the model (:class:`serving.inference.ModelRunner`).
    resamples
        Bootstrap resamples for the intervals.
    on_study
        Called with (studies done, studies in all) after each study.

    Returns
    -------
    Verification
        The figures with intervals, the floors and whether they are reached.

    Raises
    ------
    ValueError
        When the model has no threshold, ``studies`` is below 4, or the set lacks a class.
    """
    card = model.card
    if card.threshold is None:
        raise ValueError(f"model {card.name} has no operating threshold: nothing to verify")
    if studies < 4:
        raise ValueError(f"studies={studies}: expected at least 4 (two of each class)")
    positive = positive_indices(studies, seed, positive_fraction)
    if not 0 < len(positive) < studies:
        raise ValueError(
            f"positive_fraction {positive_fraction} of {studies} studies gives "
            f"{len(positive)} positives: expected both classes"
        )
    runner = ModelRunner(model, backend, device)
    task = _SYNTHETIC_TASKS[card.task]
    checks = []
    for index in range(studies):
        study = generate_study(task, index, seed, positive=index in positive)
        prepared = prepare(card, load_series(study.datasets))
        logits = runner.predict(prepared.array[np.newaxis])[0]
        output = interpret(card, prepared, logits)
        lesion_dice = (
            dice(output.mask, study.mask) if output.mask is not None and study.label else None
        )
        checks.append(
            StudyCheck(
                index=index,
                label=study.label,
                finding=str(study.finding),
                score=output.score,
                raw_score=output.raw_score,
                critical=output.critical,
                dice=lesion_dice,
            )
        )
        if on_study is not None:
            on_study(index + 1, studies)
    verification = _summarise(model, seed, checks, card.threshold.value, resamples)
    logger.info(
        "verified %s v%d on %d studies (seed %d): AUC %s%s",
        model.name,
        model.version,
        studies,
        seed,
        verification.auc,
        "" if verification.passed else "; below floor: " + ", ".join(verification.failures),
    )
    return verification
