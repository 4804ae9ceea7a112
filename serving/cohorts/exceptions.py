"""Errors of research cohorts.

::

    CohortError (ServingError)
    ├── InvalidCohortQueryError(reason)      a query that cannot be run as given: HTTP 422
    └── CohortNotFoundError(cohort_id)       no such cohort, or not the caller's (also a
                                             NotFoundError): HTTP 404
"""

from __future__ import annotations

from core.exceptions import NotFoundError
from serving.exceptions import ServingError

__all__ = ["CohortError", "CohortNotFoundError", "InvalidCohortQueryError"]


class CohortError(ServingError):
    """Root of the research cohort errors."""


class InvalidCohortQueryError(CohortError):
    """A cohort query that cannot be run as given."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid cohort query: {reason}")
        self.reason = reason


class CohortNotFoundError(CohortError, NotFoundError):
    """No cohort of this ID that the caller may see (another researcher's is not found)."""

    def __init__(self, cohort_id: int | str) -> None:
        NotFoundError.__init__(self, "cohort", str(cohort_id))
        self.cohort_id = cohort_id
