"""The links of patient identifiers as a graph, and the patient keys it implies.

Identifiers are nodes; edges are the rows of ``patient_links`` (asserted by a study, or
manual) and, for an issuer registered as an authority, every pair of its identifiers of the
same value. A pair in ``patient_link_retractions`` gets no asserted edge however often its
hospital's studies name the two together (:func:`register_in` counts them as withheld).
A patient is a connected group; its key is the ``own_key`` of its earliest identifier (lowest
id), so merging keeps the older key and a split part gets back the key of its own earliest
identifier. Every change relabels the groups around the identifiers it touched
(:func:`relabel`), in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from core.db.models import (
    Hospital,
    PatientIdAuthority,
    PatientIdentifierEntry,
    PatientLink,
    PatientLinkKind,
    PatientLinkRetraction,
)
from core.exceptions import NotFoundError
from core.identity.identifiers import PatientIdentifier
from core.tenancy import HospitalScope, find_hospital, hospital_row

__all__ = [
    "Registered",
    "asserted_reason",
    "entry",
    "identifier_of",
    "new_key",
    "register_in",
    "relabel",
    "require",
]

IDENTITY_LOCK_KEY = 0x52434944  # "RCID": PostgreSQL advisory lock serialising relabels


def asserted_reason(hospital: str) -> str:
    """The reason an asserted link states: which hospital's study named the two together."""
    return f"named together in a study of {hospital}"


def new_key() -> str:
    """A fresh opaque patient key."""
    return f"rcp-{uuid.uuid4().hex}"


def lock(session: Session) -> None:
    """Serialise changes of the identity graph (SQLite: the write transaction does already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": IDENTITY_LOCK_KEY})


def identifier_of(row: PatientIdentifierEntry) -> PatientIdentifier:
    """The public form of a row."""
    return PatientIdentifier(row.hospital.name, row.patient_id, row.issuer_of_patient_id or None)


def entry(session: Session, identifier: PatientIdentifier) -> PatientIdentifierEntry | None:
    """The row of ``identifier``, or ``None``."""
    hospital = find_hospital(session, identifier.hospital)
    if hospital is None:
        return None
    found: PatientIdentifierEntry | None = session.scalar(
        select(PatientIdentifierEntry).where(
            PatientIdentifierEntry.hospital_id == hospital.id,
            PatientIdentifierEntry.patient_id == identifier.patient_id,
            PatientIdentifierEntry.issuer_of_patient_id == (identifier.issuer_of_patient_id or ""),
        )
    )
    return found


def require(
    session: Session, identifier: PatientIdentifier, scope: HospitalScope
) -> PatientIdentifierEntry:
    """The row of ``identifier`` when its hospital is in ``scope``.

    Raises
    ------
    NotFoundError
        Not registered, or of a hospital outside ``scope`` (answered alike).
    """
    row = entry(session, identifier) if scope.covers(identifier.hospital) else None
    if row is None:
        # the domain only: the message reaches audit records, where patient IDs are hashed
        raise NotFoundError("patient identifier in domain", identifier.domain)
    return row


def _neighbours(session: Session, row: PatientIdentifierEntry, authorities: set[str]) -> set[int]:
    links = session.execute(
        select(PatientLink.identifier_a_id, PatientLink.identifier_b_id).where(
            or_(PatientLink.identifier_a_id == row.id, PatientLink.identifier_b_id == row.id)
        )
    )
    found = {a if b == row.id else b for a, b in links}
    if row.issuer_of_patient_id in authorities:
        found.update(
            session.scalars(
                select(PatientIdentifierEntry.id).where(
                    PatientIdentifierEntry.issuer_of_patient_id == row.issuer_of_patient_id,
                    PatientIdentifierEntry.patient_id == row.patient_id,
                )
            )
        )
    found.discard(row.id)
    return found


def relabel(session: Session, seeds: Iterable[int]) -> dict[int, str]:
    """Give every identifier in the groups of ``seeds`` its group's key.

    Returns
    -------
    dict
        Identifier id to its (new or unchanged) patient key, for each identifier whose
        group was relabelled.
    """
    session.flush()
    authorities = set(session.scalars(select(PatientIdAuthority.issuer_of_patient_id)))
    keys: dict[int, str] = {}
    for seed in seeds:
        if seed in keys:
            continue
        group: dict[int, PatientIdentifierEntry] = {}
        todo = [seed]
        while todo:
            node = todo.pop()
            if node in group:
                continue
            row = session.get(PatientIdentifierEntry, node)
            if row is None:
                continue
            group[node] = row
            todo.extend(_neighbours(session, row, authorities) - group.keys())
        if not group:
            continue
        key = group[min(group)].own_key
        for node, row in group.items():
            row.patient_key = key
            keys[node] = key
    session.flush()
    return keys


@dataclass
class Registered:
    """What :func:`register_in` did: the patient key, the identifiers that are new, and the
    links the study asserted that a retraction withheld."""

    patient_key: str | None
    created: list[PatientIdentifier] = field(default_factory=list)
    merged_keys: set[str] = field(default_factory=set)  # keys now replaced by patient_key
    withheld: list[tuple[PatientIdentifier, PatientIdentifier]] = field(default_factory=list)


def _row(
    session: Session, hospital: Hospital, patient_id: str, issuer: str | None, out: Registered
) -> PatientIdentifierEntry:
    row: PatientIdentifierEntry | None = session.scalar(
        select(PatientIdentifierEntry).where(
            PatientIdentifierEntry.hospital_id == hospital.id,
            PatientIdentifierEntry.patient_id == patient_id,
            PatientIdentifierEntry.issuer_of_patient_id == (issuer or ""),
        )
    )
    if row is None:
        key = new_key()
        row = PatientIdentifierEntry(
            hospital_id=hospital.id,
            patient_id=patient_id,
            issuer_of_patient_id=issuer or "",
            patient_key=key,
            own_key=key,
        )
        session.add(row)
        session.flush()
        out.created.append(PatientIdentifier(hospital.name, patient_id, issuer))
    return row


def register_in(
    session: Session,
    hospital: str,
    patient_id: str | None,
    issuer_of_patient_id: str | None = None,
    other_ids: Iterable[tuple[str, str | None]] = (),
) -> Registered:
    """Record a hospital's identifier of a patient (and the other IDs its study names, linked
    to it as asserted by the hospital) in ``session``; relabel the patient's group.

    Parameters
    ----------
    session
        A write transaction (the gateway's claim of a study, or the service's own).
    hospital
        The sending hospital (created if new).
    patient_id, issuer_of_patient_id
        PatientID (0010,0020) and IssuerOfPatientID (0010,0021); no patient ID: nothing is
        recorded (``Registered(None)``).
    other_ids
        (PatientID, IssuerOfPatientID) of each item of OtherPatientIDsSequence (0010,1002).
    """
    out = Registered(None)
    if not patient_id or not patient_id.strip():
        return out
    lock(session)
    owner = hospital_row(session, hospital)
    primary = _row(session, owner, patient_id, issuer_of_patient_id, out)
    before = {primary.patient_key}
    seeds = [primary.id]
    for other_id, other_issuer in other_ids:
        if (
            not other_id
            or not other_id.strip()
            or (other_id == patient_id and (other_issuer or None) == (issuer_of_patient_id or None))
        ):
            continue
        other = _row(session, owner, other_id, other_issuer, out)
        before.add(other.patient_key)
        seeds.append(other.id)
        a, b = sorted((primary.id, other.id))
        retraction = session.scalar(
            select(PatientLinkRetraction).where(
                PatientLinkRetraction.identifier_a_id == a,
                PatientLinkRetraction.identifier_b_id == b,
            )
        )
        if retraction is not None:
            retraction.withheld += 1
            out.withheld.append((identifier_of(primary), identifier_of(other)))
            continue
        exists = session.scalar(
            select(PatientLink.id).where(
                PatientLink.identifier_a_id == a,
                PatientLink.identifier_b_id == b,
                PatientLink.kind == PatientLinkKind.ASSERTED,
            )
        )
        if exists is None:
            session.add(
                PatientLink(
                    identifier_a_id=a,
                    identifier_b_id=b,
                    kind=PatientLinkKind.ASSERTED,
                    reason=asserted_reason(hospital),
                    created_by=hospital,
                )
            )
    if out.created or len(seeds) > 1:
        keys = relabel(session, seeds)
        out.patient_key = keys[primary.id]
    else:
        out.patient_key = primary.patient_key
    out.merged_keys = {key for key in before if key != out.patient_key}
    return out
