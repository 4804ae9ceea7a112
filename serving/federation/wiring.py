"""A :class:`~serving.federation.service.FederatedSearch` over this deployment's hospitals
(every hospital row that is not a remote node is a tenant) and its registered remote nodes
(:class:`core.nodes.NodeRegistry`), with the cross-reference of :class:`core.identity.
PatientIdentity` and research rows pseudonymised by :class:`imaging.deid.Pseudonymizer`."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from functools import partial

from core.audit import AuditTrail
from core.config import Settings
from core.db import Database
from core.identity import PatientIdentity
from core.nodes import NodeRegistry
from imaging.deid import Pseudonymizer
from serving.federation.fanout import StudyNode
from serving.federation.model import FederatedStudy
from serving.federation.nodes import ArchiveNode, TenantNode
from serving.federation.service import Deidentify, FederatedSearch

__all__ = ["RESEARCH_SCOPE", "federated_search", "research_rows"]

RESEARCH_SCOPE = "research"
"""The pseudonym scope of everything radcloud shows a research purpose: the federated search,
cohorts and research retrieval use it, so one study or patient has one pseudonym in all."""


def _shifted(date: str | None, shift: dt.timedelta) -> str | None:
    if not date or len(date) != 8 or not date.isdigit():
        return None
    try:
        day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:]))
    except ValueError:
        return None
    return (day + shift).strftime("%Y%m%d")


def research_rows(pseudonyms: Pseudonymizer) -> Deidentify:
    """De-identifies a federated row as :class:`imaging.deid.Deidentifier` does an instance:
    keyed Study Instance UID, the patient's pseudonym, the study date moved by the patient's
    shift (Retain Longitudinal Temporal Information with Modified Dates); name, birth date,
    issuer, accession number, description and time removed (PS3.15 Table E.1-1 X/Z)."""

    def deidentify(study: FederatedStudy, patient_key: str) -> FederatedStudy:
        return replace(
            study,
            study_instance_uid=pseudonyms.uid(study.study_instance_uid),
            patient_id=pseudonyms.patient_pseudonym(patient_key),
            issuer_of_patient_id=None,
            patient_name=None,
            patient_birth_date=None,
            study_date=_shifted(study.study_date, pseudonyms.date_shift(patient_key)),
            study_time=None,
            accession_number=None,
            study_description=None,
            patient_key=None,
        )

    return deidentify


def federated_search(
    db: Database, audit: AuditTrail, settings: Settings, deid_key: str
) -> FederatedSearch:
    """The federated search of this deployment (cheap to build: sites are read per search)."""
    identity = PatientIdentity(db, audit)
    registry = NodeRegistry(db, audit, settings)
    tenant_timeout = settings.federation_tenant_timeout_s

    def tenants() -> list[StudyNode]:
        return [
            TenantNode(db, site.name, tenant_timeout)
            for site in registry.sites()
            if not site.is_remote
        ]

    def remotes() -> list[StudyNode]:
        nodes: list[StudyNode] = []
        for site in registry.sites():
            if site.remote is not None:
                timeout = site.remote.timeout_s or settings.remote_read_timeout_s
                opener = partial(registry.open_archive, site.name)
                nodes.append(
                    ArchiveNode(site.name, opener, timeout + settings.remote_connect_timeout_s)
                )
        return nodes

    def authorities() -> set[str]:
        return {rule.issuer_of_patient_id for rule in identity.authorities()}

    def key_of(hospital: str, patient_id: str, issuer: str | None) -> str | None:
        """The patient key of an identifier at ``hospital``, or, for an identifier issued by an
        enterprise or national authority, of that identifier wherever it was registered (a
        remote node's patients are never registered here)."""
        key = identity.key_for(hospital, patient_id, issuer)
        if key is None and issuer and issuer in authorities():
            key = identity.key_in_domain(None, issuer, patient_id)
        return key

    return FederatedSearch(
        audit=audit,
        identifiers_of=lambda key: [
            (i.hospital, i.patient_id, i.issuer_of_patient_id) for i in identity.identifiers(key)
        ],
        key_of=key_of,
        authorities=authorities,
        tenants=tenants,
        remotes=remotes,
        deidentify=research_rows(Pseudonymizer(deid_key, RESEARCH_SCOPE)),
    )
