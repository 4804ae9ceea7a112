"""Errors of training.

::

    TrainingError
    ├── DataSourceError(source, reason)
    └── QualityBarError(metric, value, required)   (raised only when a caller demands the bar)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataSourceError", "QualityBarError", "TrainingError"]


class TrainingError(Exception):
    """Root of training errors."""


class DataSourceError(TrainingError):
    """A training source cannot be read."""

    def __init__(self, source: Path | str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"training source {source}: {reason}")


class QualityBarError(TrainingError):
    """A trained model misses a required metric."""

    def __init__(self, metric: str, value: float, required: float) -> None:
        self.metric, self.value, self.required = metric, value, required
        super().__init__(f"{metric} = {value:.3f}, required at least {required:.3f}")
