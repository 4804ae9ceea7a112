"""Training data from Orthanc and the ``labels`` table, exported to a folder source.

:func:`export_orthanc_source` writes the studies radiologists labelled (the application
database's ``labels`` table) in exactly the layout :mod:`training.data` reads::

    out/
      labels.csv          study_instance_uid,patient_id,label,finding,mask,image
      manifest.json       counts, skipped studies with reasons, hospitals, method, time
      dicom/<StudyInstanceUID>/<SOPInstanceUID>.dcm
      masks/<StudyInstanceUID>.nii.gz      label map on the image's voxel grid (uint8)

**Labels** (:func:`study_label`). A study's label rows are read for the task's findings
(:data:`TASK_FINDINGS`, matched after :func:`normalise_finding`): label 1 when any row says
such a finding is present; 0 when every row of the study says ``present=False``; otherwise
(only other findings present) the study is skipped. Studies without label rows are not
exported (the manifest counts them as unlabelled).

**Image series.** Of the study's series of the task's modality (CT; DX or CR), the one the
label rows name (``labels.series_instance_uid``), else the one with most instances.

**Masks.** A positive row's ``region`` may name a DICOM SEG series stored in Orthanc::

    {"seg_series_instance_uid": "1.2.3...", "segment_numbers": [1]}   # segment_numbers optional

The SEG (in the same study) is placed on the image series with
:func:`imaging.seg.read_segmentation` (by its references to the source instances) and the
union of the chosen segments (all by default; fractional ones at 0.5) becomes a NIfTI label
map on the image grid. Segmentation tasks skip positives without a usable mask (counted in the
manifest) and get an empty mask for negatives; classification tasks keep masks when present.

**De-identification** is the default (:mod:`imaging.deid`: Orthanc's PS3.15 Basic Profile with
keyed, consistent UIDs and patient pseudonyms for the scope ``training``): ``labels.csv``
holds the remapped StudyInstanceUID and the pseudonym, and nothing in the folder names the
patient, Orthanc's IDs or the original UIDs. Identifiers are kept only when one hospital is
exported and ``keep_identifiers`` is asked for: the folder then stays in that hospital's scope.

**File names.** The folder's files are named by the exported Study and SOP Instance UIDs, and
only after they are checked safe (:func:`core.uids.check_uid`: digits and dots, at most 64
characters); a study with a UID that is not (which the gateway would have quarantined, but an
archive may hold older data) is skipped as ``invalid-uid``, never written to a path built from it.

**Deterministic.** The same database, Orthanc content and key give byte-identical
``labels.csv``, DICOM files and masks (rows and files named and ordered by the exported UIDs);
only ``manifest.json`` records the time. A re-export replaces an earlier export atomically.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from rich.progress import Progress

from core.archive import (
    AnonymizingArchive,
    ArchivedResource,
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
)
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.db import Database
from core.db.models import Study
from core.uids import InvalidUidError, check_uid, check_uid_list
from imaging.deid import OrthancDeidentifier, Pseudonymizer
from imaging.exceptions import DeidentificationError, ImagingError, OrthancUnavailableError
from imaging.nifti import save_nifti
from imaging.seg import read_segmentation
from imaging.volume import Volume, load_series
from training._labels import (
    SEG_SERIES_KEY,
    SEGMENT_NUMBERS_KEY,
    TASK_FINDINGS,
    SegRegion,
    StudyLabel,
    labelled_studies,
    normalise_finding,
    study_label,
)
from training.exceptions import DataSourceError
from training.tasks import Task, task_spec

__all__ = [
    "DEFAULT_SCOPE",
    "LABELS_COLUMNS",
    "SEGMENT_NUMBERS_KEY",
    "SEG_SERIES_KEY",
    "TASK_FINDINGS",
    "ExportManifest",
    "SegRegion",
    "SkipReason",
    "SkippedStudy",
    "StudyLabel",
    "export_orthanc_source",
    "normalise_finding",
    "study_label",
]

logger = logging.getLogger(__name__)

DEFAULT_SCOPE = "training"
LABELS_COLUMNS = ("study_instance_uid", "patient_id", "label", "finding", "mask", "image")
_MODALITIES = {"CT": ("CT",), "DX": ("DX", "CR")}
_MANIFEST_SOURCE = "orthanc"


class SkipReason(StrEnum):
    """Why a labelled study was not exported."""

    OTHER_FINDINGS_ONLY = "other-findings-only"
    NOT_IN_ORTHANC = "not-in-orthanc"
    NO_IMAGE_SERIES = "no-image-series"
    DEIDENTIFICATION_REFUSED = "deidentification-refused"
    UNREADABLE_SERIES = "unreadable-series"
    NO_MASK = "positive-without-mask"
    UNUSABLE_MASK = "unusable-mask"
    INVALID_UID = "invalid-uid"


@dataclass(frozen=True)
class SkippedStudy:
    """A labelled study left out; ``study`` is its exported (remapped) UID."""

    study: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True)
class ExportManifest:
    """What :func:`export_orthanc_source` wrote (also ``manifest.json``)."""

    out_dir: Path
    task: Task
    studies: int
    positives: int
    negatives: int
    instances: int
    masks: int
    unlabelled: int
    skipped: tuple[SkippedStudy, ...]
    hospitals: tuple[str, ...]
    deidentified: bool
    deidentification_method: tuple[str, ...]
    labels_sha256: str
    created_at: str
    scope: str = DEFAULT_SCOPE

    def skipped_counts(self) -> dict[str, int]:
        """Skipped studies per reason."""
        return dict(sorted(Counter(s.reason.value for s in self.skipped).items()))

    def to_json(self) -> dict[str, Any]:
        """The content of ``manifest.json``."""
        return {
            "source": _MANIFEST_SOURCE,
            "task": self.task.value,
            "created_at": self.created_at,
            "hospitals": list(self.hospitals),
            "studies": self.studies,
            "positives": self.positives,
            "negatives": self.negatives,
            "instances": self.instances,
            "masks": self.masks,
            "unlabelled_studies": self.unlabelled,
            "skipped_counts": self.skipped_counts(),
            "skipped": [
                {"study": s.study, "reason": s.reason.value, "detail": s.detail}
                for s in self.skipped
            ],
            "deidentification": {
                "deidentified": self.deidentified,
                "method": list(self.deidentification_method),
                "scope": self.scope if self.deidentified else None,
                "profile": "PS3.15 Annex E Basic Application Confidentiality Profile"
                if self.deidentified
                else "none: identifiers kept inside the hospital's scope",
            },
            "labels_csv": "labels.csv",
            "labels_sha256": self.labels_sha256,
        }


class _Orthanc:
    """The few archive reads of an export; the archive's failures become
    :class:`DataSourceError`, a missing resource ``None``."""

    def __init__(self, archive: AnonymizingArchive) -> None:
        self.archive = archive

    def _failed(self, exc: ArchiveError) -> DataSourceError:
        return DataSourceError(f"Orthanc {self.archive.url}", str(exc))

    def study_series(self, study: Study) -> list[ArchivedResource] | None:
        """The study's series, or ``None`` if it is not stored."""
        try:
            if study.orthanc_id:
                try:
                    return self.archive.get_study_series(ArchiveId(study.orthanc_id))
                except ArchiveNotFoundError:
                    pass  # stale: find it by its UID
            found = self.archive.search_for_studies({"StudyInstanceUID": study.study_instance_uid})
            return self.archive.get_study_series(found[0].archive_id) if found else None
        except ArchiveNotFoundError:
            return None
        except ArchiveError as exc:
            raise self._failed(exc) from exc

    def series(self, series_instance_uid: str) -> ArchivedResource | None:
        """The series with this UID, if stored."""
        try:
            found = self.archive.search_for_series({"SeriesInstanceUID": series_instance_uid})
        except ArchiveError as exc:
            raise self._failed(exc) from exc
        return found[0] if found else None

    def instance(self, archive_id: ArchiveId) -> bytes | None:
        """The instance's Part 10 file, or ``None`` if it was deleted."""
        try:
            return self.archive.retrieve_instance(archive_id)
        except ArchiveNotFoundError:
            return None
        except ArchiveError as exc:
            raise self._failed(exc) from exc


class _StudySkippedError(Exception):
    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class _Row:
    study_instance_uid: str
    patient_id: str
    label: int
    finding: str
    mask: str
    instances: int


class _Exporter:
    def __init__(
        self,
        task: Task,
        staging: Path,
        archive: AnonymizingArchive,
        pseudonyms: Pseudonymizer,
        keep_identifiers: bool,
    ) -> None:
        spec = task_spec(task)
        self.segmentation = spec.segmentation
        self.modalities = _MODALITIES.get(spec.modality, (spec.modality,))
        self.staging = staging
        self.orthanc = _Orthanc(archive)
        self.pseudonyms = pseudonyms
        self.deidentifier = None if keep_identifiers else OrthancDeidentifier(archive, pseudonyms)

    def exported_uid(self, uid: str) -> str:
        return uid if self.deidentifier is None else self.pseudonyms.uid(uid)

    def export(self, study: Study, hospital: str, label: StudyLabel) -> _Row:
        if label.label is None:
            raise _StudySkippedError(SkipReason.OTHER_FINDINGS_ONLY)
        value = label.label
        series_list = self.orthanc.study_series(study)
        if series_list is None:
            raise _StudySkippedError(SkipReason.NOT_IN_ORTHANC)
        series = self._image_series(series_list, label.series_instance_uid)
        files, source_uids = self._instances(sorted(series.children), hospital)
        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files.values()]
        try:
            volume = load_series(datasets)
        except ImagingError as exc:
            raise _StudySkippedError(SkipReason.UNREADABLE_SERIES, exc.reason) from exc
        mask = self._mask(study, label, volume, source_uids)
        uid = str(datasets[0].StudyInstanceUID)
        try:  # they name the files written below: never a path from an unchecked value
            check_uid(uid, "StudyInstanceUID")
            check_uid_list(files, "SOPInstanceUID")
        except InvalidUidError as exc:
            raise _StudySkippedError(SkipReason.INVALID_UID, str(exc)) from exc
        series_dir = self.staging / "dicom" / uid
        series_dir.mkdir(parents=True)
        for sop_instance_uid, data in sorted(files.items()):
            (series_dir / f"{sop_instance_uid}.dcm").write_bytes(data)
        mask_path = ""
        if mask is not None:
            target = self.staging / "masks" / f"{uid}.nii.gz"
            target.parent.mkdir(exist_ok=True)
            save_nifti(volume.with_array(mask), target)
            mask_path = target.relative_to(self.staging).as_posix()
        return _Row(
            study_instance_uid=uid,
            patient_id=str(datasets[0].get("PatientID", "")),
            label=value,
            finding=";".join(label.findings) if value else "none",
            mask=mask_path,
            instances=len(files),
        )

    def _image_series(
        self, series_list: list[ArchivedResource], named: str | None
    ) -> ArchivedResource:
        candidates = [s for s in series_list if s.modality in self.modalities]
        if not candidates:
            found = sorted({s.attributes.get("Modality", "?") for s in series_list})
            raise _StudySkippedError(
                SkipReason.NO_IMAGE_SERIES,
                f"modalities {found}: expected one of {list(self.modalities)}",
            )
        for series in candidates:
            if named and series.series_instance_uid == named:
                return series
        return max(candidates, key=lambda s: (len(s.children), s.series_instance_uid or ""))

    def _instances(
        self, orthanc_ids: Sequence[ArchiveId], hospital: str
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        """Exported files by their SOPInstanceUID, and exported → original SOPInstanceUID."""
        files: dict[str, bytes] = {}
        source: dict[str, str] = {}
        for orthanc_id in orthanc_ids:
            if self.deidentifier is None:
                data = self.orthanc.instance(orthanc_id)
                if data is None:
                    raise _StudySkippedError(SkipReason.NOT_IN_ORTHANC, "an instance was deleted")
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                uid = str(header.SOPInstanceUID)
                files[uid], source[uid] = data, uid
                continue
            try:
                instance = self.deidentifier.deidentify_instance(
                    orthanc_id, issuer_of_patient_id=hospital
                )
            except OrthancUnavailableError as exc:
                raise DataSourceError("Orthanc", str(exc)) from exc
            except DeidentificationError as exc:
                logger.warning("de-identification refused: %s", exc)
                raise _StudySkippedError(SkipReason.DEIDENTIFICATION_REFUSED, exc.reason) from exc
            files[instance.sop_instance_uid] = instance.data
            source[instance.sop_instance_uid] = instance.source_sop_instance_uid
        return files, source

    def _mask(
        self, study: Study, label: StudyLabel, volume: Volume, source_uids: dict[str, str]
    ) -> np.ndarray | None:
        if label.label == 0:
            return np.zeros(volume.shape, dtype=np.uint8) if self.segmentation else None
        if not label.regions:
            if self.segmentation:
                raise _StudySkippedError(
                    SkipReason.NO_MASK, f"no label region names {SEG_SERIES_KEY}"
                )
            return None
        # the SEG references the original instances: give the volume their UIDs to place it
        source_volume = replace(
            volume, sop_instance_uids=tuple(source_uids[uid] for uid in volume.sop_instance_uids)
        )
        mask = np.zeros(volume.shape, dtype=bool)
        try:
            for region in label.regions:
                mask |= self._seg_mask(study, region, source_volume)
        except (_StudySkippedError, ImagingError) as exc:
            detail = exc.detail if isinstance(exc, _StudySkippedError) else exc.reason
            if self.segmentation:
                raise _StudySkippedError(SkipReason.UNUSABLE_MASK, detail) from exc
            logger.warning("study exported without its mask: %s", detail)
            return None
        return mask.astype(np.uint8)

    def _seg_mask(self, study: Study, region: SegRegion, volume: Volume) -> np.ndarray:
        series = self.orthanc.series(region.series_instance_uid)
        if series is None:
            raise _StudySkippedError(SkipReason.UNUSABLE_MASK, "the SEG series is not in Orthanc")
        if series.modality != "SEG":
            modality = series.modality
            raise _StudySkippedError(SkipReason.UNUSABLE_MASK, f"modality {modality}: expected SEG")
        mask = np.zeros(volume.shape, dtype=bool)
        for instance_id in sorted(series.children):
            file = self.orthanc.instance(instance_id)
            if file is None:
                raise _StudySkippedError(SkipReason.UNUSABLE_MASK, "a SEG instance was deleted")
            seg = pydicom.dcmread(io.BytesIO(file))
            if seg.get("StudyInstanceUID") != study.study_instance_uid:
                raise _StudySkippedError(
                    SkipReason.UNUSABLE_MASK, "the SEG belongs to another study"
                )
            stacked = read_segmentation(seg, volume)
            numbers = region.segment_numbers or tuple(range(1, len(stacked) + 1))
            if max(numbers) > len(stacked):
                raise _StudySkippedError(
                    SkipReason.UNUSABLE_MASK,
                    f"segment {max(numbers)} asked of a SEG with {len(stacked)} segments",
                )
            chosen = stacked[[n - 1 for n in numbers]]
            mask |= np.any(chosen >= 0.5 if chosen.dtype.kind == "f" else chosen > 0, axis=0)
        return mask


def _write_labels(path: Path, rows: list[_Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABELS_COLUMNS)
    for row in sorted(rows, key=lambda r: r.study_instance_uid):
        image = f"dicom/{row.study_instance_uid}"
        writer.writerow(
            [row.study_instance_uid, row.patient_id, row.label, row.finding, row.mask, image]
        )
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return hashlib.sha256(buffer.getvalue().encode("utf-8")).hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    try:
        previous = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or previous.get("source") != _MANIFEST_SOURCE:
        raise DataSourceError(
            out_dir,
            "holds files and is not an Orthanc export: expected a new or empty folder, or an "
            "earlier export",
        )


def _publish(staging: Path, out_dir: Path) -> None:
    """Put the finished export in place of ``out_dir`` (an earlier export is replaced)."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old)
    else:
        staging.rename(out_dir)


def export_orthanc_source(
    task: Task | str,
    out_dir: Path,
    *,
    database: Database,
    archive: AnonymizingArchive,
    deid_key: str,
    hospitals: Sequence[str] = (),
    keep_identifiers: bool = False,
    scope: str = DEFAULT_SCOPE,
    findings: Collection[str] | None = None,
    audit: AuditTrail | None = None,
    user_name: str | None = None,
    progress: bool = False,
) -> ExportManifest:
    """Export the labelled studies of Orthanc as a folder source for ``task``.

    Parameters
    ----------
    task
        ``head-ct`` or ``chest-xr``.
    out_dir
        A new or empty folder, or an earlier export (replaced atomically when done).
    database
        The application database (``studies``, ``hospitals``, ``labels``).
    archive
        radcloud's image archive (:func:`core.archive.open_archive`).
    deid_key
        The deployment's de-identification key (``Secrets.deid_hmac_key``).
    hospitals
        Hospital names to export; all hospitals when empty.
    keep_identifiers
        Export the original files, UIDs and patient IDs; allowed only with exactly one
        hospital (the export then stays in its scope).
    scope
        The destination scope keying the pseudonyms (see :mod:`imaging.deid`).
    findings
        Normalised finding names that make a study positive; :data:`TASK_FINDINGS` by default.
    audit
        When given, the export is recorded (110106 Export, action R).
    user_name
        Who exported, for the audit record.
    progress
        Show a rich progress bar on stderr.

    Returns
    -------
    ExportManifest
        Counts, skipped studies and their reasons (also written to ``manifest.json``).

    Raises
    ------
    DataSourceError
        An unknown hospital; identifiers asked for without exactly one hospital; ``out_dir``
        holds something else; Orthanc cannot be reached or answers with an error.
    """
    task = Task(task)
    out_dir = Path(out_dir)
    hospitals = tuple(dict.fromkeys(hospitals))
    if keep_identifiers and len(hospitals) != 1:
        raise DataSourceError(
            out_dir,
            f"identifiers can be kept only when exporting one hospital (given: "
            f"{', '.join(hospitals) or 'all'}); exports of several are de-identified",
        )
    _check_out_dir(out_dir)
    relevant = frozenset(normalise_finding(f) for f in (findings or TASK_FINDINGS[task]))
    studies, unlabelled = labelled_studies(database, hospitals)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pseudonyms = Pseudonymizer(deid_key, scope)
    exporter = _Exporter(task, staging, archive, pseudonyms, keep_identifiers)
    rows: list[_Row] = []
    skipped: list[SkippedStudy] = []
    try:
        with Progress(disable=not progress, transient=False) as bar:
            job = bar.add_task(f"exporting {task.value} studies", total=len(studies))
            for study, hospital, label_rows in studies:
                label = study_label(label_rows, relevant)
                try:
                    rows.append(exporter.export(study, hospital, label))
                except _StudySkippedError as skip:
                    uid = exporter.exported_uid(study.study_instance_uid)
                    skipped.append(SkippedStudy(uid, skip.reason, skip.detail))
                    logger.info("study %s skipped: %s %s", uid, skip.reason.value, skip.detail)
                bar.advance(job)
        digest = _write_labels(staging / "labels.csv", rows)
        manifest = ExportManifest(
            out_dir=out_dir,
            task=task,
            studies=len(rows),
            positives=sum(row.label for row in rows),
            negatives=sum(1 - row.label for row in rows),
            instances=sum(row.instances for row in rows),
            masks=sum(bool(row.mask) for row in rows),
            unlabelled=unlabelled,
            skipped=tuple(sorted(skipped, key=lambda s: (s.reason.value, s.study))),
            hospitals=hospitals or tuple(sorted({h for _, h, _ in studies if h})),
            deidentified=exporter.deidentifier is not None,
            deidentification_method=tuple(exporter.deidentifier.method())
            if exporter.deidentifier is not None and rows
            else (),
            labels_sha256=digest,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            scope=scope,
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
            resource_type="training_export",
            resource_id=str(out_dir),
            detail={
                "task": task.value,
                "hospitals": list(manifest.hospitals),
                "studies": manifest.studies,
                "deidentified": manifest.deidentified,
                "scope": scope,
            },
        )
    logger.info(
        "exported %d %s studies (%d positive) to %s; skipped %s",
        manifest.studies,
        task.value,
        manifest.positives,
        out_dir,
        manifest.skipped_counts() or "none",
    )
    return manifest
