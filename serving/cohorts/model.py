"""What a cohort is asked and what it answers (plain records; no database, no HTTP)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from serving.cohorts.exceptions import InvalidCohortQueryError

__all__ = [
    "AiFinding",
    "CohortAnswer",
    "CohortQuery",
    "CohortStudyRow",
    "HospitalCount",
    "LabelFinding",
    "normalise_finding",
]

_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # CS (PS3.5 6.2): upper case, digits, space, _


def normalise_finding(name: str) -> str:
    """``"Intracranial Hemorrhage"`` → ``"intracranial_hemorrhage"`` (as the training labels
    read them)."""
    return "_".join(name.strip().lower().replace("-", " ").split())


@dataclass(frozen=True)
class AiFinding:
    """An AI result that places a study in the cohort: a succeeded ``inference_results`` row of
    ``model`` (its name; any model when ``None``), critical when ``critical`` is given, with a
    score at or above ``min_score`` when given."""

    model: str | None = None
    critical: bool | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise InvalidCohortQueryError(f"min_score {self.min_score}: expected 0 to 1")
        if self.model is None and self.critical is None and self.min_score is None:
            raise InvalidCohortQueryError("an AI finding needs a model, critical or min_score")


@dataclass(frozen=True)
class LabelFinding:
    """A radiologist's label that places a study in the cohort: a ``labels`` row of
    ``finding`` (compared as :func:`normalise_finding`) saying it is ``present``; for
    ``present=False``, a row saying absent and none saying present."""

    finding: str
    present: bool = True

    def __post_init__(self) -> None:
        if not normalise_finding(self.finding):
            raise InvalidCohortQueryError("a label finding needs a name, e.g. haemorrhage")
        object.__setattr__(self, "finding", normalise_finding(self.finding))


@dataclass(frozen=True)
class CohortQuery:
    """A cohort: studies of every hospital of this deployment that match all given criteria.

    ``modality`` is one of the study's modalities (DICOM Modality, e.g. ``CT``);
    ``body_part`` a BodyPartExamined of one of its series (read from the archive);
    ``study_date_from`` / ``study_date_to`` bound the original StudyDate, both inclusive.
    """

    modality: str | None = None
    body_part: str | None = None
    study_date_from: dt.date | None = None
    study_date_to: dt.date | None = None
    ai_finding: AiFinding | None = None
    label: LabelFinding | None = None

    def __post_init__(self) -> None:
        for name in ("modality", "body_part"):
            value = getattr(self, name)
            if value is None:
                continue
            value = value.strip().upper()
            if not _CODE.match(value):
                raise InvalidCohortQueryError(f'{name} "{value}": expected a DICOM code string')
            object.__setattr__(self, name, value)
        if (
            self.study_date_from is not None
            and self.study_date_to is not None
            and self.study_date_from > self.study_date_to
        ):
            raise InvalidCohortQueryError(
                f"study date range {self.study_date_from} to {self.study_date_to} is empty"
            )
        if not any(
            (
                self.modality,
                self.body_part,
                self.study_date_from,
                self.study_date_to,
                self.ai_finding,
                self.label,
            )
        ):
            raise InvalidCohortQueryError("no criterion given: a cohort is never every study")

    def to_json(self) -> dict[str, Any]:
        """The query as stored with the cohort and recorded in the audit trail."""
        return {
            "modality": self.modality,
            "body_part": self.body_part,
            "study_date_from": self.study_date_from.isoformat() if self.study_date_from else None,
            "study_date_to": self.study_date_to.isoformat() if self.study_date_to else None,
            "ai_finding": asdict(self.ai_finding) if self.ai_finding else None,
            "label": asdict(self.label) if self.label else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CohortQuery:
        """The query :meth:`to_json` wrote."""

        def day(value: str | None) -> dt.date | None:
            return dt.date.fromisoformat(value) if value else None

        return cls(
            modality=data.get("modality"),
            body_part=data.get("body_part"),
            study_date_from=day(data.get("study_date_from")),
            study_date_to=day(data.get("study_date_to")),
            ai_finding=AiFinding(**data["ai_finding"]) if data.get("ai_finding") else None,
            label=LabelFinding(**data["label"]) if data.get("label") else None,
        )


@dataclass(frozen=True)
class HospitalCount:
    """One hospital's cell: ``count`` is ``None`` when suppressed, then ``shown`` reads
    ``"<k"``."""

    hospital: str
    count: int | None
    shown: str

    @property
    def suppressed(self) -> bool:
        """The exact count is withheld."""
        return self.count is None


@dataclass(frozen=True)
class CohortStudyRow:
    """A de-identified study of a cohort's list: nothing in it is a real identifier, and it
    does not name the hospital (the list would otherwise give the suppressed counts)."""

    study_instance_uid: str  # keyed, Pseudonymizer("research").uid
    patient_pseudonym: str
    study_date: str | None  # YYYYMMDD, shifted by the patient's date shift
    modality: str | None
    body_part: str | None
    finding: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortAnswer:
    """A cohort as its owner sees it: counts per hospital with small cells suppressed, the
    total (``None`` when suppressed), and the de-identified study list (empty with
    ``list_withheld`` set when the total is below the minimum cell size)."""

    cohort_id: int
    name: str | None
    query: CohortQuery
    created_by: str
    created_at: dt.datetime
    run_at: dt.datetime
    runs: int
    min_cell_size: int
    hospitals: tuple[HospitalCount, ...]
    total: int | None
    total_shown: str
    studies: tuple[CohortStudyRow, ...]
    list_withheld: str | None = None
