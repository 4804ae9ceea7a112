"""What the viewer needs to open a study: its image series, the AI findings, the reading state
and the signed report.

The AI findings are read from the triage's SR (:func:`imaging.sr.read_findings`), their slices
from the SEG's references to the source instances; they are unverified until a report is
signed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from core.archive import ArchiveId
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, Report
from core.exceptions import NotFoundError
from imaging.sr import STUDY_TRACKING_ID, read_findings
from serving._rows import copy_row
from serving.reading._archive import ReadingArchive
from serving.reading.masks import frames_by_source
from serving.reading.series import ViewerSeries, viewer_series
from serving.studies import study_by_uid
from serving.worklist import Worklist

__all__ = ["AiFinding", "Manifest", "SignedReport", "build_manifest"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AiFinding:
    """An AI finding of one inference result (one per result: triage reports at most one)."""

    result_id: int
    model_name: str
    model_version: str
    label: str
    score: float | None
    critical: bool
    threshold: float | None
    series_instance_uid: str | None
    seg_series_instance_uid: str | None
    slices: list[int]
    verified: bool = False


@dataclass(frozen=True)
class SignedReport:
    """A signed report as the viewer shows it."""

    signed_by: str
    signed_at: dt.datetime
    text: str
    sr_sop_instance_uid: str
    decisions: list[dict[str, Any]]
    added: list[dict[str, Any]]


@dataclass(frozen=True)
class Manifest:
    """What the viewer needs to open a study."""

    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    accession_number: str | None
    study_description: str | None
    study_date: str | None
    modalities: str | None
    hospital: str | None
    reading: dict[str, Any]
    series: list[ViewerSeries]
    findings: list[AiFinding]
    report: SignedReport | None
    patient_key: str | None = None  # the radcloud patient key (core.identity), for priors


@dataclass(frozen=True)
class _ResultRow:
    id: int
    model_name: str
    model_version: str
    score: float | None
    critical: bool
    findings: dict[str, Any]


def build_manifest(db: Database, archive: ReadingArchive, study_instance_uid: str) -> Manifest:
    """The study's series, AI findings, reading state and report.

    Raises
    ------
    NotFoundError
        The study is unknown, or not (or no longer) in Orthanc.
    StudyNotOnWorklistError
        The study has no worklist item.
    """
    with db.session() as session:
        study = study_by_uid(session, study_instance_uid)
        results = session.scalars(
            select(InferenceResult)
            .where(
                InferenceResult.study_id == study.id,
                InferenceResult.status == InferenceStatus.SUCCEEDED,
            )
            .order_by(InferenceResult.created_at, InferenceResult.id)
        ).all()
        report = session.scalar(
            select(Report).where(Report.study_id == study.id).order_by(Report.id.desc())
        )
        signed = (
            copy_row(
                SignedReport,
                report,
                signed_by=report.author,
                decisions=list(report.decisions),
                added=list(report.added),
            )
            if report
            else None
        )
        head: dict[str, Any] = {
            "study_instance_uid": study_instance_uid,
            "patient_name": study.patient_name,
            "patient_id": study.patient_id,
            "accession_number": study.accession_number,
            "study_description": study.study_description,
            "study_date": study.study_date,
            "modalities": study.modalities,
            "hospital": study.hospital.name if study.hospital else None,
        }
        orthanc_id = study.orthanc_id
        rows = [copy_row(_ResultRow, r) for r in results]
    if orthanc_id is None:
        raise NotFoundError("study in Orthanc", study_instance_uid)
    series = viewer_series(archive, ArchiveId(orthanc_id))
    order = {
        i["sop_instance_uid"]: (s.series_instance_uid, k)
        for s in series
        for k, i in enumerate(s.instances)
    }
    findings = [
        finding
        for row in rows
        if (finding := _finding(archive, row, order=order, verified=signed is not None))
    ]
    state = Worklist(db).state(study_instance_uid)
    return Manifest(
        **head,
        reading={"status": state.status, "claimed_by": state.claimed_by, "version": state.version},
        series=series,
        findings=findings,
        report=signed,
    )


def _finding(
    archive: ReadingArchive,
    row: _ResultRow,
    *,
    order: dict[str, tuple[str, int]],
    verified: bool,
) -> AiFinding | None:
    """The finding the result's SR reports, or None (a result without one)."""
    result_id, found, critical, score = row.id, row.findings, row.critical, row.score
    sr_uid = found.get("sr_sop_instance_uid")
    groups = []
    if sr_uid:
        try:
            groups = [
                g
                for g in read_findings(archive.instance(sr_uid))
                if g.get("tracking_id") != STUDY_TRACKING_ID
            ]
        except NotFoundError:
            logger.warning("result %d: its SR %s is not in Orthanc", result_id, sr_uid)
    seg_uid = found.get("seg_series_instance_uid")
    if not groups and not critical:
        return None
    group = groups[0] if groups else {}
    slices: list[int] = []
    if seg_uid:
        try:
            sources = frames_by_source(archive.first_of_series(seg_uid))
            slices = sorted(
                order[uid][1] for uid, mask in sources.items() if uid in order and mask.any()
            )
        except NotFoundError:
            logger.warning("result %d: its SEG %s is not in Orthanc", result_id, seg_uid)
            seg_uid = None
    return AiFinding(
        result_id=result_id,
        model_name=row.model_name,
        model_version=row.model_version,
        label=str(group.get("finding") or group.get("tracking_id") or "finding"),
        score=group.get("score", score) if group.get("score") is not None else score,
        critical=critical or bool(group.get("critical")),
        threshold=found.get("threshold"),
        series_instance_uid=found.get("series_instance_uid"),
        seg_series_instance_uid=seg_uid,
        slices=slices,
        verified=verified,
    )
