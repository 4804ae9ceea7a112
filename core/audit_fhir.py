"""The audit trail as FHIR R4 AuditEvent resources, one hospital's records, for its SIEM.

Each record becomes one AuditEvent (built and validated with the ``fhir.resources`` models; its
R4B package, whose AuditEvent is the R4 one), gathered in a ``collection`` Bundle. The mapping
follows the DICOM / IHE ATNA profile of AuditEvent: ``type`` is the PS3.16 CID 400 event ID
(system DCM), ``action`` and ``outcome`` the PS3.15 A.5.1 codes, the agent the active
participant (user, role, network address), the entities the participant objects: a study by its
UID (``urn:dicom:uid``), a patient only by its keyed hash (``urn:radcloud:patient-id-hmac``,
the same HMAC the trail stores, never the ID), and the record itself (its chain sequence number
and MAC, and its detail as JSON) so the SIEM can match it to ``radcloud audit verify``.

A record is the hospital's when it names one of the hospital's studies (its resource, or a study
a search or listing returned: only those studies and patients are exported, not another
hospital's in the same answer), or names the hospital in its detail (a sender of it, a user
assigned to it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle

__all__ = ["audit_bundle", "audit_event", "hospital_entities", "named_studies"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_NAME, NETWORK_TYPE_IP = "1", "2"  # AuditEvent.agent.network.type
DICOM_UID = "urn:dicom:uid"
PATIENT_HASH = "urn:radcloud:patient-id-hmac"
RECORD_ID = "urn:radcloud:audit-seq"
_NAMESPACE = uuid.UUID("7a3c3d0e-52f4-5c4e-9a47-726164636c64")

StudyRef = tuple[str, str | None]
"""A study UID and the keyed hash of its patient's ID (``None``: unknown)."""


def named_studies(record: Mapping[str, Any]) -> list[StudyRef]:
    """The studies a record names: its resource, and those a search or listing returned
    (``detail["returned"]``)."""
    named: list[StudyRef] = []
    if record.get("resource_type") == "study" and record.get("resource_id"):
        named.append((str(record["resource_id"]), record.get("patient_id_hash")))
    detail = record.get("detail") or {}
    for item in detail.get("returned") or []:
        if isinstance(item, Mapping) and item.get("study_instance_uid"):
            named.append((str(item["study_instance_uid"]), item.get("patient_id_hash")))
    return named


def _names_hospital(detail: Mapping[str, Any], hospital: str) -> bool:
    hospitals = detail.get("hospitals")
    return detail.get("hospital") == hospital or (
        isinstance(hospitals, list) and hospital in hospitals
    )


def hospital_entities(
    record: Mapping[str, Any], hospital: str, owned: set[str]
) -> list[StudyRef] | None:
    """The studies of ``record`` to export for ``hospital`` (whose studies are ``owned``), or
    ``None`` when the record is not the hospital's."""
    named = named_studies(record)
    mine = [ref for ref in named if ref[0] in owned]
    if mine:
        return mine
    if not named and _names_hospital(record.get("detail") or {}, hospital):
        return []
    return None


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return NETWORK_TYPE_NAME
    return NETWORK_TYPE_IP


def _study_entities(studies: Iterable[StudyRef]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    patients: list[str] = []
    for uid, patient_hash in studies:
        entities.append(
            {
                "what": {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
                "name": "Study Instance UID",
            }
        )
        if patient_hash and patient_hash not in patients:
            patients.append(patient_hash)
    entities += [
        {
            "what": {"identifier": {"system": PATIENT_HASH, "value": patient_hash}},
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
        for patient_hash in patients
    ]
    return entities


def audit_event(record: Mapping[str, Any], studies: list[StudyRef], site: str) -> FhirAuditEvent:
    """One audit record (as :meth:`core.audit.AuditTrail.export` writes it) as an AuditEvent
    naming ``studies`` (the record's studies to export)."""
    detail = dict(record.get("detail") or {})
    agent: dict[str, Any] = {
        "requestor": True,
        "who": {"display": record.get("user_name") or "unknown"},
        "name": record.get("user_name") or "unknown",
    }
    if record.get("role"):
        agent["role"] = [{"text": record["role"]}]
    if record.get("source_address"):
        address = str(record["source_address"])
        agent["network"] = {"address": address, "type": _network_type(address)}
    if detail.get("returned"):  # the studies are exported as entities, filtered
        detail["returned"] = len(detail["returned"])
    this_record = {
        "what": {"identifier": {"system": RECORD_ID, "value": str(record["seq"])}},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "name": f"{record.get('resource_type') or 'record'} {record.get('resource_id') or ''}"[
            :256
        ].strip(),
        "detail": [
            {"type": "chain-mac", "valueString": record["hash"]},
            {"type": "detail", "valueString": json.dumps(detail, sort_keys=True, default=str)},
        ],
    }
    event: dict[str, Any] = {
        "id": f"radcloud-audit-{record['seq']}",
        "type": _coding(DCM, str(record["event_code"]), str(record["event_name"])),
        "action": record["action"],
        "recorded": record["time"],
        "outcome": str(record["outcome"]),
        "agent": [agent],
        "source": {
            "site": site,
            "observer": {"display": "radcloud"},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": [this_record, *_study_entities(studies)],
    }
    if detail.get("reason"):
        event["outcomeDesc"] = str(detail["reason"])
    return FhirAuditEvent(**event)


def audit_bundle(events: list[tuple[str, FhirAuditEvent]], hospital: str) -> Bundle:
    """A ``collection`` Bundle of ``events`` (each with its record's chain MAC, which makes its
    ``urn:uuid`` unique across exports and installs), identified by the hospital and the time."""
    now = dt.datetime.now(dt.UTC)
    return Bundle(
        type="collection",
        timestamp=now.isoformat(timespec="seconds"),
        identifier={
            "system": "urn:radcloud:audit-export",
            "value": f"{hospital}@{now:%Y%m%dT%H%M%SZ}",
        },
        entry=[
            {"fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, mac)}", "resource": event}
            for mac, event in events
        ],
    )
