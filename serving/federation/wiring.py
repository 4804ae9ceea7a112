"""A :class:`~serving.federation.service.FederatedSearch` over this deployment's hospitals
(every hospital row that is not a remote node is a tenant) and its registered remote nodes
(:class:`core.nodes.NodeRegistry`), with the cross-reference of :class:`core.identity.
PatientIdentity` and research rows pseudonymised by :class:`imaging.deid.Pseudonymizer`."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from core.archive import DicomwebArchive, HttpEndpoint, open_local_dicomweb
from core.audit import AuditTrail
from core.config import Settings
from core.db import Database
from core.identity import PatientIdentity
from core.nodes import NodeRegistry
from core.secrets import Secrets
from imaging.deid import RESEARCH_SCOPE, Deidentifier, Pseudonymizer, local_patient_key
from serving.cohorts import shifted_date
from serving.federation.fanout import StudyNode
from serving.federation.model import FederatedStudy
from serving.federation.nodes import ArchiveNode, TenantNode
from serving.federation.research import ResearchRetrieval
from serving.federation.retrieval import FederatedRetrieval
from serving.federation.service import Deidentify, FederatedSearch

__all__ = [
    "PatientKeys",
    "federated_retrieval",
    "federated_search",
    "research_retrieval",
    "research_rows",
]


def research_rows(pseudonyms: Pseudonymizer) -> Deidentify:
    """De-identifies a federated row as :class:`imaging.deid.Deidentifier` does an instance:
    keyed Study Instance UID, the patient's pseudonym, the study date moved by the patient's
    shift (Retain Longitudinal Temporal Information with Modified Dates); name, birth date,
    issuer, accession number, description and time removed (PS3.15 Table E.1-1 X/Z), and the
    holding hospital too (Institution Name is X): a research row is retrieved by its
    pseudonym alone (:mod:`serving.federation.research`)."""

    def deidentify(study: FederatedStudy, patient_key: str) -> FederatedStudy:
        return replace(
            study,
            study_instance_uid=pseudonyms.uid(study.study_instance_uid),
            held_by=(),
            patient_id=pseudonyms.patient_pseudonym(patient_key),
            issuer_of_patient_id=None,
            patient_name=None,
            patient_birth_date=None,
            study_date=shifted_date(study.study_date, pseudonyms.date_shift(patient_key)),
            study_time=None,
            accession_number=None,
            study_description=None,
            patient_key=None,
        )

    return deidentify


class PatientKeys:
    """Patient keys as the federation asks for them, over :class:`core.identity.PatientIdentity`.

    An identifier issued by an enterprise or national authority names the patient at any
    hospital, so it resolves wherever it was registered: a remote node's patients are never
    registered here, and are found by such identifiers.
    """

    def __init__(self, identity: PatientIdentity) -> None:
        self._identity = identity

    def authorities(self) -> set[str]:
        """The issuers registered as enterprise-wide or national."""
        return {rule.issuer_of_patient_id for rule in self._identity.authorities()}

    def key_of(self, hospital: str, patient_id: str, issuer: str | None) -> str | None:
        """The patient key of ``hospital``'s identifier, or of an authority's identifier."""
        key = self._identity.key_for(hospital, patient_id, issuer)
        if key is None and issuer and issuer in self.authorities():
            key = self._identity.key_in_domain(None, issuer, patient_id)
        return key

    def identifiers_of(self, key: str) -> list[tuple[str, str, str | None]]:
        """The patient's identifiers as (hospital, Patient ID, issuer)."""
        return [
            (i.hospital, i.patient_id, i.issuer_of_patient_id)
            for i in self._identity.identifiers(key)
        ]

    def shared_ids_of(self, key: str) -> set[tuple[str, str | None]]:
        """The patient's enterprise and national identifiers as (Patient ID, issuer)."""
        authorities = self.authorities()
        return {
            (pid, issuer) for _, pid, issuer in self.identifiers_of(key) if issuer in authorities
        }


def research_retrieval(
    db: Database, audit: AuditTrail, settings: Settings, secrets: Secrets
) -> ResearchRetrieval:
    """Research retrieval over this deployment's Orthanc (through its DICOMweb plugin) and its
    remote nodes, with the research scope's keys."""
    keys = PatientKeys(PatientIdentity(db, audit))
    registry = NodeRegistry(db, audit, settings)

    def open_node(hospital: str) -> DicomwebArchive:
        remote = {site.name for site in registry.sites() if site.is_remote}
        if hospital in remote:
            return registry.open_archive(hospital)
        return open_local_dicomweb(settings, secrets)

    def patient_key(hospital: str, patient_id: str | None, issuer: str | None, study: str) -> str:
        key = keys.key_of(hospital, patient_id, issuer) if patient_id else None
        return key or local_patient_key(
            hospital, patient_id or f"no-patient-id:{study}", issuer or ""
        )

    pseudonyms = Pseudonymizer(secrets.deid_hmac_key, RESEARCH_SCOPE)
    return ResearchRetrieval(
        db=db,
        deidentifier=Deidentifier(pseudonyms),
        open_node=open_node,
        patient_key=patient_key,
    )


def federated_search(
    db: Database,
    audit: AuditTrail,
    settings: Settings,
    deid_key: str,
    research: ResearchRetrieval | None = None,
) -> FederatedSearch:
    """The federated search of this deployment (cheap to build: sites are read per search);
    ``research`` keeps the pseudonyms of research rows for retrieval."""
    keys = PatientKeys(PatientIdentity(db, audit))
    registry = NodeRegistry(db, audit, settings)
    tenant_timeout = settings.federation_tenant_timeout_s

    def nodes() -> list[StudyNode]:
        """Tenants, then remote nodes, from one read of the registry."""
        tenants: list[StudyNode] = []
        remotes: list[StudyNode] = []
        for site in registry.sites():
            if site.remote is None:
                tenants.append(TenantNode(db, site.name, tenant_timeout))
                continue
            read_s = site.remote.timeout_s or settings.remote_read_timeout_s
            timeout = read_s + settings.remote_connect_timeout_s
            opener = partial(registry.open_archive, site.name)
            remotes.append(ArchiveNode(site.name, opener, timeout))
        return tenants + remotes

    return FederatedSearch(
        audit=audit,
        identifiers_of=keys.identifiers_of,
        key_of=keys.key_of,
        authorities=keys.authorities,
        nodes=nodes,
        deidentify=research_rows(Pseudonymizer(deid_key, RESEARCH_SCOPE)),
        remember=research.remember if research is not None else lambda rows: None,
    )


def federated_retrieval(
    db: Database, audit: AuditTrail, settings: Settings, local: HttpEndpoint
) -> FederatedRetrieval:
    """The federated WADO-RS sources of this deployment; ``local`` is its Orthanc."""
    identity = PatientIdentity(db, audit)
    keys = PatientKeys(identity)
    return FederatedRetrieval(
        db=db,
        audit=audit,
        settings=settings,
        local=local,
        key_of=keys.key_of,
        shared_ids_of=keys.shared_ids_of,
        current_key=identity.current_key,
    )
