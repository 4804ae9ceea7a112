"""The keys of radcloud's de-identification (see :mod:`imaging.deid`): keyed UIDs, patient
pseudonyms and date shifts, and the codes both de-identifiers record."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta

__all__ = [
    "BASIC_PROFILE_CODE",
    "MODIFIED_DATES_CODE",
    "PSEUDONYM_PREFIX",
    "Pseudonymizer",
    "local_patient_key",
]

BASIC_PROFILE_CODE = {
    "CodeValue": "113100",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Basic Application Confidentiality Profile",
}
"""PS3.16 CID 7050 code written into De-identification Method Code Sequence (0012,0064)."""
MODIFIED_DATES_CODE = {
    "CodeValue": "113107",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Retain Longitudinal Temporal Information Modified Dates Option",
}
"""PS3.16 CID 7050 code of the option :class:`Deidentifier` applies."""
PSEUDONYM_PREFIX = "ANON-"
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a UID, scope or patient ID
_MIN_SHIFT_DAYS, _SHIFT_SPAN_DAYS = 365, 3288  # shifts of 1 to 10 years back


class Pseudonymizer:
    """Keyed, deterministic UIDs and patient pseudonyms for one destination scope.

    Parameters
    ----------
    key
        The deployment's de-identification secret (``Secrets.deid_hmac_key``).
    scope
        Where the export goes (e.g. ``"training"``): each scope gets unlinkable values.

    Raises
    ------
    ValueError
        An empty key or scope.
    """

    def __init__(self, key: str | bytes, scope: str) -> None:
        self._key = key.encode() if isinstance(key, str) else bytes(key)
        if not self._key:
            raise ValueError("de-identification key is empty: expected the deployment's secret")
        if not scope:
            raise ValueError("de-identification scope is empty: expected a destination name")
        self.scope = scope

    def __repr__(self) -> str:
        return f"Pseudonymizer(scope={self.scope!r}, key=<redacted>)"

    def _digest(self, *parts: str) -> bytes:
        message = _SEPARATOR.join((self.scope, *parts)).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """The UID that replaces ``uid``: ``2.25.`` and a UUID version 8 (PS3.5 B.2), at most
        44 characters."""
        raw = bytearray(self._digest("uid", uid.strip())[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (RFC 9562 5.8)
        raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """The pseudonym that replaces PatientID (and PatientName), e.g. ``ANON-3QK7...``.

        Parameters
        ----------
        patient_id
            The original PatientID (0010,0020).
        issuer
            Who assigned it (radcloud passes the hospital): the same ID from two hospitals
            gives two pseudonyms.
        """
        digest = self._digest("patient", issuer, patient_id.strip())
        return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode()

    def patient_pseudonym(self, patient_key: str) -> str:
        """The pseudonym of the patient with ``patient_key`` (radcloud's cross-hospital patient
        key, or :func:`local_patient_key`): PatientID and PatientName of
        :class:`Deidentifier`'s output, e.g. ``ANON-3QK7...``."""
        digest = self._digest("patient-key", _checked_patient_key(patient_key))
        return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode()

    def date_shift(self, patient_key: str) -> timedelta:
        """The whole-day shift of every date of the patient with ``patient_key``: 1 to 10
        years back, the same for all the patient's studies, whichever hospital holds them."""
        digest = self._digest("date-shift", _checked_patient_key(patient_key))
        days = _MIN_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % _SHIFT_SPAN_DAYS
        return timedelta(days=-days)


def _checked_patient_key(patient_key: str) -> str:
    if not patient_key or not patient_key.strip():
        raise ValueError("patient key is empty: expected radcloud's patient key")
    return patient_key.strip()


def local_patient_key(hospital: str, patient_id: str, issuer_of_patient_id: str = "") -> str:
    """The patient key of a patient radcloud has not linked across hospitals: the hospital,
    the Issuer of Patient ID (0010,0021) and the PatientID, so the same local ID at two
    hospitals stays two patients.

    Raises
    ------
    ValueError
        An empty hospital or patient ID.
    """
    if not hospital.strip() or not patient_id.strip():
        raise ValueError(
            f"local patient key needs a hospital and a patient ID: got {hospital!r}, {patient_id!r}"
        )
    return _SEPARATOR.join(
        ("local", hospital.strip(), issuer_of_patient_id.strip(), patient_id.strip())
    )
