"""Research retrieval: a study a research answer showed, by its pseudonym only, de-identified.

A research search (:class:`~serving.federation.service.FederatedSearch`) answers keyed Study
Instance UIDs; :meth:`ResearchRetrieval.remember` keeps each pseudonym with the study and
hospital it stands for (table ``research_uids``, never shown). A research token then reads the
study by that pseudonym: its metadata (DICOM JSON) and its instances (Part 10), fetched from
the holding node (this deployment's Orthanc or a remote node, over DICOMweb, one instance at a
time) and de-identified by :class:`imaging.deid.Deidentifier` with the same keys as the search
(scope :data:`~serving.federation.wiring.RESEARCH_SCOPE`): Basic Profile with Retain
Longitudinal Temporal Information with Modified Dates; one pseudonym and date shift per patient
across hospitals; instances that may carry burned-in annotation withheld and counted.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pydicom
from sqlalchemy import select

from core.archive import ArchiveId, DicomwebArchive, ResourceLevel
from core.db import Database, write_transaction
from core.db.models import Hospital, ResearchUid
from core.exceptions import NotFoundError
from core.tenancy import find_hospital
from imaging.deid import Deidentifier
from imaging.exceptions import BurnedInAnnotationError

__all__ = ["ResearchRetrieval", "ResearchStudy"]

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x52525549  # "RRUI": PostgreSQL advisory lock of the research pseudonym table
_TAG_PATIENT_ID, _TAG_ISSUER = "00100020", "00100021"


@dataclass(frozen=True)
class ResearchStudy:
    """What a research pseudonym stands for (server side only)."""

    deidentified_uid: str
    original_uid: str
    hospital: str


def _value(dataset: Mapping[str, Any], tag: str) -> str | None:
    values = (dataset.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


class ResearchRetrieval:
    """Resolves research pseudonyms and serves their studies de-identified.

    Parameters
    ----------
    db
        The application database (``research_uids``).
    deidentifier
        The research de-identifier (the search's keys and scope).
    open_node
        Opens the DICOMweb archive holding a hospital's studies (this deployment's Orthanc for
        a tenant, the remote node's for a remote hospital); closed after use.
    patient_key
        The key a study's patient is pseudonymised by, from (hospital, Patient ID, issuer).
    """

    def __init__(
        self,
        *,
        db: Database,
        deidentifier: Deidentifier,
        open_node: Callable[[str], AbstractContextManager[DicomwebArchive]],
        patient_key: Callable[[str, str | None, str | None, str], str],
    ) -> None:
        self._db = db
        self._deid = deidentifier
        self._open_node = open_node
        self._patient_key = patient_key

    def remember(self, studies: Iterable[tuple[str, str, str]]) -> None:
        """Keep (pseudonym, original Study Instance UID, hospital) of each row a research
        answer shows; a pseudonym kept before is left as it is."""
        wanted = {pseudo: (original, hospital) for pseudo, original, hospital in studies}
        if not wanted:
            return
        with write_transaction(self._db, _LOCK_KEY) as session:
            known = set(
                session.scalars(
                    select(ResearchUid.deidentified_uid).where(
                        ResearchUid.deidentified_uid.in_(list(wanted))
                    )
                )
            )
            for pseudo, (original, hospital) in wanted.items():
                if pseudo in known:
                    continue
                row = find_hospital(session, hospital)
                if row is not None:
                    session.add(
                        ResearchUid(
                            deidentified_uid=pseudo, original_uid=original, hospital_id=row.id
                        )
                    )

    def resolve(self, deidentified_uid: str) -> ResearchStudy:
        """The study a pseudonym stands for.

        Raises
        ------
        NotFoundError
            No research answer showed it.
        """
        with self._db.session() as session:
            row = session.execute(
                select(ResearchUid.original_uid, Hospital.name)
                .join(Hospital, ResearchUid.hospital_id == Hospital.id)
                .where(ResearchUid.deidentified_uid == deidentified_uid)
            ).first()
        if row is None:
            raise NotFoundError("study", deidentified_uid)
        return ResearchStudy(deidentified_uid, row.original_uid, row.name)

    def metadata(self, study: ResearchStudy) -> tuple[list[dict[str, Any]], int]:
        """The study's metadata, de-identified, and how many instances were withheld."""
        with (
            self._open_node(study.hospital) as node,
            node.open_dicomweb_stream(
                f"studies/{study.original_uid}/metadata",
                headers={"Accept": "application/dicom+json"},
                check=True,
                missing=("study", study.deidentified_uid),
                decoded=True,
            ) as stream,
        ):
            datasets = json.loads(b"".join(stream.chunks))
        kept, withheld = self._deid.deidentify_json_answer(
            datasets, patient_key=lambda ds: self._key(study, ds)
        )
        return kept, len(withheld)

    def _key(self, study: ResearchStudy, dataset: Mapping[str, Any]) -> str:
        patient_id, issuer = _value(dataset, _TAG_PATIENT_ID), _value(dataset, _TAG_ISSUER)
        return self._patient_key(study.hospital, patient_id, issuer, study.original_uid)

    def instances(
        self, study: ResearchStudy, withheld: list[BurnedInAnnotationError]
    ) -> Iterator[bytes]:
        """The study's instances, de-identified, one at a time; withheld ones are appended to
        ``withheld`` and skipped."""
        with self._open_node(study.hospital) as node:
            for data in node.iter_instances(
                ResourceLevel.STUDY, ArchiveId(f"studies/{study.original_uid}")
            ):
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                key = self._patient_key(
                    study.hospital,
                    str(header.get("PatientID", "") or "") or None,
                    str(header.get("IssuerOfPatientID", "") or "") or None,
                    study.original_uid,
                )
                try:
                    yield self._deid.deidentify_file(data, patient_key=key)
                except BurnedInAnnotationError as exc:
                    withheld.append(exc)
                    logger.info("research retrieval withheld %s: %s", exc.sop_instance_uid, exc)
