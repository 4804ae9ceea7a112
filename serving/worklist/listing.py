"""The worklist listing: filters, a page in priority order, and the total count."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from core.db.models import Hospital, ReadingStatus, Study, WorklistItem, utcnow
from core.tenancy import HospitalScope
from serving._rows import copy_row
from serving.worklist.policy import PriorityClass

__all__ = ["WorklistEntry", "WorklistQuery", "list_worklist"]

_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


def _order_by() -> tuple[ColumnElement[Any], ...]:
    """:func:`priority_key` in SQL (plus the row id, so pages are stable)."""
    return (
        WorklistItem.due_at.asc().nulls_last(),
        WorklistItem.ai_score.desc().nulls_last(),
        Study.ready_at.asc().nulls_last(),
        WorklistItem.id.asc(),
    )


@dataclass(frozen=True)
class WorklistQuery:
    """Filters and page of a worklist listing (all optional).

    ``statuses`` defaults to unread and in progress; ``date_from``/``date_to`` (inclusive) match
    the study date, or the ready date for studies without one; ``q`` matches every word in the
    patient name or ID, accession number or study description (case-insensitive).
    """

    statuses: Sequence[ReadingStatus] = (ReadingStatus.UNREAD, ReadingStatus.IN_PROGRESS)
    modality: str | None = None
    hospital: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    q: str | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.modality is not None and not _MODALITY.match(self.modality.upper()):
            raise ValueError(f'modality "{self.modality}" is not a DICOM modality code')


@dataclass(frozen=True)
class WorklistEntry:
    """One row of the worklist: the study, its AI triage and its reading state."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_description: str | None
    study_date: str | None
    modalities: str | None
    hospital: str | None
    ready_at: dt.datetime | None
    waiting_minutes: float | None
    due_at: dt.datetime | None
    priority_class: str
    ai_score: float | None
    ai_threshold: float | None  # the lead model's operating threshold
    ai_calibrated: bool | None  # whether ai_score is a calibrated probability
    ai_status: str
    critical: bool
    status: ReadingStatus
    claimed_by: str | None
    version: int


def _like(value: str) -> str:
    escaped = value.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


def _filters(query: WorklistQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [WorklistItem.status.in_(list(query.statuses))]
    if query.modality:
        code = query.modality.upper()
        # ``studies.modalities`` is a backslash-separated value list, e.g. "CT\SR".
        conditions.append(
            or_(
                Study.modalities == code,
                Study.modalities.like(f"{code}\\%", escape="/"),
                Study.modalities.like(f"%\\{code}", escape="/"),
                Study.modalities.like(f"%\\{code}\\%", escape="/"),
            )
        )
    if query.hospital:
        conditions.append(Hospital.name == query.hospital)
    if query.date_from or query.date_to:
        low, high = query.date_from or dt.date.min, query.date_to or dt.date.max
        start = dt.datetime.combine(low, dt.time.min, dt.UTC)
        end = dt.datetime.combine(high, dt.time.max, dt.UTC)
        conditions.append(
            or_(
                Study.study_date.between(low.strftime("%Y%m%d"), high.strftime("%Y%m%d")),
                and_(Study.study_date.is_(None), Study.ready_at.between(start, end)),
            )
        )
    for word in (query.q or "").split():
        pattern = _like(word)
        conditions.append(
            or_(
                *(
                    column.ilike(pattern, escape="/")
                    for column in (
                        Study.patient_name,
                        Study.patient_id,
                        Study.accession_number,
                        Study.study_description,
                    )
                )
            )
        )
    return conditions


def _base(query: WorklistQuery, scope: HospitalScope) -> Select[WorklistItem, Study, str]:
    return (
        select(WorklistItem, Study, Hospital.name)
        .join(Study, Study.id == WorklistItem.study_id)
        .outerjoin(Hospital, Hospital.id == Study.hospital_id)
        .where(scope.study_filter(), *_filters(query))
    )


def _waiting_minutes(item: WorklistItem, study: Study, now: dt.datetime) -> float | None:
    ready = study.ready_at
    if ready is None:
        return None
    until = now if item.status is ReadingStatus.UNREAD else (item.claimed_at or now)
    return round(max((until - ready).total_seconds(), 0.0) / 60, 1)


def list_worklist(
    session: Session,
    query: WorklistQuery,
    now: dt.datetime | None = None,
    *,
    scope: HospitalScope,
) -> tuple[list[WorklistEntry], int]:
    """The page of the worklist ``query`` asks for, in priority order, and the total count,
    both of studies in ``scope`` only (a ``hospital`` filter outside it matches nothing).

    ``waiting_minutes`` is the time since the study became ready (until it was claimed, for
    claimed and reported studies).
    """
    now = now or utcnow()
    base = _base(query, scope)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = session.execute(base.order_by(*_order_by()).limit(query.limit).offset(query.offset))
    entries = [
        copy_row(
            WorklistEntry,
            item,
            study,
            hospital=hospital,
            waiting_minutes=_waiting_minutes(item, study, now),
            critical=item.priority_class == PriorityClass.CRITICAL,
        )
        for item, study, hospital in rows
    ]
    return entries, total
