"""Studies as the API sees them: the lookup by UID, their AI results, asking for a reprocess."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import Study
from core.exceptions import NotFoundError

__all__ = ["study_by_uid"]


def study_by_uid(session: Session, uid: str) -> Study:
    """The study ``uid`` of the application database.

    Raises
    ------
    NotFoundError
        No such study.
    """
    study: Study | None = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        raise NotFoundError("study", uid)
    return study
