"""Training data from a research cohort (:mod:`serving.cohorts`): ``radcloud train --source
cohort:ID``.

The cohort's study list (``cohort_studies`` rows it lists; a cohort whose total is below the
minimum cell size lists none) is exported from the archive into the folder layout
:mod:`training.data` reads, like :mod:`training.orthanc_source`, with two differences:

- every instance is de-identified by the research de-identifier
  (:class:`imaging.deid.Deidentifier`, PS3.15 Basic Profile with modified dates, every UID
  keyed, scope ``"research"``) with the patient key the cohort was answered with, so the
  folder's Study Instance UIDs and patient pseudonyms are exactly the cohort's list; an
  instance with burned-in annotation is withheld and counted (``withheld_instances``), and a
  study left with none is skipped;
- labels come from the ``labels`` table as for the Orthanc source (:func:`study_label`, the
  task's findings and the cohort's own label finding); a study without label rows is not
  exported (counted as unlabelled).

The original UIDs and hospitals are read from the cohort's server-side rows and never written:
``manifest.json`` names the cohort, its counts, withheld instances and skipped studies by their
de-identified UIDs. The export is audited (110106 Export) with counts only.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from rich.progress import Progress
from sqlalchemy import select

from core.archive import AnonymizingArchive, ArchiveId, ImageArchive
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.db import Database
from core.db.models import Cohort, CohortStudy, Label, Study
from imaging.deid import RESEARCH_SCOPE, Deidentifier, Pseudonymizer
from imaging.exceptions import BurnedInAnnotationError, DeidentificationError
from training._labels import TASK_FINDINGS, normalise_finding, study_label
from training.exceptions import DataSourceError
from training.orthanc_source import (
    SkippedStudy,
    SkipReason,
    _Exporter,
    _publish,
    _Row,
    _StudySkippedError,
    _write_labels,
)
from training.tasks import Task

__all__ = ["COHORT_SCOPE", "CohortExport", "export_cohort_source"]

logger = logging.getLogger(__name__)

COHORT_SCOPE = RESEARCH_SCOPE  # the cohort answered with it
"""The de-identification scope of cohorts (``serving.cohorts.RESEARCH_SCOPE``)."""
_MANIFEST_SOURCE = "cohort"


@dataclass(frozen=True)
class CohortExport:
    """What :func:`export_cohort_source` wrote (also ``manifest.json``)."""

    out_dir: Path
    cohort_id: int
    task: Task
    listed: int
    studies: int
    positives: int
    negatives: int
    instances: int
    withheld_instances: int
    masks: int
    unlabelled: int
    skipped: tuple[SkippedStudy, ...]
    labels_sha256: str
    created_at: str

    def skipped_counts(self) -> dict[str, int]:
        """Skipped studies per reason."""
        return dict(sorted(Counter(s.reason.value for s in self.skipped).items()))

    def to_json(self) -> dict[str, Any]:
        """The content of ``manifest.json``."""
        return {
            "source": _MANIFEST_SOURCE,
            "cohort_id": self.cohort_id,
            "task": self.task.value,
            "created_at": self.created_at,
            "listed_studies": self.listed,
            "studies": self.studies,
            "positives": self.positives,
            "negatives": self.negatives,
            "instances": self.instances,
            "withheld_instances": self.withheld_instances,
            "masks": self.masks,
            "unlabelled_studies": self.unlabelled,
            "skipped_counts": self.skipped_counts(),
            "skipped": [
                {"study": s.study, "reason": s.reason.value, "detail": s.detail}
                for s in self.skipped
            ],
            "deidentification": {
                "deidentified": True,
                "method": Deidentifier.method(),
                "scope": COHORT_SCOPE,
                "profile": "PS3.15 Annex E Basic Application Confidentiality Profile, "
                "Retain Longitudinal Temporal Information with Modified Dates",
            },
            "labels_csv": "labels.csv",
            "labels_sha256": self.labels_sha256,
        }


class _CohortExporter(_Exporter):
    """The Orthanc source's exporter with the research de-identifier on each instance."""

    def __init__(
        self, task: Task, staging: Path, archive: ImageArchive, pseudonyms: Pseudonymizer
    ) -> None:
        # keep_identifiers=True only switches off Orthanc's anonymizer, which is not used:
        # every instance goes through _instances below
        super().__init__(task, staging, cast(AnonymizingArchive, archive), pseudonyms, True)
        self.research = Deidentifier(pseudonyms)
        self.patient_key = ""
        self.withheld = 0

    def exported_uid(self, uid: str) -> str:
        return self.pseudonyms.uid(uid)

    def _instances(
        self, orthanc_ids: Sequence[ArchiveId], hospital: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        files: dict[str, bytes] = {}
        source: dict[str, str] = {}
        withheld = 0
        for orthanc_id in orthanc_ids:
            data = self.orthanc.instance(orthanc_id)
            if data is None:
                raise _StudySkippedError(SkipReason.NOT_IN_ORTHANC, "an instance was deleted")
            try:
                out = self.research.deidentify_file(data, patient_key=self.patient_key)
            except BurnedInAnnotationError:
                withheld += 1
                continue
            except DeidentificationError as exc:
                raise _StudySkippedError(SkipReason.DEIDENTIFICATION_REFUSED, exc.reason) from exc
            original = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            header = pydicom.dcmread(io.BytesIO(out), stop_before_pixels=True)
            files[str(header.SOPInstanceUID)] = out
            source[str(header.SOPInstanceUID)] = str(original.SOPInstanceUID)
        self.withheld += withheld
        if not files:
            raise _StudySkippedError(
                SkipReason.DEIDENTIFICATION_REFUSED,
                f"all {withheld} instances withheld: burned-in annotation",
            )
        return files, source


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    try:
        previous = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or previous.get("source") != _MANIFEST_SOURCE:
        raise DataSourceError(
            out_dir, "holds files and is not a cohort export: expected a new or empty folder"
        )


def _cohort_rows(
    database: Database, cohort_id: int
) -> tuple[Cohort, list[tuple[CohortStudy, Study | None, list[Label]]]]:
    with database.session() as session:
        cohort = session.get(Cohort, cohort_id)
        if cohort is None:
            raise DataSourceError(f"cohort {cohort_id}", "no such cohort")
        session.expunge(cohort)
        rows = session.scalars(
            select(CohortStudy)
            .where(CohortStudy.cohort_id == cohort_id, CohortStudy.listed.is_(True))
            .order_by(CohortStudy.deid_study_instance_uid)
        ).all()
        found = []
        for row in rows:
            study = session.get(Study, row.study_id) if row.study_id is not None else None
            labels = (
                list(
                    session.scalars(
                        select(Label).where(Label.study_id == study.id).order_by(Label.id)
                    )
                )
                if study is not None
                else []
            )
            found.append((row, study, labels))
        session.expunge_all()
    return cohort, found


def export_cohort_source(
    cohort_id: int,
    task: Task | str,
    out_dir: Path,
    *,
    database: Database,
    archive: ImageArchive,
    deid_key: str,
    audit: AuditTrail | None = None,
    user_name: str | None = None,
    progress: bool = False,
) -> CohortExport:
    """Export the listed studies of cohort ``cohort_id`` as a de-identified folder source.

    Parameters
    ----------
    cohort_id
        The cohort (``POST /api/cohorts``, ``radcloud cohorts create``).
    task
        ``head-ct`` or ``chest-xr``: the image series and the findings that make a label.
    out_dir
        A new or empty folder, or an earlier cohort export (replaced when done).
    database, archive, deid_key
        The application database, the image archive, ``Secrets.deid_hmac_key``.
    audit, user_name
        When given, the export is recorded (110106 Export) with counts only.
    progress
        Show a progress bar on stderr.

    Raises
    ------
    DataSourceError
        No such cohort; ``out_dir`` holds something else; the archive failed.
    """
    task = Task(task)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    cohort, rows = _cohort_rows(database, cohort_id)
    findings = set(TASK_FINDINGS[task])
    if cohort.query.get("label"):
        findings.add(normalise_finding(str(cohort.query["label"]["finding"])))
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    exporter = _CohortExporter(task, staging, archive, Pseudonymizer(deid_key, COHORT_SCOPE))
    exported: list[_Row] = []
    skipped: list[SkippedStudy] = []
    unlabelled = 0
    try:
        with Progress(disable=not progress) as bar:
            job = bar.add_task(f"exporting cohort {cohort_id}", total=len(rows))
            for row, study, labels in rows:
                bar.advance(job)
                if study is None:
                    skipped.append(
                        SkippedStudy(row.deid_study_instance_uid, SkipReason.NOT_IN_ORTHANC)
                    )
                    continue
                if not labels:
                    unlabelled += 1
                    continue
                exporter.patient_key = row.patient_key
                try:
                    exported.append(
                        exporter.export(study, row.hospital, study_label(labels, findings))
                    )
                except _StudySkippedError as skip:
                    uid = row.deid_study_instance_uid
                    skipped.append(SkippedStudy(uid, skip.reason, skip.detail))
                    logger.info("study %s skipped: %s %s", uid, skip.reason.value, skip.detail)
        digest = _write_labels(staging / "labels.csv", exported)
        manifest = CohortExport(
            out_dir=out_dir,
            cohort_id=cohort_id,
            task=task,
            listed=len(rows),
            studies=len(exported),
            positives=sum(r.label for r in exported),
            negatives=sum(1 - r.label for r in exported),
            instances=sum(r.instances for r in exported),
            withheld_instances=exporter.withheld,
            masks=sum(bool(r.mask) for r in exported),
            unlabelled=unlabelled,
            skipped=tuple(sorted(skipped, key=lambda s: (s.reason.value, s.study))),
            labels_sha256=digest,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        (staging / "manifest.json").write_text(
            json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if audit is not None:
        audit.record(
            AuditEventCode.EXPORT,
            action=AuditAction.READ,
            user_name=user_name,
            resource_type="cohort",
            resource_id=str(cohort_id),
            detail={
                "event": "cohort exported for training",
                "task": task.value,
                "listed": manifest.listed,
                "studies": manifest.studies,
                "positives": manifest.positives,
                "instances": manifest.instances,
                "withheld_instances": manifest.withheld_instances,
                "skipped": manifest.skipped_counts(),
                "deidentified": True,
                "scope": COHORT_SCOPE,
            },
        )
    return manifest
