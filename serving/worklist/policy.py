"""The worklist's priority policy: classes, maximum waits and the one sort order.

Priority rule
-------------
Each study gets a *priority class* from its AI outcome, and each class a maximum wait
(settings ``worklist_max_wait_<class>_min``):

============  ============================================================  ============
class         when                                                          maximum wait
============  ============================================================  ============
``critical``  the model flagged a critical finding (score ≥ its threshold)  30 min
``urgent``    score ≥ ``worklist_urgent_score_fraction`` x threshold          120 min
``routine``   everything else, including AI pending and AI failed           480 min
============  ============================================================  ============

A study is *due* at ``ready time + maximum wait of its class``. The worklist is ordered by due
time, earliest first (earliest-deadline-first), then by AI score (highest first; no score last),
then by ready time (oldest first). :func:`priority_key` is the one definition of that order; the
SQL ``ORDER BY`` of :func:`serving.worklist.listing.list_worklist` and the simulator in
``benchmarks/worklist.py`` use it.

Why: strict "AI-flagged first" ordering reads flagged studies sooner but lets unflagged ones
starve whenever flags keep arriving (a published evaluation of AI-prioritised chest radiograph
reading cut the mean pneumothorax report time from 80 to 36 minutes but raised the worst case
from 890 to 1,293 minutes). Ordering by deadline keeps AI urgency (a critical study is due 450
minutes before a routine study that became ready at the same time, so it jumps the queue) while
a routine study can only be overtaken by studies that become due before it: once a study has
waited its class's maximum wait, nothing newer goes ahead of it. Its wait is thereby bounded by
its maximum wait whenever the readers keep up with the due studies, and it degrades gracefully
(like FIFO among overdue studies) when they do not. ``benchmarks/worklist.py`` measures it
against FIFO.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from core.exceptions import ConfigError

if TYPE_CHECKING:
    from core.config import Settings

__all__ = ["AiStatus", "PriorityClass", "WorklistPolicy", "classify", "priority_key"]


class PriorityClass(StrEnum):
    """How soon a study must be read (see the module docstring)."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"


class AiStatus(StrEnum):
    """Whether the AI outcome is known: pending, succeeded, or failed (read unaided)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class WorklistPolicy:
    """Maximum waits per class and the urgent score band.

    Parameters
    ----------
    max_wait_critical, max_wait_urgent, max_wait_routine
        Maximum wait of each class; critical ≤ urgent ≤ routine.
    urgent_score_fraction
        A score at or above this fraction of ``threshold`` (but not critical) is urgent.
    threshold
        The model's operating threshold; use :meth:`for_threshold` with the model card's.
    """

    max_wait_critical: dt.timedelta = dt.timedelta(minutes=30)
    max_wait_urgent: dt.timedelta = dt.timedelta(minutes=120)
    max_wait_routine: dt.timedelta = dt.timedelta(minutes=480)
    urgent_score_fraction: float = 0.6
    threshold: float = 0.5

    def __post_init__(self) -> None:
        waits = (self.max_wait_critical, self.max_wait_urgent, self.max_wait_routine)
        if min(waits) <= dt.timedelta(0) or list(waits) != sorted(waits):
            raise ConfigError(
                "RADCLOUD_WORKLIST_MAX_WAIT_*_MIN",
                [int(w.total_seconds() // 60) for w in waits],
                "positive minutes with critical ≤ urgent ≤ routine",
            )
        if not 0 < self.urgent_score_fraction <= 1:
            raise ConfigError(
                "RADCLOUD_WORKLIST_URGENT_SCORE_FRACTION",
                self.urgent_score_fraction,
                "a fraction in (0, 1]",
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> WorklistPolicy:
        """The policy configured by the ``worklist_*`` settings."""
        return cls(
            max_wait_critical=dt.timedelta(minutes=settings.worklist_max_wait_critical_min),
            max_wait_urgent=dt.timedelta(minutes=settings.worklist_max_wait_urgent_min),
            max_wait_routine=dt.timedelta(minutes=settings.worklist_max_wait_routine_min),
            urgent_score_fraction=settings.worklist_urgent_score_fraction,
            threshold=settings.worklist_default_threshold,
        )

    def for_threshold(self, threshold: float) -> WorklistPolicy:
        """This policy for a model whose operating threshold is ``threshold``."""
        return replace(self, threshold=threshold)

    @property
    def urgent_min_score(self) -> float:
        """The lowest score that makes a study urgent."""
        return self.urgent_score_fraction * self.threshold

    def max_wait(self, priority_class: PriorityClass | str) -> dt.timedelta:
        """The maximum wait of ``priority_class``."""
        return {
            PriorityClass.CRITICAL: self.max_wait_critical,
            PriorityClass.URGENT: self.max_wait_urgent,
            PriorityClass.ROUTINE: self.max_wait_routine,
        }[PriorityClass(priority_class)]

    def max_wait_minutes(self, priority_class: PriorityClass | str) -> float:
        """The maximum wait of ``priority_class`` in minutes."""
        return self.max_wait(priority_class).total_seconds() / 60


def classify(
    score: float | None, *, critical: bool, failed: bool, policy: WorklistPolicy
) -> PriorityClass:
    """The priority class of an AI outcome (a failed or missing outcome is routine)."""
    if failed:
        return PriorityClass.ROUTINE
    if critical:
        return PriorityClass.CRITICAL
    if score is not None and score >= policy.urgent_min_score:
        return PriorityClass.URGENT
    return PriorityClass.ROUTINE


_T = TypeVar("_T", dt.datetime, float)


def priority_key(due_at: _T, ai_score: float | None, ready_at: _T) -> tuple[_T, int, float, _T]:
    """Sort key of the worklist: earliest due first, then highest AI score, then oldest.

    Times are datetimes (the database) or minutes (the simulator); a study without a score
    sorts after those with one at the same due time.
    """
    return (due_at, int(ai_score is None), -(ai_score or 0.0), ready_at)
