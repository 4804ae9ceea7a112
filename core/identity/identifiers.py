"""Patient identifiers as radcloud names them: a hospital's PatientID within its
IssuerOfPatientID, written ``HOSPITAL:ISSUER:PATIENTID`` or as a FHIR identifier system URN.

FHIR identifier systems (``Identifier.system`` in ``$ihe-pix``, IHE PIXm):

- ``urn:radcloud:pid:<hospital>:<issuer>``: a hospital's identifiers of one issuer;
  ``urn:radcloud:pid:<hospital>`` those without an IssuerOfPatientID. Hospital and issuer are
  percent-encoded (RFC 3986, no character left bare but unreserved ones), so neither holds a
  colon.
- ``urn:radcloud:authority:<issuer>``: an assigning authority registered as enterprise-wide
  or national, whichever hospital the identifier came from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import quote, unquote

from core.db.models import PatientIdAuthorityKind, PatientLinkKind

__all__ = [
    "AUTHORITY_SYSTEM_PREFIX",
    "HOSPITAL_SYSTEM_PREFIX",
    "AuthorityRule",
    "PatientIdentifier",
    "PatientLinkInfo",
    "RetractionInfo",
    "authority_system",
    "parse_system",
]

HOSPITAL_SYSTEM_PREFIX = "urn:radcloud:pid:"
AUTHORITY_SYSTEM_PREFIX = "urn:radcloud:authority:"


def _enc(text: str) -> str:
    return quote(text, safe="")


@dataclass(frozen=True, order=True)
class PatientIdentifier:
    """One hospital's identifier of a patient (PS3.3 C.7.1.1: PatientID within
    IssuerOfPatientID); ``issuer_of_patient_id`` is ``None`` when the hospital names none."""

    hospital: str
    patient_id: str
    issuer_of_patient_id: str | None = None

    def __post_init__(self) -> None:
        if not self.hospital.strip() or not self.patient_id.strip():
            raise ValueError("a patient identifier needs a hospital and a patient ID")
        if len(self.patient_id) > 64 or len(self.issuer_of_patient_id or "") > 64:
            raise ValueError(
                f'patient ID "{self.patient_id[:16]}..." or its issuer is longer than 64 '
                "characters (PS3.5 LO)"
            )
        if self.issuer_of_patient_id == "":
            object.__setattr__(self, "issuer_of_patient_id", None)

    @classmethod
    def parse(cls, text: str) -> PatientIdentifier:
        """``HOSPITAL:ISSUER:PATIENTID`` (``ISSUER`` may be empty: ``A::123``; the patient ID
        may hold colons, the hospital and issuer may not).

        Raises
        ------
        ValueError
            Fewer than three parts, or an empty hospital or patient ID.
        """
        parts = text.split(":", 2)
        if len(parts) != 3:
            raise ValueError(
                f'patient identifier "{text}" is not HOSPITAL:ISSUER:PATIENTID (issuer may be '
                "empty: HOSPITAL::PATIENTID)"
            )
        hospital, issuer, patient_id = parts
        return cls(hospital, patient_id, issuer or None)

    @classmethod
    def from_fhir(cls, system: str, value: str) -> PatientIdentifier:
        """The identifier of a hospital-domain FHIR ``system`` (``urn:radcloud:pid:...``).

        Raises
        ------
        ValueError
            ``system`` is not a hospital domain of radcloud.
        """
        domain = parse_system(system)
        if domain is None or domain[0] is None:
            raise ValueError(f'identifier system "{system}" is not a radcloud hospital domain')
        return cls(domain[0], value, domain[1])

    @property
    def domain(self) -> str:
        """``HOSPITAL:ISSUER``, the identifier's domain without the patient ID (for messages
        that reach audit records, where patient IDs are only hashed)."""
        return f"{self.hospital}:{self.issuer_of_patient_id or ''}"

    @property
    def system(self) -> str:
        """The FHIR identifier system of this identifier's hospital domain."""
        tail = f":{_enc(self.issuer_of_patient_id)}" if self.issuer_of_patient_id else ""
        return f"{HOSPITAL_SYSTEM_PREFIX}{_enc(self.hospital)}{tail}"

    def __str__(self) -> str:
        return f"{self.hospital}:{self.issuer_of_patient_id or ''}:{self.patient_id}"


def authority_system(issuer_of_patient_id: str) -> str:
    """The FHIR identifier system of an assigning authority's identifiers."""
    return f"{AUTHORITY_SYSTEM_PREFIX}{_enc(issuer_of_patient_id)}"


def parse_system(system: str) -> tuple[str | None, str | None] | None:
    """``(hospital, issuer)`` of a hospital domain, ``(None, issuer)`` of an authority's, or
    ``None`` when ``system`` is not one of radcloud's identifier systems."""
    if system.startswith(AUTHORITY_SYSTEM_PREFIX):
        issuer = unquote(system.removeprefix(AUTHORITY_SYSTEM_PREFIX))
        return (None, issuer) if issuer else None
    if system.startswith(HOSPITAL_SYSTEM_PREFIX):
        parts = system.removeprefix(HOSPITAL_SYSTEM_PREFIX).split(":")
        if len(parts) > 2 or not parts[0]:
            return None
        named = unquote(parts[1]) if len(parts) == 2 and parts[1] else None
        return unquote(parts[0]), named
    return None


@dataclass(frozen=True)
class PatientLinkInfo:
    """An explicit link of two identifiers, as listed to administrators."""

    id: int
    a: PatientIdentifier
    b: PatientIdentifier
    kind: PatientLinkKind
    reason: str | None
    created_by: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class AuthorityRule:
    """An issuer registered as enterprise-wide or national."""

    issuer_of_patient_id: str
    kind: PatientIdAuthorityKind
    created_by: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class RetractionInfo:
    """A retracted assertion of two identifiers of one hospital, as listed to administrators:
    who retracted it and why, whose assertion it was and since when, and how many later
    studies asserted it again (``withheld``: not linked)."""

    id: int
    a: PatientIdentifier
    b: PatientIdentifier
    reason: str
    created_by: str
    created_at: dt.datetime
    asserted_by: str | None
    asserted_at: dt.datetime
    withheld: int
