"""Amending a signed report: a signed report is never altered, only followed by a new one.

An amendment is a new verified Comprehensive SR in the study (:func:`imaging.report_sr.
write_report_sr`) whose Predecessor Documents Sequence (PS3.3 C.17.2.3) references the SR it
amends, with the amending radiologist as author and the full amended text; the decisions on AI
findings and the added findings carry over from the report it amends. Its ``reports`` row is
appended in one transaction with the check that the report it amends is still the study's
latest: the rows of a study are its chain of versions, oldest first (the first is the signed
report, each later one amends the one before; rows are never updated,
:mod:`core.db.models`). As with signing, the SR is stored first and deleted again if the
transaction fails, so no SR claims a version that was not recorded.

Only a ``reported`` study (one with a signed report) can be amended; anything else is a
conflict (HTTP 409).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from core.db import Database, write_transaction
from core.db.models import ReadingStatus, Report, Study
from imaging.report_sr import AddedFindingItem, FindingDecisionItem, write_report_sr
from serving.exceptions import SignError, WorklistConflictError
from serving.reading._archive import ReadingArchive
from serving.reading.manifest import build_manifest

__all__ = ["AmendOutcome", "amend_report"]

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x5244414D  # "RDAM": PostgreSQL advisory lock serialising amendments


@dataclass(frozen=True)
class AmendOutcome:
    """What amending stored: the new SR, and the SR it amends."""

    study_instance_uid: str
    patient_id: str | None
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    amends_sr_sop_instance_uid: str


def amend_report(
    db: Database,
    archive: ReadingArchive,
    study_instance_uid: str,
    *,
    site_name: str,
    author: str,
    text: str,
) -> AmendOutcome:
    """Amend the signed report of a reported study (see the module's docstring).

    Raises
    ------
    SignError
        Empty text.
    WorklistConflictError
        The study is not reported (it has no signed report), or it was amended meanwhile.
    StudyNotOnWorklistError
        The study has no worklist item.
    """
    text = text.strip()
    if not text:
        raise SignError("the amended report text is empty")
    manifest = build_manifest(db, archive, study_instance_uid)
    reading = manifest.reading
    if reading["status"] != ReadingStatus.REPORTED or manifest.report is None:
        raise WorklistConflictError(
            study_instance_uid,
            f"a {reading['status']} study has no signed report to amend: sign it first",
            status=reading["status"],
            claimed_by=reading["claimed_by"],
            version=reading["version"],
        )
    previous_uid = manifest.report.sr_sop_instance_uid
    previous = archive.instance(previous_uid)
    findings = {f.result_id: f for f in manifest.findings}
    decided = {int(d["result_id"]): str(d["decision"]) for d in manifest.report.decisions}
    decisions = [
        FindingDecisionItem(
            label=finding.label,
            model_name=finding.model_name,
            model_version=finding.model_version,
            score=finding.score,
            critical=finding.critical,
            decision="confirmed" if decided[result_id] == "confirmed" else "rejected",
        )
        for result_id, finding in sorted(findings.items())
        if result_id in decided
    ]
    evidence = {
        uid: archive.instance(uid)
        for uid in (s.instances[0]["sop_instance_uid"] for s in manifest.series if s.instances)
    }
    for item in manifest.report.added:
        uid = str(item["sop_instance_uid"])
        if uid not in evidence:
            evidence[uid] = archive.instance(uid)
    added = [
        AddedFindingItem(
            str(item["label"]), evidence[str(item["sop_instance_uid"])], dict(item["region"])
        )
        for item in manifest.report.added
    ]
    sr = write_report_sr(
        list(evidence.values()),
        author=author,
        organization=site_name,
        text=text,
        decisions=decisions,
        added=added,
        previous_versions=[previous],
    )
    sr_id = archive.store(sr)
    try:
        with write_transaction(db, _LOCK_KEY) as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            ).one()
            latest = session.scalars(
                select(Report).where(Report.study_id == study.id).order_by(Report.id.desc())
            ).first()
            if latest is None or latest.sr_sop_instance_uid != previous_uid:
                raise WorklistConflictError(
                    study_instance_uid,
                    "the report was amended meanwhile: amend the latest version",
                    status=reading["status"],
                    claimed_by=reading["claimed_by"],
                    version=reading["version"],
                )
            session.add(
                Report(
                    study_id=study.id,
                    author=author,
                    text=text,
                    decisions=list(latest.decisions),
                    added=list(latest.added),
                    sr_sop_instance_uid=str(sr.SOPInstanceUID),
                    sr_series_instance_uid=str(sr.SeriesInstanceUID),
                )
            )
    except Exception:
        archive.delete(sr_id)
        raise
    logger.info(
        "report of study %s amended by %s: SR %s amends %s",
        study_instance_uid,
        author,
        sr.SOPInstanceUID,
        previous_uid,
    )
    return AmendOutcome(
        study_instance_uid,
        manifest.patient_id,
        str(sr.SOPInstanceUID),
        str(sr.SeriesInstanceUID),
        previous_uid,
    )
