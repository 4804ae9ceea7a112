"""The SQL of a cohort: the studies of every hospital matching modality, study date range,
AI finding and radiologist label (the body part is the archive's, :mod:`serving.cohorts.service`).

``studies.modalities`` holds the study's modalities joined by backslashes (as
ModalitiesInStudy, PS3.4 C.6.2.1.2): a modality matches one of them exactly. Studies without an
owning hospital are never in a cohort.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, exists, func, not_, select

from core.db.models import Hospital, InferenceResult, InferenceStatus, Label, Study
from serving.cohorts.model import AiFinding, CohortQuery, LabelFinding

__all__ = ["matching_studies"]


def _label_name() -> ColumnElement[str]:
    """``labels.finding`` normalised in SQL as :func:`serving.cohorts.model.normalise_finding`
    (lower case, hyphens and spaces to underscores; runs of spaces are rare in stored names)."""
    return func.lower(func.replace(func.replace(func.trim(Label.finding), "-", "_"), " ", "_"))


def _labelled(label: LabelFinding) -> ColumnElement[bool]:
    def rows(present: bool) -> ColumnElement[bool]:
        return exists().where(
            Label.study_id == Study.id,
            _label_name() == label.finding,
            Label.present.is_(present),
        )

    if label.present:
        return rows(True)
    return and_(rows(False), not_(rows(True)))


def _ai(finding: AiFinding) -> ColumnElement[bool]:
    conditions = [
        InferenceResult.study_id == Study.id,
        InferenceResult.status == InferenceStatus.SUCCEEDED,
    ]
    if finding.model is not None:
        conditions.append(InferenceResult.model_name == finding.model)
    if finding.critical is not None:
        conditions.append(InferenceResult.critical.is_(finding.critical))
    if finding.min_score is not None:
        conditions.append(InferenceResult.score >= finding.min_score)
    return exists().where(*conditions)


def matching_studies(query: CohortQuery) -> Select[Study, str]:
    """``(study, hospital name)`` of every study matching ``query`` but for the body part, in
    Study Instance UID order."""
    statement = select(Study, Hospital.name).join(Hospital, Study.hospital_id == Hospital.id)
    if query.modality is not None:
        padded = func.coalesce("\\" + func.upper(Study.modalities) + "\\", "")
        statement = statement.where(padded.contains(f"\\{query.modality}\\", autoescape=True))
    if query.study_date_from is not None:
        statement = statement.where(Study.study_date >= query.study_date_from.strftime("%Y%m%d"))
    if query.study_date_to is not None:
        statement = statement.where(Study.study_date <= query.study_date_to.strftime("%Y%m%d"))
    if query.ai_finding is not None:
        statement = statement.where(_ai(query.ai_finding))
    if query.label is not None:
        statement = statement.where(_labelled(query.label))
    return statement.order_by(Study.study_instance_uid)
