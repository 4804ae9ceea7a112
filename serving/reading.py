"""Remote reading: what the viewer shows of a study, the AI masks, and the signed report.

:class:`ReadingService` backs the reading web app's API (``serving/api/routes/reading.py``,
contract in ``docs/reading-app.md``):

- :meth:`~ReadingService.manifest`: the study's image series with their instances in display
  order (CT: along the slice normal, as :func:`imaging.volume.load_series` orders them), the AI
  findings (read from the triage's SR, their slices from the SEG's references to the source
  instances) and the signed report, if any;
- :meth:`~ReadingService.mask`: a finding's SEG as bit-packed frames keyed by source instance;
- :meth:`~ReadingService.sign`: the radiologist's report. A DICOM Comprehensive SR (verified,
  final: author, report text, per AI finding agreement or not, findings the AI missed with
  their image region) is stored in Orthanc; then, in one transaction, the study becomes
  ``reported``, the report row is written and the labels training reads (``labels``: a
  confirmed AI finding with its SEG as the region, a rejected one as absent, an added one with
  its image and rectangle). If that transaction fails (the study moved on meanwhile), the SR
  is deleted from Orthanc again, so no SR claims a report that was not recorded.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import highdicom as hd
import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Database
from core.db.models import (
    InferenceResult,
    InferenceStatus,
    Label,
    ReadingStatus,
    Report,
    Study,
)
from core.exceptions import NotFoundError, RadcloudError
from imaging.seg import MANUFACTURER
from imaging.sr import STUDY_TRACKING_ID, read_findings
from serving.worklist import (
    NotClaimantError,
    ReadingState,
    Worklist,
    WorklistConflictError,
)

__all__ = [
    "AddedFinding",
    "AiFinding",
    "Decision",
    "FindingMask",
    "Manifest",
    "ReadingService",
    "SignError",
    "SignedReport",
    "ViewerSeries",
    "person_name",
    "study_by_uid",
]

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "DOC"})
AI_AGREEMENT = Code("RC001", "99RADCLOUD", "Agreement with AI finding")
"""Private code of the signed SR's per-finding item: value SCT Yes (confirmed) or No."""
ADDED_FINDING = Code("RC002", "99RADCLOUD", "Finding not reported by AI")
SR_SERIES_NUMBER = 990


class SignError(RadcloudError):
    """A report that cannot be signed as sent (the message says why): HTTP 422."""


class _ResultRow(NamedTuple):
    id: int
    model_name: str
    model_version: str
    score: float | None
    critical: bool
    findings: dict[str, Any]


@dataclass(frozen=True)
class ViewerSeries:
    """An image series as the viewer shows it; instances in display order."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    series_number: int | None
    instances: list[dict[str, Any]]  # {"sop_instance_uid", "instance_number"}


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


@dataclass(frozen=True)
class FindingMask:
    """A finding's segmentation: per source instance, the frame's bits (numpy packbits,
    row-major, big bit order) in base64."""

    series_instance_uid: str
    rows: int
    columns: int
    frames: list[dict[str, Any]]  # {"index", "sop_instance_uid", "bits"}


@dataclass(frozen=True)
class Decision:
    """The radiologist's decision on an AI finding."""

    result_id: int
    decision: Literal["confirmed", "rejected"]


@dataclass(frozen=True)
class AddedFinding:
    """A finding the AI missed, marked on one image (a rectangle in pixel coordinates)."""

    label: str
    series_instance_uid: str
    sop_instance_uid: str
    region: dict[str, float] = field(default_factory=dict)  # x, y, width, height


@dataclass(frozen=True)
class SignOutcome:
    """What signing stored."""

    state: ReadingState
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    labels: int


class ReadingService:
    """The reading app's view of studies in Orthanc and the database.

    Parameters
    ----------
    db
        The application database.
    orthanc
        An Orthanc REST client (``pyorthanc.Orthanc``, an ``httpx.Client``).
    site_name
        The organisation that verifies signed reports.
    """

    def __init__(self, db: Database, orthanc: Any, site_name: str) -> None:
        self._db = db
        self._orthanc = orthanc
        self._site = site_name
        self._worklist = Worklist(db)

    # -- reading ------------------------------------------------------------------------------

    def manifest(self, study_instance_uid: str) -> Manifest:
        """The study's series, AI findings, reading state and report.

        Raises
        ------
        NotFoundError
            The study is unknown, or not (or no longer) in Orthanc.
        StudyNotOnWorklistError
            The study has no worklist item.
        """
        with self._db.session() as session:
            study = study_by_uid(session, study_instance_uid)
            hospital = study.hospital.name if study.hospital else None
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
            signed = _signed(report) if report else None
            details = (
                study.patient_name,
                study.patient_id,
                study.accession_number,
                study.study_description,
                study.study_date,
                study.modalities,
                study.orthanc_id,
            )
            raw = [
                _ResultRow(r.id, r.model_name, r.model_version, r.score, r.critical, r.findings)
                for r in results
            ]
        name, patient_id, accession, description, date, modalities, orthanc_id = details
        if orthanc_id is None:
            raise NotFoundError("study in Orthanc", study_instance_uid)
        series = self._series(orthanc_id)
        order = {
            i["sop_instance_uid"]: (s.series_instance_uid, k)
            for s in series
            for k, i in enumerate(s.instances)
        }
        findings = [
            finding
            for row in raw
            if (finding := self._finding(row, order=order, verified=signed is not None))
        ]
        state = self._worklist.state(study_instance_uid)
        return Manifest(
            study_instance_uid=study_instance_uid,
            patient_name=name,
            patient_id=patient_id,
            accession_number=accession,
            study_description=description,
            study_date=date,
            modalities=modalities,
            hospital=hospital,
            reading={
                "status": state.status,
                "claimed_by": state.claimed_by,
                "version": state.version,
            },
            series=series,
            findings=findings,
            report=signed,
        )

    def mask(self, study_instance_uid: str, result_id: int) -> FindingMask:
        """The SEG of ``result_id`` (a result of this study) as bit-packed frames.

        Raises
        ------
        NotFoundError
            No such result of this study, or it has no segmentation.
        """
        seg_uid = self._result_findings(study_instance_uid, result_id).get(
            "seg_series_instance_uid"
        )
        if not seg_uid:
            raise NotFoundError("segmentation of result", str(result_id))
        seg = self._seg(seg_uid)
        with self._db.session() as session:
            orthanc_id = study_by_uid(session, study_instance_uid).orthanc_id
        order = {
            i["sop_instance_uid"]: k
            for s in self._series(orthanc_id or "")
            for k, i in enumerate(s.instances)
        }
        frames = _frames_by_source(seg)
        packed = [
            {
                "index": order[uid],
                "sop_instance_uid": uid,
                "bits": base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode("ascii"),
            }
            for uid, mask in frames.items()
            if uid in order and mask.any()
        ]
        return FindingMask(
            series_instance_uid=str(_source_series(seg) or ""),
            rows=int(seg.Rows),
            columns=int(seg.Columns),
            frames=sorted(packed, key=lambda f: f["index"]),
        )

    # -- signing ------------------------------------------------------------------------------

    def sign(
        self,
        study_instance_uid: str,
        *,
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
            The study is not ``author``'s to report, or ``version`` is stale.
        OrthancUnavailableError
            The SR could not be stored; nothing was recorded.
        """
        text = text.strip()
        if not text:
            raise SignError("the report text is empty")
        manifest = self.manifest(study_instance_uid)
        _check_claim(study_instance_uid, manifest.reading, author, version)
        findings = {f.result_id: f for f in manifest.findings}
        chosen = _check_decisions(findings, decisions)
        images = {
            i["sop_instance_uid"]: s.series_instance_uid
            for s in manifest.series
            for i in s.instances
        }
        for item in added:
            if images.get(item.sop_instance_uid) != item.series_instance_uid:
                raise SignError(
                    f'added finding "{item.label}": image {item.sop_instance_uid} is not in '
                    f"series {item.series_instance_uid} of this study"
                )
        sr = self._write_sr(
            manifest, author, text=text, findings=findings, decisions=chosen, added=added
        )
        sr_id = self._store(sr)

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
            for label in _labels(study.id, author, findings, chosen, added):
                session.add(label)

        try:
            reported = self._worklist.report(
                study_instance_uid, user=author, version=version, also=record
            )
        except Exception:
            self._delete(sr_id)
            raise
        count = len(chosen) + len(added)
        logger.info("study %s reported by %s: SR %s", study_instance_uid, author, sr.SOPInstanceUID)
        return SignOutcome(reported, str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), count)

    # -- Orthanc ------------------------------------------------------------------------------

    def _series(self, orthanc_study_id: str) -> list[ViewerSeries]:
        answer = self._orthanc.get(f"/studies/{orthanc_study_id}/series")
        if answer.status_code == 404:
            raise NotFoundError("study in Orthanc", orthanc_study_id)
        answer.raise_for_status()
        series = []
        for item in answer.json():
            tags = item.get("MainDicomTags", {})
            if str(tags.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
                continue
            listing = self._orthanc.get(f"/series/{item['ID']}/instances")
            listing.raise_for_status()
            series.append(
                ViewerSeries(
                    series_instance_uid=str(tags.get("SeriesInstanceUID")),
                    modality=tags.get("Modality"),
                    series_description=tags.get("SeriesDescription"),
                    series_number=_int(tags.get("SeriesNumber")),
                    instances=_display_order(listing.json()),
                )
            )
        return sorted(series, key=lambda s: (s.series_number or 0, s.series_instance_uid))

    def _instance(self, sop_or_series_uid: str, level: str) -> list[Dataset]:
        """The instances of the series (``level`` Series) or the instance (Instance)."""
        found = self._orthanc.post("/tools/lookup", content=sop_or_series_uid)
        found.raise_for_status()
        matches = [m for m in found.json() if m.get("Type") == level]
        if not matches:
            raise NotFoundError(level.lower(), sop_or_series_uid)
        if level == "Instance":
            ids = [matches[0]["ID"]]
        else:
            listing = self._orthanc.get(f"/series/{matches[0]['ID']}")
            listing.raise_for_status()
            ids = sorted(listing.json()["Instances"])
        datasets: list[Dataset] = []
        for orthanc_id in ids:
            file = self._orthanc.get(f"/instances/{orthanc_id}/file")
            file.raise_for_status()
            datasets.append(pydicom.dcmread(io.BytesIO(file.content)))
        return datasets

    def _seg(self, seg_series_uid: str) -> Dataset:
        return self._instance(seg_series_uid, "Series")[0]

    def _store(self, dataset: Dataset) -> str:
        buffer = DicomBytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        answer = self._orthanc.post("/instances", content=buffer.getvalue())
        answer.raise_for_status()
        return str(answer.json()["ID"])

    def _delete(self, orthanc_id: str) -> None:
        try:
            self._orthanc.delete(f"/instances/{orthanc_id}").raise_for_status()
        except Exception:
            logger.exception(
                "could not delete the SR %s of a report that was not recorded", orthanc_id
            )

    # -- findings -----------------------------------------------------------------------------

    def _result_findings(self, study_instance_uid: str, result_id: int) -> dict[str, Any]:
        with self._db.session() as session:
            study = study_by_uid(session, study_instance_uid)
            result = session.get(InferenceResult, result_id)
            if result is None or result.study_id != study.id:
                raise NotFoundError("result", str(result_id))
            return dict(result.findings)

    def _finding(
        self, row: _ResultRow, *, order: dict[str, tuple[str, int]], verified: bool
    ) -> AiFinding | None:
        """The finding the result's SR reports, or None (a result without one)."""
        result_id, found, critical, score = row.id, row.findings, row.critical, row.score
        sr_uid = found.get("sr_sop_instance_uid")
        groups = []
        if sr_uid:
            try:
                groups = [
                    g
                    for g in read_findings(self._instance(sr_uid, "Instance")[0])
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
                sources = _frames_by_source(self._seg(seg_uid))
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

    def _write_sr(
        self,
        manifest: Manifest,
        author: str,
        *,
        text: str,
        findings: dict[int, AiFinding],
        decisions: Sequence[Decision],
        added: Sequence[AddedFinding],
    ) -> hd.sr.ComprehensiveSR:
        evidence_uids = {
            s.series_instance_uid: s.instances[0]["sop_instance_uid"]
            for s in manifest.series
            if s.instances
        }
        evidence = {uid: self._instance(uid, "Instance")[0] for uid in evidence_uids.values()}
        for item in added:
            if item.sop_instance_uid not in evidence:
                evidence[item.sop_instance_uid] = self._instance(item.sop_instance_uid, "Instance")[
                    0
                ]
        content = _report_content(
            author,
            self._site,
            text=text,
            findings=findings,
            decisions=decisions,
            added=added,
            evidence=evidence,
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=list(evidence.values()),
            content=content,
            series_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=True,
            is_verified=True,
            verifying_observer_name=person_name(author),
            verifying_organization=self._site,
            series_description="Radiologist report",
        )
        return sr


# -- helpers --------------------------------------------------------------------------------------


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


def person_name(user: str) -> str:
    """A user name as a DICOM person name (PN): a name without components gets the trailing
    caret that marks it a family name alone, e.g. ``dr-smith^``."""
    return user if "^" in user else f"{user}^"


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _floats(value: Any) -> list[float] | None:
    try:
        return [float(v) for v in str(value).split("\\")]
    except (TypeError, ValueError):
        return None


def _display_order(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instances along the slice normal (position · normal ascending, as
    :func:`imaging.volume.load_series` stacks them) when every one has a position and an
    orientation; else by instance number."""
    rows = []
    for item in instances:
        tags = item.get("MainDicomTags", {})
        rows.append(
            (
                str(tags.get("SOPInstanceUID")),
                _int(tags.get("InstanceNumber")),
                _floats(tags.get("ImagePositionPatient")),
                _floats(tags.get("ImageOrientationPatient")),
            )
        )
    oriented = all(p and len(p) == 3 and o and len(o) == 6 for _, _, p, o in rows)
    if oriented and len(rows) > 1:
        orientation = np.asarray(rows[0][3], dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        rows.sort(key=lambda r: (float(np.dot(np.asarray(r[2]), normal)), r[1] or 0, r[0]))
    else:
        rows.sort(key=lambda r: (r[1] if r[1] is not None else 1 << 30, r[0]))
    return [{"sop_instance_uid": uid, "instance_number": number} for uid, number, _, _ in rows]


def _frame_source(item: Dataset) -> str | None:
    for derivation in item.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            return str(source.ReferencedSOPInstanceUID)
    return None


def _frames_by_source(seg: Dataset) -> dict[str, np.ndarray]:
    """The SEG's frames OR-ed per referenced source instance (every segment together)."""
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    fractional = seg.get("SegmentationType") == "FRACTIONAL"
    limit = float(seg.get("MaximumFractionalValue", 1)) / 2 if fractional else 0
    out: dict[str, np.ndarray] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = _frame_source(item)
        if source is None:
            continue
        frame = pixels[index] > limit
        out[source] = out[source] | frame if source in out else frame
    return out


def _source_series(seg: Dataset) -> str | None:
    for reference in seg.get("ReferencedSeriesSequence") or []:
        return str(reference.SeriesInstanceUID)
    return None


def _signed(report: Report) -> SignedReport:
    return SignedReport(
        signed_by=report.author,
        signed_at=report.signed_at,
        text=report.text,
        sr_sop_instance_uid=report.sr_sop_instance_uid,
        decisions=list(report.decisions),
        added=list(report.added),
    )


def _check_claim(uid: str, reading: dict[str, Any], author: str, version: int) -> None:
    """Refuse before writing an SR that could not count (the transaction checks again)."""
    status, claimed_by = reading["status"], reading["claimed_by"]
    if reading["version"] != version:
        raise WorklistConflictError(
            uid,
            f"version {version} is stale: the item changed since",
            status=status,
            claimed_by=claimed_by,
            version=reading["version"],
        )
    if status != ReadingStatus.IN_PROGRESS:
        raise WorklistConflictError(
            uid,
            f"a {status} study cannot be reported: claim it first",
            status=status,
            claimed_by=claimed_by,
            version=reading["version"],
        )
    if claimed_by != author:
        raise NotClaimantError(uid, author, claimed_by)


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


def _labels(
    study_id: int,
    author: str,
    findings: dict[int, AiFinding],
    decisions: Sequence[Decision],
    added: Sequence[AddedFinding],
) -> list[Label]:
    """The labels training reads (``training.orthanc_source``): a confirmed AI finding is
    present with its SEG as the region; a rejected one absent; an added one present on its
    image."""
    labels = []
    for decision in decisions:
        finding = findings[decision.result_id]
        confirmed = decision.decision == "confirmed"
        region: dict[str, Any] = {}
        if confirmed and finding.seg_series_instance_uid:
            region = {"seg_series_instance_uid": finding.seg_series_instance_uid}
        labels.append(
            Label(
                study_id=study_id,
                series_instance_uid=finding.series_instance_uid,
                finding=finding.label,
                present=confirmed,
                source="radiologist",
                region=region,
                inference_result_id=finding.result_id,
                author=author,
            )
        )
    labels.extend(
        Label(
            study_id=study_id,
            series_instance_uid=item.series_instance_uid,
            sop_instance_uid=item.sop_instance_uid,
            finding=item.label,
            present=True,
            source="radiologist",
            region={"sop_instance_uid": item.sop_instance_uid, **item.region},
            author=author,
        )
        for item in added
    )
    return labels


def _report_content(
    author: str,
    site: str,
    *,
    text: str,
    findings: dict[int, AiFinding],
    decisions: Sequence[Decision],
    added: Sequence[AddedFinding],
    evidence: dict[str, Dataset],
) -> hd.sr.ContainerContentItem:
    """A Basic Diagnostic Imaging Report (TID 2000 layout): the author as person observer, the
    report text, per AI finding whether the radiologist agrees, and added findings with their
    image region."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    items: list[Any] = []
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(author), login_name=author, organization_name=site
        ),
    )
    items.extend(observer)
    items.append(
        hd.sr.TextContentItem(name=codes.LN.Findings, value=text, relationship_type=contains)
    )
    for decision in decisions:
        finding = findings[decision.result_id]
        agreement = hd.sr.CodeContentItem(
            name=AI_AGREEMENT,
            value=codes.SCT.Yes if decision.decision == "confirmed" else codes.SCT.No,
            relationship_type=contains,
        )
        described = (
            f"{finding.label} by {finding.model_name} {finding.model_version}"
            + (f", score {finding.score:.3f}" if finding.score is not None else "")
            + (", critical" if finding.critical else "")
            + f": {decision.decision} by the radiologist"
        )
        agreement.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=codes.DCM.Finding,
                    value=described,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            ]
        )
        items.append(agreement)
    for item in added:
        source = evidence[item.sop_instance_uid]
        remark = hd.sr.TextContentItem(
            name=ADDED_FINDING, value=item.label, relationship_type=contains
        )
        region = item.region
        if {"x", "y", "width", "height"} <= set(region):
            x, y = float(region["x"]), float(region["y"])
            w, h = float(region["width"]), float(region["height"])
            outline = np.array(
                [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float32
            )
            scoord = hd.sr.ScoordContentItem(
                name=codes.DCM.ImageRegion,
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=outline,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        else:
            scoord = None
        image = hd.sr.ImageContentItem(
            name=codes.DCM.SourceImageForSegmentation,
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM,
        )
        if scoord is not None:
            scoord.ContentSequence = hd.sr.ContentSequence([image])
            remark.ContentSequence = hd.sr.ContentSequence([scoord])
        else:
            image.RelationshipType = hd.sr.RelationshipTypeValues.HAS_PROPERTIES.value
            remark.ContentSequence = hd.sr.ContentSequence([image])
        items.append(remark)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root
