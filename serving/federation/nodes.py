"""The two kinds of node a federated search asks (:class:`~serving.federation.fanout.StudyNode`).

- :class:`TenantNode`: a hospital of this deployment. Its studies are the rows of ``studies``
  that the hospital owns (the hospital boundary of :mod:`core.tenancy`: Orthanc merges
  patients across hospitals by Patient ID, the table does not), matched in SQL.
- :class:`ArchiveNode`: a remote node, another radcloud or any DICOMweb archive, asked
  through the archive seam (:class:`core.archive.ImageArchive`) with one QIDO-RS study search
  per patient identifier it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import and_, or_, select

from core.archive import ArchivedResource, ImageArchive
from core.db.models import Hospital, Study
from core.db.session import Database
from serving.federation.model import FederatedStudy, NodeKind, StudyQuery

__all__ = ["ArchiveNode", "TenantNode", "study_from_resource"]


def _date_range(value: str) -> tuple[str | None, str | None]:
    """A DICOM date or range (PS3.4 C.2.2.2.5) as inclusive bounds."""
    if "-" not in value:
        return value, value
    low, high = value.split("-", 1)
    return low or None, high or None


class TenantNode:
    """A hospital of this deployment, searched in the application database.

    Parameters
    ----------
    db
        The application database.
    hospital
        The hospital's name.
    timeout_s
        How long the search may take.
    """

    kind = NodeKind.TENANT

    def __init__(self, db: Database, hospital: str, timeout_s: float = 5.0) -> None:
        self._db = db
        self.hospital = hospital
        self.timeout_s = timeout_s

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        """The hospital's studies matching ``query``."""
        conditions = [Hospital.name == self.hospital]
        if query.patient_ids:
            conditions.append(
                or_(
                    *(
                        and_(
                            Study.patient_id == patient_id,
                            Study.issuer_of_patient_id == issuer
                            if issuer
                            else or_(
                                Study.issuer_of_patient_id.is_(None),
                                Study.issuer_of_patient_id == "",
                            ),
                        )
                        for patient_id, issuer in query.patient_ids
                    )
                )
            )
        if query.modality:
            conditions.append(Study.modalities.contains(query.modality))
        if query.study_date:
            low, high = _date_range(query.study_date)
            if low:
                conditions.append(Study.study_date >= low)
            if high:
                conditions.append(Study.study_date <= high)
        statement = (
            select(Study)
            .join(Hospital, Study.hospital_id == Hospital.id)
            .where(*conditions)
            .order_by(Study.study_date.desc(), Study.id)
            .limit(query.limit)
        )
        with self._db.session() as session:
            rows = session.scalars(statement).all()
            return [self._study(row) for row in rows]

    def _study(self, row: Study) -> FederatedStudy:
        modalities = tuple(m for m in (row.modalities or "").split("\\") if m)
        return FederatedStudy(
            row.study_instance_uid,
            (self.hospital,),
            patient_id=row.patient_id,
            issuer_of_patient_id=row.issuer_of_patient_id or None,
            patient_name=row.patient_name,
            patient_birth_date=row.patient_birth_date,
            study_date=row.study_date,
            accession_number=row.accession_number,
            study_description=row.study_description,
            modalities_in_study=modalities,
            number_of_study_related_instances=row.instance_count,
        )


def study_from_resource(resource: ArchivedResource, hospital: str) -> FederatedStudy:
    """A study an archive's search answered, as a federated row held by ``hospital``."""

    def number(keyword: str) -> int | None:
        value = resource.get(keyword)
        return int(value) if value and value.isdigit() else None

    modalities = resource.get("ModalitiesInStudy") or ""
    return FederatedStudy(
        str(resource.study_instance_uid),
        (hospital,),
        patient_id=resource.get("PatientID"),
        issuer_of_patient_id=resource.get("IssuerOfPatientID"),
        patient_name=resource.get("PatientName"),
        patient_birth_date=resource.get("PatientBirthDate"),
        study_date=resource.get("StudyDate"),
        study_time=resource.get("StudyTime"),
        accession_number=resource.get("AccessionNumber"),
        study_description=resource.get("StudyDescription"),
        modalities_in_study=tuple(m for m in modalities.split("\\") if m),
        number_of_study_related_series=number("NumberOfStudyRelatedSeries"),
        number_of_study_related_instances=number("NumberOfStudyRelatedInstances"),
    )


class ArchiveNode:
    """A remote node searched through the archive seam (QIDO-RS).

    Parameters
    ----------
    hospital
        The hospital the node holds studies of.
    open_archive
        Opens a client of the node's archive (closed after each search).
    timeout_s
        How long the search may take.
    """

    kind = NodeKind.REMOTE

    def __init__(
        self, hospital: str, open_archive: Callable[[], ImageArchive], timeout_s: float = 5.0
    ) -> None:
        self.hospital = hospital
        self._open = open_archive
        self.timeout_s = timeout_s

    @contextmanager
    def _archive(self) -> Iterator[ImageArchive]:
        archive = self._open()
        try:
            yield archive
        finally:
            archive.close()

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        """The node's studies matching ``query``: one search per patient identifier."""
        common: dict[str, str] = {}
        if query.modality:
            common["ModalitiesInStudy"] = query.modality
        if query.study_date:
            common["StudyDate"] = query.study_date
        searches = [
            common | {"PatientID": patient_id} | ({"IssuerOfPatientID": issuer} if issuer else {})
            for patient_id, issuer in query.patient_ids
        ] or [common]
        found: dict[str, FederatedStudy] = {}
        with self._archive() as archive:
            for filters in searches:
                for resource in archive.search_for_studies(filters, limit=query.limit):
                    if resource.study_instance_uid:
                        study = study_from_resource(resource, self.hospital)
                        found.setdefault(study.study_instance_uid, study)
        return list(found.values())[: query.limit]
