"""Where a federated WADO-RS request reads a study, and whether the caller may read it.

A study of another hospital is served from the node that holds it: a tenant's from this
deployment's Orthanc (its DICOMweb plugin), a remote node's from that node's DICOMweb service,
streamed through radcloud (the route relays, :mod:`serving.api.routes.federated`). Before a
byte is asked for, :meth:`FederatedRetrieval.source` checks the purpose of use:

- ``treatment``: the study's patient at the holding hospital must be the token's patient (its
  identifier resolves to the token's patient key, or is one of the patient's enterprise or
  national identifiers). A study of another patient, or one that does not exist, is the same
  :class:`~core.exceptions.NotFoundError` (404), and a 110113 record names the refusal: a UID
  guessed by a treatment token learns nothing.
- ``research``: not served here yet (research sees de-identified search rows only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from core.archive import ArchiveNotFoundError, HttpEndpoint
from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.config import Settings
from core.db import Database
from core.db.models import Hospital, Study
from core.exceptions import NotFoundError, PurposeRequiredError
from core.nodes import NodeRegistry
from core.security import Actor, Principal, Purpose
from serving.federation.model import NodeKind

__all__ = ["FederatedRetrieval", "StudySource"]


@dataclass
class StudySource:
    """A study's holding node, ready to be asked over DICOMweb.

    ``endpoint`` is the node's root; ``prefix`` leads from it to the DICOMweb service
    (``dicom-web/`` for this deployment's Orthanc); ``upstream_base`` is the node's DICOMweb
    base as it writes it into its answers (BulkDataURI, RetrieveURL), for rewriting.
    """

    hospital: str
    kind: NodeKind
    endpoint: HttpEndpoint
    prefix: str
    upstream_base: str
    patient_key: str | None = None


class FederatedRetrieval:
    """Resolves and authorises the source of a federated WADO-RS request.

    Parameters
    ----------
    db, audit, settings
        This deployment's database, audit trail and settings.
    local
        This deployment's Orthanc (its root).
    key_of
        The patient key of a hospital's identifier (enterprise and national ones wherever
        registered), ``None`` when unknown.
    shared_ids_of
        The enterprise or national identifiers (Patient ID, issuer) of a patient key.
    current_key
        The key a (possibly merged) patient key now belongs to.
    """

    def __init__(
        self,
        *,
        db: Database,
        audit: AuditTrail,
        settings: Settings,
        local: HttpEndpoint,
        key_of: Callable[[str, str, str | None], str | None],
        shared_ids_of: Callable[[str], set[tuple[str, str | None]]],
        current_key: Callable[[str], str | None],
    ) -> None:
        self._db, self._audit, self._settings = db, audit, settings
        self._local = local
        self._registry = NodeRegistry(db, audit, settings)
        self._key_of, self._shared_ids_of, self._current_key = key_of, shared_ids_of, current_key

    def source(self, actor: Actor, principal: Principal, hospital: str, study: str) -> StudySource:
        """The node holding ``study`` of ``hospital``, if ``principal`` may read it.

        Raises
        ------
        PurposeRequiredError
            The token's purpose is not treatment.
        NotFoundError
            No such hospital or study, or a study of another patient (recorded as 110113).
        ArchiveError
            A remote node could not say whose the study is (unreachable, timeout, refused).
        """
        if principal.purpose is not Purpose.TREATMENT or not principal.patient_key:
            raise PurposeRequiredError(
                str(principal.purpose) if principal.purpose else None, [str(Purpose.TREATMENT)]
            )
        key = self._current_key(principal.patient_key) or principal.patient_key
        remote = {s.name: s for s in self._registry.sites() if s.remote is not None}
        if hospital in remote:
            source = self._remote_source(hospital, study)
        else:
            source = self._tenant_source(hospital, study)
        if source is None or not self._is_patients(hospital, source[1], source[2], key):
            self._refuse(actor, hospital, study, key, known=source is not None)
            raise NotFoundError("study", study)
        found = source[0]
        found.patient_key = key
        return found

    # -- where the study is ---------------------------------------------------------------

    def _tenant_source(
        self, hospital: str, study: str
    ) -> tuple[StudySource, str | None, str | None] | None:
        with self._db.session() as session:
            row = session.execute(
                select(Study.patient_id, Study.issuer_of_patient_id)
                .join(Hospital, Study.hospital_id == Hospital.id)
                .where(Study.study_instance_uid == study, Hospital.name == hospital)
            ).first()
        if row is None:
            return None
        base = f"{self._settings.orthanc_url}/dicom-web"
        source = StudySource(hospital, NodeKind.TENANT, self._local, "dicom-web/", base)
        return source, row.patient_id, row.issuer_of_patient_id

    def _remote_source(
        self, hospital: str, study: str
    ) -> tuple[StudySource, str | None, str | None] | None:
        with self._registry.open_archive(hospital) as archive:
            try:
                found = archive.search_for_studies({"StudyInstanceUID": study}, limit=1)
            except ArchiveNotFoundError:
                found = []
        if not found:
            return None
        source = StudySource(
            hospital, NodeKind.REMOTE, archive.endpoint, "", archive.url.rstrip("/")
        )
        return source, found[0].get("PatientID"), found[0].get("IssuerOfPatientID")

    # -- whose it is ----------------------------------------------------------------------

    def _is_patients(
        self, hospital: str, patient_id: str | None, issuer: str | None, key: str
    ) -> bool:
        if not patient_id:
            return False
        if (patient_id, issuer) in self._shared_ids_of(key):
            return True
        found = self._key_of(hospital, patient_id, issuer)
        return found is not None and (self._current_key(found) or found) == key

    def _refuse(self, actor: Actor, hospital: str, study: str, key: str, *, known: bool) -> None:
        self._audit.record(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=AuditAction.READ,
            outcome=AuditOutcome.MINOR_FAILURE,
            resource_type="study",
            resource_id=study,
            detail={
                "federated": True,
                "hospital": hospital,
                "patient_key": key,
                "reason": "the study is not the token's patient's"
                if known
                else "no such study at this hospital",
            },
        )
