"""Research cohorts (issue 15): a query across the hospitals of this deployment by modality,
body part, study date range and an AI finding or a radiologist's label, answered with counts per
hospital (small cells suppressed) and a de-identified study list the training pipeline exports
(``radcloud train --source cohort:ID``).

``model.py`` (the query and answer records), ``selection.py`` (the SQL), ``suppression.py``
(the minimum cell size rules), ``service.py`` (:class:`CohortService`: run, store, show,
audit), ``exceptions.py``.
"""

from serving.cohorts.exceptions import CohortError, CohortNotFoundError, InvalidCohortQueryError
from serving.cohorts.model import (
    AiFinding,
    CohortAnswer,
    CohortQuery,
    CohortStudyRow,
    HospitalCount,
    LabelFinding,
    normalise_finding,
)
from serving.cohorts.service import CohortService, shifted_date
from serving.cohorts.suppression import SuppressedCounts, suppress

__all__ = [
    "AiFinding",
    "CohortAnswer",
    "CohortError",
    "CohortNotFoundError",
    "CohortQuery",
    "CohortService",
    "CohortStudyRow",
    "HospitalCount",
    "InvalidCohortQueryError",
    "LabelFinding",
    "SuppressedCounts",
    "normalise_finding",
    "shifted_date",
    "suppress",
]
