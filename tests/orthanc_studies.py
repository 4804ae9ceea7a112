"""Synthetic studies made to look like a hospital's (identifiers and all), stored in a real
Orthanc and registered in the application database as the gateway would."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from sqlalchemy import select

from core.archive import ImageArchive
from core.db import Database, write_transaction
from core.db.models import Hospital, Label, Study, StudyState
from imaging.synthetic import SyntheticStudy, generate_study

__all__ = ["StoredStudy", "add_label", "identifiable", "store", "store_study"]


@dataclass(frozen=True)
class StoredStudy:
    """A synthetic study stored in Orthanc with a hospital's identifiers."""

    synthetic: SyntheticStudy
    datasets: list[Dataset]
    study_id: int  # row in the studies table
    orthanc_id: str
    hospital: str

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def identifiers(self) -> list[str]:
        """Values that must not appear in a de-identified export (the hospital's name may, as
        the export's provenance in its manifest)."""
        first = self.datasets[0]
        values = [
            str(first.PatientID),
            str(first.PatientName),
            str(first.ReferringPhysicianName),
            str(first.AccessionNumber),
            str(first.StudyInstanceUID),
            str(first.SeriesInstanceUID),
            str(first.FrameOfReferenceUID),
        ]
        return values + [str(ds.SOPInstanceUID) for ds in self.datasets]


def identifiable(study: SyntheticStudy, hospital: str, number: int) -> list[Dataset]:
    """The study's instances with identifying attributes a real hospital's would carry."""
    datasets = []
    for source in study.datasets:
        ds = source.copy()
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.PatientName = f"DOE^JANE{number:03d}"
        ds.PatientID = f"MRN{number:06d}"
        ds.PatientBirthDate = "19610412"
        ds.InstitutionName = hospital
        ds.ReferringPhysicianName = f"HOUSE^GREGORY{number:03d}"
        ds.AccessionNumber = f"ACC{number:07d}"
        ds.OtherPatientIDs = f"OTHER{number:06d}"
        block = ds.private_block(0x0009, "ACME HOSPITAL", create=True)
        block.add_new(0x10, "LO", f"ward {number}")
        datasets.append(ds)
    return datasets


def store(orthanc: ImageArchive, datasets: Sequence[Dataset]) -> str:
    """Store instances in the archive; returns the archive's key (Orthanc ID) of their study."""
    study_ids = set()
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        study_ids.add(orthanc.store_instance(buffer.getvalue()).study_archive_id)
    assert len(study_ids) == 1, study_ids
    return study_ids.pop()


def _hospital_id(session: Any, name: str) -> int:
    hospital = session.scalars(select(Hospital).where(Hospital.name == name)).first()
    if hospital is None:
        hospital = Hospital(name=name)
        session.add(hospital)
        session.flush()
    return int(hospital.id)


def store_study(
    orthanc: ImageArchive,
    database: Database,
    hospital: str,
    number: int,
    *,
    positive: bool,
    seed: int = 7,
    task: str = "head-ct",
) -> StoredStudy:
    """Generate study ``number`` of ``task``, store it and register it for ``hospital``."""
    synthetic = generate_study(task, number, seed, positive=positive)
    datasets = identifiable(synthetic, hospital, number)
    orthanc_id = store(orthanc, datasets)
    first = datasets[0]
    # BEGIN IMMEDIATE: a deferred transaction that reads, then writes, fails at once ("database
    # is locked", no busy wait) if the stack's tracker wrote in between
    with write_transaction(database, 0) as session:
        row = Study(
            study_instance_uid=str(first.StudyInstanceUID),
            hospital_id=_hospital_id(session, hospital),
            patient_id=str(first.PatientID),
            patient_name=str(first.PatientName),
            modalities=str(first.Modality),
            state=StudyState.READY,
            instance_count=len(datasets),
            orthanc_id=orthanc_id,
        )
        session.add(row)
        session.flush()
        study_id = int(row.id)
    return StoredStudy(synthetic, datasets, study_id, orthanc_id, hospital)


def add_label(
    database: Database,
    study: StoredStudy,
    finding: str,
    present: bool,
    region: dict[str, Any] | None = None,
) -> None:
    """A radiologist's label row for ``study``."""
    with write_transaction(database, 0) as session:
        session.add(
            Label(
                study_id=study.study_id,
                finding=finding,
                present=present,
                region=region or {},
                author="test-radiologist",
            )
        )
