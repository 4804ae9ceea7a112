"""Signing a report: the radiologist's verified SR in Orthanc, then in one transaction the
study ``reported``, the report row and the labels training reads.

The SR (:func:`imaging.report_sr.write_report_sr`: author, report text, per AI finding agreement
or not, findings the AI missed with their image region) is stored first; if the transaction
fails (the study moved on meanwhile), the SR is deleted from Orthanc again, so no SR claims a
report that was not recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from sqlalchemy.orm import Session

from core.db import Database
from core.db.models import ReadingStatus, Report, Study
from imaging.report_sr import AddedFindingItem, FindingDecisionItem, write_report_sr
from serving.exceptions import SignError, WorklistConflictError
from serving.reading._archive import ReadingArchive
from serving.reading.labels import AddedFinding, Decision, report_labels
from serving.reading.manifest import AiFinding, Manifest, build_manifest
from serving.worklist import ReadingState, Worklist

__all__ = ["SignOutcome", "sign_report"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignOutcome:
    """What signing stored."""

    state: ReadingState
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    labels: int


def sign_report(
    db: Database,
    archive: ReadingArchive,
    study_instance_uid: str,
    *,
    site_name: str,
    author: str,
    version: int,
    text: str,
    decisions: Sequence[Decision],
    added: Sequence[AddedFinding] = (),
) -> SignOutcome:
    """Sign the report of a study ``author`` holds (see the module's docstring).

    Raises
    ------
    SignError
        Empty text, a missing, repeated or unknown decision, or an added finding on an
        image that is not one of the study's.
    StudyNotOnWorklistError, WorklistConflictError, NotClaimantError
        The study is not ``author``'s in progress, or ``version`` is stale.
    """
    text = text.strip()
    if not text:
        raise SignError("the report text is empty")
    manifest = build_manifest(db, archive, study_instance_uid)
    _check_claim(study_instance_uid, manifest.reading, author, version)
    findings = {f.result_id: f for f in manifest.findings}
    chosen = _check_decisions(findings, decisions)
    images = {
        i["sop_instance_uid"]: s.series_instance_uid for s in manifest.series for i in s.instances
    }
    for item in added:
        if images.get(item.sop_instance_uid) != item.series_instance_uid:
            raise SignError(
                f'added finding "{item.label}": image {item.sop_instance_uid} is not in '
                f"series {item.series_instance_uid} of this study"
            )
    sr = _write_sr(
        archive,
        manifest,
        author,
        site_name,
        text=text,
        findings=findings,
        decisions=chosen,
        added=added,
    )
    sr_id = archive.store(sr)

    def record(session: Session, study: Study) -> None:
        session.add(
            Report(
                study_id=study.id,
                author=author,
                text=text,
                decisions=[{"result_id": d.result_id, "decision": d.decision} for d in chosen],
                added=[_added_json(a) for a in added],
                sr_sop_instance_uid=str(sr.SOPInstanceUID),
                sr_series_instance_uid=str(sr.SeriesInstanceUID),
            )
        )
        for label in report_labels(study.id, author, findings, chosen, added):
            session.add(label)

    try:
        reported = Worklist(db).report(
            study_instance_uid, user=author, version=version, also=record
        )
    except Exception:
        archive.delete(sr_id)
        raise
    count = len(chosen) + len(added)
    logger.info("study %s reported by %s: SR %s", study_instance_uid, author, sr.SOPInstanceUID)
    return SignOutcome(reported, str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), count)


def _write_sr(
    archive: ReadingArchive,
    manifest: Manifest,
    author: str,
    site_name: str,
    *,
    text: str,
    findings: dict[int, AiFinding],
    decisions: Sequence[Decision],
    added: Sequence[AddedFinding],
) -> hd.sr.ComprehensiveSR:
    """The signed SR, its evidence the first image of every series and the added findings'."""
    evidence = {
        uid: archive.instance(uid)
        for uid in (s.instances[0]["sop_instance_uid"] for s in manifest.series if s.instances)
    }
    for item in added:
        if item.sop_instance_uid not in evidence:
            evidence[item.sop_instance_uid] = archive.instance(item.sop_instance_uid)
    reviewed = [
        FindingDecisionItem(
            label=finding.label,
            model_name=finding.model_name,
            model_version=finding.model_version,
            score=finding.score,
            critical=finding.critical,
            decision=decision.decision,
        )
        for decision in decisions
        for finding in [findings[decision.result_id]]
    ]
    marked = [
        AddedFindingItem(item.label, evidence[item.sop_instance_uid], item.region) for item in added
    ]
    return write_report_sr(
        list(evidence.values()),
        author=author,
        organization=site_name,
        text=text,
        decisions=reviewed,
        added=marked,
    )


def _check_claim(uid: str, reading: dict[str, Any], author: str, version: int) -> None:
    """Refuse before writing an SR that could not count (the transaction checks again).

    A study another radiologist holds is a conflict here (409), not a permission matter: the
    caller may sign once the study is theirs.
    """
    status, claimed_by = reading["status"], reading["claimed_by"]
    if reading["version"] != version:
        reason = f"version {version} is stale: the item changed since"
    elif status != ReadingStatus.IN_PROGRESS:
        reason = f"a {status} study cannot be reported: claim it first"
    elif claimed_by != author:
        reason = f"claimed by {claimed_by}, not by {author}: only the claimant may sign"
    else:
        return
    raise WorklistConflictError(
        uid, reason, status=status, claimed_by=claimed_by, version=reading["version"]
    )


def _check_decisions(
    findings: dict[int, AiFinding], decisions: Sequence[Decision]
) -> list[Decision]:
    seen: dict[int, Decision] = {}
    for decision in decisions:
        if decision.result_id not in findings:
            raise SignError(f"result {decision.result_id} is not an AI finding of this study")
        if decision.result_id in seen:
            raise SignError(f"result {decision.result_id} has more than one decision")
        seen[decision.result_id] = decision
    missing = sorted(set(findings) - set(seen))
    if missing:
        raise SignError(
            "every AI finding needs a decision (confirmed or rejected): missing for result "
            + ", ".join(str(m) for m in missing)
        )
    return [seen[k] for k in sorted(seen)]


def _added_json(item: AddedFinding) -> dict[str, Any]:
    return {
        "label": item.label,
        "series_instance_uid": item.series_instance_uid,
        "sop_instance_uid": item.sop_instance_uid,
        "region": dict(item.region),
    }
