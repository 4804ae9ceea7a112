"""Errors of training, under one root that is a :class:`core.exceptions.RadcloudError` (the CLI
reports every one cleanly).

::

    TrainingError
    ├── DataSourceError(source, reason)
    ├── TrainingRunError(run, reason)              a run ended without a trained model
    └── QualityBarError(metric, value, required)   (raised only when a caller demands the bar)
"""

from __future__ import annotations

from pathlib import Path

from core.exceptions import RadcloudError

__all__ = ["DataSourceError", "QualityBarError", "TrainingError", "TrainingRunError"]


class TrainingError(RadcloudError):
    """Root of training errors."""


class DataSourceError(TrainingError):
    """A training source cannot be read."""

    def __init__(self, source: Path | str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"training source {source}: {reason}")


class TrainingRunError(TrainingError):
    """A training run ended without a trained model (e.g. Ray Train returned no checkpoint)."""

    def __init__(self, run: str, reason: str) -> None:
        self.run, self.reason = run, reason
        super().__init__(f"training run {run}: {reason}")


class QualityBarError(TrainingError):
    """A trained model misses a required metric."""

    def __init__(self, metric: str, value: float, required: float) -> None:
        self.metric, self.value, self.required = metric, value, required
        super().__init__(f"{metric} = {value:.3f}, required at least {required:.3f}")
