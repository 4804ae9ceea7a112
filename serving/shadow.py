"""Shadow evaluation: a staged version run on live studies beside production, unseen, and its
comparison with production on the same studies.

:func:`start_shadow` and :func:`stop_shadow` (``radcloud models shadow NAME VERSION|--stop``,
``POST /api/models/{name}/shadow``; audited, 110100 Application Activity on the model) set the
registry's shadow version of a model, one at a time. The triage workers read it when a study's
production results are stored and run it on the same input (:mod:`serving.triage.shadow`),
recording ``shadow_results`` rows only: the worklist, notifications and the archive never see a
shadow.

:func:`compare_shadow` (``radcloud models compare NAME``, ``GET /api/models/{name}/compare``)
reports, on the studies with both results: agreement of the positive calls, AUC, sensitivity and
specificity of each version against the radiologist-confirmed labels of signed reports (a study
with a label row present is positive, one whose rows are all absent negative) and against any
other truth given (the synthetic ground truth of a demo's studies: :func:`read_truth`), the
latency and worker CPU time per study; for plots (the web app's Models page), each truth's ROC
curve of each version and every study's pair of scores. The figures are a pure function of the
rows (:func:`comparison`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from core.audit import AuditTrail
from core.db import Database
from core.db.models import Label, ShadowResult, Study
from core.security import Actor
from imaging.exceptions import InvalidParameterError
from imaging.synthetic import roc_auc
from imaging.synthetic import roc_curve as curve
from models.registry import ModelRegistry
from serving.promotion import audited_model_change
from serving.triage.shadow import ShadowStatus

__all__ = [
    "Agreement",
    "Figures",
    "ShadowComparison",
    "ShadowPair",
    "compare_shadow",
    "comparison",
    "read_truth",
    "roc_curve",
    "start_shadow",
    "stop_shadow",
]

logger = logging.getLogger(__name__)

RADIOLOGIST = "radiologist"
"""The truth of signed reports' labels, always compared against."""


def start_shadow(
    registry: ModelRegistry, audit: AuditTrail, name: str, version: int, *, actor: Actor
) -> int | None:
    """Run ``version`` of ``name`` in shadow from the next study on (audited); return the
    shadow version it replaces, if any.

    Raises
    ------
    ModelNotFoundError
        No such model or version.
    StageError
        ``version`` is production.
    """
    with audited_model_change(audit, name, actor, "shadow started", version=version) as change:
        before = registry.set_shadow(name, version)
        change.detail["replaced"] = before.version if before else None
    logger.info("%s v%d in shadow (by %s)", name, version, actor.name)
    return before.version if before else None


def stop_shadow(
    registry: ModelRegistry, audit: AuditTrail, name: str, *, actor: Actor
) -> int | None:
    """Stop ``name``'s shadow (audited); return the version that was in shadow, if any."""
    with audited_model_change(audit, name, actor, "shadow stopped") as change:
        before = registry.set_shadow(name, None)
        change.detail["version"] = before.version if before else None
    logger.info("%s shadow stopped (by %s)", name, actor.name)
    return before.version if before else None


# -- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowPair:
    """One study's shadow and production figures (a succeeded ``shadow_results`` row)."""

    study_instance_uid: str
    score: float
    positive: bool
    production_score: float
    production_positive: bool
    latency_ms: float
    cpu_ms: float
    production_latency_ms: float | None = None
    production_cpu_ms: float | None = None
    mask_dice: float | None = None


@dataclass(frozen=True)
class Figures:
    """One version against one truth, on the studies that truth knows."""

    studies: int
    positives: int
    auc: float | None  # None: one class is absent
    sensitivity: float | None  # None: no positive study
    specificity: float | None  # None: no negative study


@dataclass(frozen=True)
class Agreement:
    """How often the shadow's positive call is production's."""

    fraction: float | None  # None: no study
    both_positive: int
    both_negative: int
    only_shadow: int
    only_production: int


@dataclass
class ShadowComparison:
    """What ``radcloud models compare`` reports (see the module docstring)."""

    name: str
    versions: list[str]  # shadow versions of the pairs
    production_versions: list[str]
    studies: int
    failed: int
    shed: int
    agreement: Agreement
    mask_dice_mean: float | None
    truths: dict[str, dict[str, Figures]] = field(default_factory=dict)  # truth → version → ...
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    cpu_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # truth → version → ROC points (false positive rate, true positive rate), where the truth
    # has both classes
    roc: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    pairs: list[ShadowPair] = field(default_factory=list)  # every study's, for a scatter

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


def _figures(truth: Sequence[bool], scores: Sequence[float], calls: Sequence[bool]) -> Figures:
    labels = np.asarray(truth, dtype=bool)
    called = np.asarray(calls, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return Figures(
        studies=len(labels),
        positives=positives,
        auc=roc_auc(labels, np.asarray(scores, dtype=float)) if positives and negatives else None,
        sensitivity=float((called & labels).sum() / positives) if positives else None,
        specificity=float((~called & ~labels).sum() / negatives) if negatives else None,
    )


def roc_curve(truth: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, float]]:
    """The ROC curve's corners, from (0, 0) to (1, 1), as (false positive rate, true positive
    rate) points for a plot (:func:`imaging.synthetic.roc_curve`: tied scores move together, so
    the area under these points is :func:`~imaging.synthetic.roc_auc`).

    Raises
    ------
    InvalidParameterError
        ``truth`` lacks a positive or a negative study.
    """
    labels = np.asarray(truth, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise InvalidParameterError(
            "truth", f"{positives} positive, {negatives} negative", "both classes"
        )
    fpr, tpr, _ = curve(labels, scores)
    return [(float(x), float(y)) for x, y in zip(fpr, tpr, strict=True)]


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    known = np.asarray([v for v in values if v is not None], dtype=float)
    if known.size == 0:
        return {"p50": None, "p95": None, "mean": None}
    return {
        "p50": float(np.percentile(known, 50)),
        "p95": float(np.percentile(known, 95)),
        "mean": float(known.mean()),
    }


def comparison(
    name: str,
    pairs: Sequence[ShadowPair],
    truths: Mapping[str, Mapping[str, bool]],
    *,
    versions: Sequence[str] = (),
    production_versions: Sequence[str] = (),
    failed: int = 0,
    shed: int = 0,
) -> ShadowComparison:
    """The figures of :class:`ShadowComparison` from the studies' pairs.

    Parameters
    ----------
    name
        The model.
    pairs
        One per study with both a shadow and a production result.
    truths
        Truth name → Study Instance UID → positive; a truth is compared on the pairs it knows.
    versions, production_versions, failed, shed
        Reported as given.
    """
    same = [p.positive == p.production_positive for p in pairs]
    agreement = Agreement(
        fraction=float(np.mean(same)) if pairs else None,
        both_positive=sum(p.positive and p.production_positive for p in pairs),
        both_negative=sum(not p.positive and not p.production_positive for p in pairs),
        only_shadow=sum(p.positive and not p.production_positive for p in pairs),
        only_production=sum(not p.positive and p.production_positive for p in pairs),
    )
    dices = [p.mask_dice for p in pairs if p.mask_dice is not None]
    result = ShadowComparison(
        name=name,
        versions=sorted(set(versions)),
        production_versions=sorted(set(production_versions)),
        studies=len(pairs),
        failed=failed,
        shed=shed,
        agreement=agreement,
        mask_dice_mean=float(np.mean(dices)) if dices else None,
        latency_ms={
            "shadow": _spread([p.latency_ms for p in pairs]),
            "production": _spread([p.production_latency_ms for p in pairs]),
        },
        cpu_ms={
            "shadow": _spread([p.cpu_ms for p in pairs]),
            "production": _spread([p.production_cpu_ms for p in pairs]),
        },
        pairs=list(pairs),
    )
    for truth_name, truth in truths.items():
        known = [p for p in pairs if p.study_instance_uid in truth]
        labels = [truth[p.study_instance_uid] for p in known]
        result.truths[truth_name] = {
            "shadow": _figures(labels, [p.score for p in known], [p.positive for p in known]),
            "production": _figures(
                labels,
                [p.production_score for p in known],
                [p.production_positive for p in known],
            ),
        }
        if any(labels) and not all(labels):
            result.roc[truth_name] = {
                "shadow": roc_curve(labels, [p.score for p in known]),
                "production": roc_curve(labels, [p.production_score for p in known]),
            }
    return result


def _radiologist_truth(db: Database, study_ids: Sequence[int]) -> dict[int, bool]:
    """Study id → positive, from the ``labels`` of signed reports: positive when a row says a
    finding is present, negative when every row says absent; studies without rows are left out."""
    found: dict[int, bool] = {}
    with db.session() as session:
        for study_id, present in session.execute(
            select(Label.study_id, Label.present).where(Label.study_id.in_(study_ids))
        ):
            found[study_id] = found.get(study_id, False) or bool(present)
    return found


def compare_shadow(
    db: Database,
    name: str,
    *,
    version: str | None = None,
    truth: Mapping[str, bool] | None = None,
    truth_name: str = "synthetic",
) -> ShadowComparison:
    """Compare the runs of one shadow version of ``name`` with production on the same studies.

    Parameters
    ----------
    db
        The application database.
    name
        The model.
    version
        The shadow version (default: that of the newest shadow result).
    truth
        Another truth (Study Instance UID → positive), e.g. :func:`read_truth` of the synthetic
        dataset a demo pushed, reported as ``truth_name``.
    """
    with db.session() as session:
        found = session.execute(
            select(ShadowResult, Study.study_instance_uid)
            .join(Study, Study.id == ShadowResult.study_id)
            .where(ShadowResult.model_name == name)
            .order_by(ShadowResult.id)
        ).all()
        session.expunge_all()
    if version is None and found:
        version = found[-1][0].model_version
    rows = [(row, uid) for row, uid in found if row.model_version == version]
    done = [(row, pair) for row, uid in rows if (pair := _pair(row, uid)) is not None]
    pairs = [pair for _, pair in done]
    by_id = _radiologist_truth(db, [row.study_id for row, _ in done])
    truths: dict[str, Mapping[str, bool]] = {
        RADIOLOGIST: {
            pair.study_instance_uid: by_id[row.study_id]
            for row, pair in done
            if row.study_id in by_id
        }
    }
    if truth is not None:
        truths[truth_name] = truth
    return comparison(
        name,
        pairs,
        truths,
        versions=[row.model_version for row, _ in done],
        production_versions=[row.production_version for row, _ in done],
        failed=sum(row.status == ShadowStatus.FAILED for row, _ in rows),
        shed=sum(row.status == ShadowStatus.SHED for row, _ in rows),
    )


def _pair(row: ShadowResult, study_instance_uid: str) -> ShadowPair | None:
    """The pair of a succeeded row with both calls (None otherwise)."""
    if (
        row.status != ShadowStatus.SUCCEEDED
        or row.score is None
        or row.positive is None
        or row.production_score is None
        or row.production_positive is None
    ):
        return None
    return ShadowPair(
        study_instance_uid=study_instance_uid,
        score=row.score,
        positive=row.positive,
        production_score=row.production_score,
        production_positive=row.production_positive,
        latency_ms=row.latency_ms or 0.0,
        cpu_ms=row.cpu_ms or 0.0,
        production_latency_ms=row.production_latency_ms,
        production_cpu_ms=row.production_cpu_ms,
        mask_dice=(row.findings or {}).get("mask_dice"),
    )


def read_truth(path: Path) -> dict[str, bool]:
    """Study Instance UID → positive from a labels CSV with ``study_instance_uid`` and ``label``
    columns (the ``labels.csv`` of a synthetic dataset: ``radcloud synth``)."""
    with path.open(newline="") as handle:
        return {
            row["study_instance_uid"]: str(row["label"]).strip() not in ("0", "", "false", "False")
            for row in csv.DictReader(handle)
        }
