"""Studies of several hospitals for research cohort tests: small CT/DX instances with
identifying attributes in a real Orthanc, their rows in the application database, labels and
AI results."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from core.archive import ImageArchive
from core.db import Database
from core.db.models import InferenceResult, InferenceStatus, Label, Study, StudyState
from imaging.synthetic.slices import ct_slice
from tests.orthanc_studies import _hospital_id

__all__ = ["CohortStudy", "add_ai", "add_study"]


@dataclass(frozen=True)
class CohortStudy:
    """A stored study and the values that must never leave in a research answer."""

    hospital: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str
    study_id: int

    @property
    def identifiers(self) -> list[str]:
        return [self.study_instance_uid, self.patient_id, self.patient_name, self.accession_number]


def add_study(
    orthanc: ImageArchive,
    database: Database,
    hospital: str,
    number: int,
    *,
    patient_id: str | None = None,
    issuer: str | None = None,
    modality: str = "CT",
    body_part: str = "HEAD",
    study_date: str = "20250314",
    label: tuple[str, bool] | None = None,
) -> CohortStudy:
    """One single-instance study of ``hospital`` in Orthanc and in ``studies`` (and a label)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    ds = pydicom.dcmread(io.BytesIO(ct_slice(study_uid, series_uid, instance_number=1)))
    patient = patient_id or f"MRN-{hospital}-{number:05d}"
    ds.PatientID = patient
    ds.PatientName = f"DOE^JOHN{number:04d}"
    ds.AccessionNumber = f"ACC{number:08d}"
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    if issuer:
        ds.IssuerOfPatientID = issuer
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stored = orthanc.store_instance(buffer.getvalue())
    with database.session() as session:
        row = Study(
            study_instance_uid=study_uid,
            hospital_id=_hospital_id(session, hospital),
            patient_id=patient,
            patient_name=str(ds.PatientName),
            issuer_of_patient_id=issuer,
            accession_number=str(ds.AccessionNumber),
            study_date=study_date,
            modalities=modality,
            state=StudyState.READY,
            instance_count=1,
            orthanc_id=str(stored.study_archive_id),
        )
        session.add(row)
        session.flush()
        study_id = int(row.id)
        if label is not None:
            session.add(
                Label(study_id=study_id, finding=label[0], present=label[1], author="dr-read")
            )
    return CohortStudy(
        hospital,
        study_uid,
        patient,
        str(ds.PatientName),
        str(ds.AccessionNumber),
        study_date,
        study_id,
    )


def add_ai(
    database: Database, study: CohortStudy, model: str, score: float, *, critical: bool
) -> None:
    """A succeeded AI result of ``model`` for ``study``."""
    with database.session() as session:
        fields: dict[str, Any] = {"findings": {}, "timings": {}}
        session.add(
            InferenceResult(
                study_id=study.study_id,
                model_name=model,
                model_version="1",
                status=InferenceStatus.SUCCEEDED,
                score=score,
                critical=critical,
                **fields,
            )
        )
